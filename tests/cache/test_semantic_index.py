"""The per-scope vector index of the semantic cache (cache/index.py) and its use by SemanticCache:
recall of the sketch filter against exact search, scope isolation, removal, and the saved format
(unchanged: caches saved by earlier versions load; new saves are what earlier versions read).
Big sizes use synthetic L2-normalised vectors; only a few texts go through the real model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mlflow_lite_plugin.cache import index as index_module
from mlflow_lite_plugin.cache.index import VectorIndex

DIM = 384
T = 0.725
V1_CACHE = Path(__file__).parent.parent / "data" / "semantic_cache_v1"  # written by the code of a21028b


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _data(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return _unit(rng.standard_normal((n, DIM)))
    # clusters of ~50 near-duplicates (cosine ~0.6 between members), with a shared offset as real
    # sentence embeddings have
    centres = _unit(rng.standard_normal((n // 50, DIM)) + _unit(rng.standard_normal(DIM)))
    return _unit(centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, DIM)) * 0.045)


def _queries(vectors: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Perturbed stored vectors, from just under the threshold to near-identical."""
    targets = vectors[rng.integers(0, len(vectors), count)]
    noise = rng.uniform(0.02, 0.05, (count, 1)) * rng.standard_normal((count, DIM))
    return _unit(targets + noise)


@pytest.fixture
def filter_calls(monkeypatch):
    """How many rows each sketch-filtered search kept (proves the filter ran and pruned)."""
    import faiss

    kept: list[int] = []
    original = faiss.match_hamming_thres

    def counting(*args):
        kept.append(original(*args))
        return kept[-1]

    monkeypatch.setattr(faiss, "match_hamming_thres", counting)
    return kept


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_sketch_filter_finds_the_exact_nearest_neighbour_above_the_threshold(kind, filter_calls) -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    vectors = _data(kind, n, rng)
    index = VectorIndex(DIM)
    index.add("s", range(n), vectors)
    queries = _queries(vectors, rng, 300)
    exact = queries @ vectors.T
    above = exact.max(axis=1) >= T
    assert above.sum() >= 150, "too few queries have a neighbour above the threshold to measure recall"
    found, missed = 0, 0
    for query, scores, is_above in zip(queries, exact, above, strict=True):
        result = index.search("s", query, 5, min_score=T)
        assert all(score >= T for _, score in result)
        assert [s for _, s in result] == sorted((s for _, s in result), reverse=True)
        if is_above:
            found += bool(result) and result[0][0] == int(scores.argmax())
            missed += not result
        else:
            assert result == []
    assert found / above.sum() >= 0.99, (found, above.sum(), missed)
    assert len(filter_calls) == len(queries)
    assert np.median(filter_calls) < n / 20  # the filter scored a small fraction exactly


def test_small_scope_is_scanned_exactly_and_a_large_one_through_the_filter(filter_calls) -> None:
    rng = np.random.default_rng(1)
    vectors = _data("random", 300, rng)
    index = VectorIndex(DIM, exact_up_to=200)
    index.add("s", range(150), vectors[:150])
    assert index.search("s", vectors[10], 1, min_score=T) == [(10, pytest.approx(1.0))]
    assert filter_calls == []
    index.add("s", range(150, 300), vectors[150:])  # past exact_up_to: the same entries still hit
    for i in (10, 200):
        assert index.search("s", vectors[i], 1, min_score=T) == [(i, pytest.approx(1.0))]
    assert len(filter_calls) == 2


def test_scopes_are_isolated_and_never_crowd_each_other_out() -> None:
    rng = np.random.default_rng(2)
    query = _unit(rng.standard_normal(DIM))
    index = VectorIndex(DIM, exact_up_to=10)
    # 2,000 entries nearer to the query than scope a's only entry, in scope b
    index.add("b", range(2_000), _unit(query + 0.01 * rng.standard_normal((2_000, DIM))))
    mine = _unit(query + 0.04 * rng.standard_normal(DIM))
    index.add("a", [5_000], mine[None, :])
    assert index.search("a", query, 5, min_score=T) == [(5_000, pytest.approx(float(mine @ query), abs=1e-5))]
    assert {i for i, _ in index.search("b", query, 5, min_score=T)} <= set(range(2_000))
    assert index.search("c", query, 5) == []
    with pytest.raises(ValueError, match="already"):
        index.add("b", [5_000], mine[None, :])  # an id lives in one scope only


def test_removal_never_returns_a_removed_vector_and_keeps_the_rest_searchable() -> None:
    rng = np.random.default_rng(3)
    n = 3_000
    vectors = _data("clustered", n, rng)
    index = VectorIndex(DIM, exact_up_to=100)
    index.add("s", range(n), vectors)
    removed = set(rng.choice(n, 2_500, replace=False).tolist())
    index.remove([*removed, 10**9])  # an absent id is ignored
    assert len(index) == n - len(removed)
    assert len(index._scopes["s"].ids) < n  # capacity follows the scope down
    for i in rng.choice(n, 300, replace=False).tolist():
        result = index.search("s", vectors[i], 5, min_score=T)
        assert not {j for j, _ in result} & removed
        if i not in removed:
            assert result[0] == (i, pytest.approx(1.0))
    index.remove(set(range(n)) - removed)
    assert len(index) == 0 and index.search("s", vectors[0], 5) == []
    index.add("s", [1], vectors[1:2])  # an id can come back after removal
    assert index.search("s", vectors[1], 1) == [(1, pytest.approx(1.0))]


def test_export_returns_every_vector_once() -> None:
    rng = np.random.default_rng(4)
    vectors = _data("random", 500, rng)
    index = VectorIndex(DIM, exact_up_to=50)
    index.add("a", range(0, 500, 2), vectors[::2])
    index.add("b", range(1, 500, 2), vectors[1::2])
    index.remove([0, 1, 2])
    ids, exported = index.export()
    assert sorted(ids.tolist()) == list(range(3, 500))
    np.testing.assert_array_equal(exported, vectors[ids])
    index.clear()
    assert len(index) == 0 and index.export()[0].shape == (0,)


# --- SemanticCache over the index -----------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    import faiss  # noqa: F401  - a missing dependency fails these tests, it never skips them

    from mlflow_lite_plugin.cache.embeddings import get_embedder

    return get_embedder(None)


def _fill(cache, scope: str, vectors: np.ndarray, first: int = 0) -> None:
    for i, vector in enumerate(vectors, first):
        assert cache.store(scope, f"synthetic question {i}", {"i": i}, vector=vector[None, :])


def test_hits_survive_the_switch_to_the_filtered_regime(embedder, monkeypatch) -> None:
    from mlflow_lite_plugin.cache.semantic import SemanticCache

    monkeypatch.setattr(index_module, "EXACT_UP_TO", 50)
    cache = SemanticCache()
    cache.store("s", "How do I reset my password?", {"text": "A"})
    paraphrase = "What are the steps to reset my password?"
    assert cache.lookup("s", paraphrase).value == {"text": "A"}
    _fill(cache, "s", _data("clustered", 500, np.random.default_rng(5)))
    assert cache._index.exact_up_to == 50 < len(cache)
    assert cache.lookup("s", paraphrase).value == {"text": "A"}
    assert cache.lookup("s", "How do I delete my account?") is None


def test_lru_and_ttl_eviction_in_the_filtered_regime_never_return_an_evicted_entry() -> None:
    from mlflow_lite_plugin.cache.semantic import SemanticCache

    rng = np.random.default_rng(6)
    vectors = _data("clustered", 1_500, rng)
    cache = SemanticCache(max_entries=1_200)  # past EXACT_UP_TO: the sketch filter serves lookups
    _fill(cache, "s", vectors)
    assert len(cache) == len(cache._index) == 1_200
    for i in range(0, 1_500, 7):
        found = [entry_id for entry_id, _, _ in cache._search("s", vectors[i : i + 1])]
        assert all(j >= 300 for j in found), (i, found)  # the 300 least recently used are gone
        assert (i in found) == (i >= 300)

    short = SemanticCache(ttl=0.2)
    _fill(short, "s", vectors[:1_100])
    time.sleep(0.25)
    _fill(short, "s", vectors[1_100:1_150], first=1_100)
    assert len(short) == 50
    assert short._search("s", vectors[0:1]) == []
    assert short._search("s", vectors[1_120:1_121])[0][0] == 1_120


def test_save_load_round_trip_in_both_regimes_keeps_the_old_format(tmp_path, embedder) -> None:
    import faiss

    from mlflow_lite_plugin.cache.semantic import SemanticCache

    rng = np.random.default_rng(8)
    vectors = _data("random", 1_500, rng)
    cache = SemanticCache()
    cache.store("small", "How do I reset my password?", {"text": "A"})
    _fill(cache, "big", vectors)
    cache.save(tmp_path / "c")

    # the files earlier versions write and read: one IndexIDMap2 over a flat index of every vector
    saved = faiss.read_index(str(tmp_path / "c" / "index.faiss"))
    assert isinstance(saved, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(saved.index), faiss.IndexFlatIP)
    document = json.loads((tmp_path / "c" / "entries.json").read_text())
    assert document["version"] == 1
    assert sorted(faiss.vector_to_array(saved.id_map).tolist()) == sorted(e["id"] for e in document["entries"])

    loaded = SemanticCache.load(tmp_path / "c")
    assert loaded.entries() == cache.entries()
    assert len(loaded._index) == 1_501
    for i in (0, 777, 1_499):
        assert loaded._search("big", vectors[i : i + 1])[0][:2] == (i + 1, f"synthetic question {i}")
    assert loaded.lookup("small", "What are the steps to reset my password?").value == {"text": "A"}
    assert loaded._search("small", vectors[0:1]) == []


def test_a_cache_saved_by_the_previous_version_loads(tmp_path, embedder) -> None:
    from mlflow_lite_plugin.cache.semantic import SemanticCache

    shutil.copytree(V1_CACHE, tmp_path / "v1")
    cache = SemanticCache.load(tmp_path / "v1")
    assert len(cache) == 3 and cache.max_entries == 50
    assert cache.lookup("scope-a", "What are the steps to reset my password?").value == {
        "text": "Click 'Forgot password'."
    }
    assert cache.lookup("scope-b", "What are the steps to reset my password?").value == {
        "text": "Ask your administrator."
    }
    assert cache.lookup("scope-b", "How do I delete my account?") is None
