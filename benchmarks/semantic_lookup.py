"""Semantic lookup at 100k entries in one scope versus one embedding of the same text (issue 15).

Fills a ``SemanticCache`` with ``--n`` entries in ONE scope: synthetic vectors scattered around
the embeddings of the real questions in ``tests/data/semantic_extra_pairs.jsonl`` (cosine ~0.55 to
their question: clustered like real embeddings, below the threshold), plus one real question. Then,
interleaved ``--repeats`` times, it times the p50 of

* ``embed``: one warm ``embed([text])`` of the looked-up text (the unit of every ratio),
* ``miss``: ``SemanticCache.lookup`` of a question with no neighbour above the threshold,
* ``hit``: ``lookup`` of a paraphrase of the stored real question (embedding, search, verification),
* ``search``: the index search alone, and ``old search``: a local copy of the previous search (one
  ``IndexIDMap2(IndexFlatIP)`` for every scope, an ``IDSelectorBatch`` built from the scope's
  Python set of ids on every lookup), on the same vectors.

The old lookup is estimated as lookup - search + old search (everything else is the same code).
``--crossover`` also prints exact scan versus sketch filter by scope size (why ``EXACT_UP_TO``).

    python benchmarks/semantic_lookup.py                 # n=100_000, repeats=50
    python benchmarks/semantic_lookup.py --n 20000 --repeats 20 --crossover

``measure(n, repeats)`` returns the figures as a dict (``benchmarks/throughput.py`` calls it); the
first ``*ratio`` key is the headline: the slower of miss and hit over one embedding. The exit code
is 0 whatever the numbers: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

from mlflow_lite_plugin.cache.index import VectorIndex
from mlflow_lite_plugin.cache.semantic import SemanticCache

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "semantic_extra_pairs.jsonl"
SCOPE = "one-scope"
STORED = "How do I reset my password?"
HIT = "What are the steps to reset my password?"
MISS = "Which river flows through the middle of Budapest?"
NOISE = 0.077  # per coordinate: cosine ~1/sqrt(1 + 384 * NOISE**2) = 0.55 to the centre


def _synthetic(centres: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    vectors = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, centres.shape[1])) * NOISE
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


class _OldSearch:
    """The search before issue 15: one flat index for every scope, restricted per lookup by an
    ID selector built from the scope's set of ids."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        self.index.add_with_ids(vectors, ids)
        self.scope_ids = set(ids.tolist())

    def search(self, vector: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        ids = self.scope_ids
        selector = self.faiss.IDSelectorBatch(np.fromiter(ids, dtype=np.int64, count=len(ids)))
        return self.index.search(vector, min(k, len(ids)), params=self.faiss.SearchParameters(sel=selector))


def _p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build(n: int, seed: int = 0) -> tuple[SemanticCache, np.ndarray]:
    """A cache with ``n`` entries in one scope (n - 1 synthetic, one real) and its embedder warm."""
    cache = SemanticCache(max_entries=max(n, 1))
    embedder = cache._get_embedder()
    texts = [json.loads(line)["cached"] for line in PAIRS.read_text().splitlines() if line.strip()]
    centres = embedder.embed(texts)
    for i, vector in enumerate(_synthetic(centres, n - 1, np.random.default_rng(seed))):
        cache.store(SCOPE, f"synthetic question {i}", {"i": i}, vector=vector[None, :])
    cache.store(SCOPE, STORED, {"text": "Click 'Forgot password'."})
    return cache, embedder.embed([HIT])


def measure(n: int = 100_000, repeats: int = 50) -> dict:
    """p50s (ms) and ratios to one embedding of the same text; see the module docstring."""
    started = time.perf_counter()
    cache, hit_vector = build(n)
    build_s = time.perf_counter() - started
    embedder = cache._get_embedder()
    ids, vectors = cache._index.export()
    old = _OldSearch(ids, vectors)
    assert cache.lookup(SCOPE, HIT) is not None and cache.lookup(SCOPE, MISS) is None, "the workload is wrong"
    work = {
        "embed_hit": lambda: embedder.embed([HIT]),
        "hit": lambda: cache.lookup(SCOPE, HIT),
        "embed_miss": lambda: embedder.embed([MISS]),
        "miss": lambda: cache.lookup(SCOPE, MISS),
        "search": lambda: cache._search(SCOPE, hit_vector),
        "old": lambda: old.search(hit_vector),
    }
    samples: dict[str, list[float]] = {key: [] for key in work}
    order = list(work)
    rng = random.Random(0)
    for _ in range(repeats):  # interleaved, in a new order each round: drift and cache effects hit all alike
        rng.shuffle(order)
        for key in order:
            samples[key].append(_timed(work[key]))
    p50 = {key: _p50_ms(values) for key, values in samples.items()}
    hit_ratio = p50["hit"] / p50["embed_hit"]
    miss_ratio = p50["miss"] / p50["embed_miss"]
    old_delta = p50["old"] - p50["search"]
    return {
        "n": n,
        "repeats": repeats,
        "encoder": embedder.encoder,
        "lookup_ratio": max(hit_ratio, miss_ratio),
        "hit_ratio": hit_ratio,
        "miss_ratio": miss_ratio,
        "old_hit_ratio_estimate": (p50["hit"] + old_delta) / p50["embed_hit"],
        "old_miss_ratio_estimate": (p50["miss"] + old_delta) / p50["embed_miss"],
        "embed_hit_ms": p50["embed_hit"],
        "embed_miss_ms": p50["embed_miss"],
        "hit_ms": p50["hit"],
        "miss_ms": p50["miss"],
        "search_ms": p50["search"],
        "old_search_ms": p50["old"],
        "build_s": build_s,
    }


def crossover(sizes: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 16384), repeats: int = 200) -> None:
    """Exact scan versus sketch filter, p50 ms of one search, by scope size (random vectors)."""
    rng = np.random.default_rng(1)
    print(f"{'entries':>8} {'exact ms':>9} {'filtered ms':>12}")
    for size in sizes:
        vectors = rng.standard_normal((size, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        times = []
        for exact_up_to in (size, 0):
            index = VectorIndex(384, exact_up_to=exact_up_to)
            index.add("s", range(size), vectors)
            search = functools.partial(index.search, "s", vectors[0], 5, min_score=0.725)
            times.append(_p50_ms([_timed(search) for _ in range(repeats)]))
        print(f"{size:>8} {times[0]:>9.3f} {times[1]:>12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--crossover", action="store_true", help="also print exact scan vs sketch filter by size")
    args = parser.parse_args()
    if args.crossover:
        crossover()
    result = measure(args.n, args.repeats)
    print(f"{result['n']:,} entries in one scope, p50 of {result['repeats']} interleaved rounds, "
          f"encoder {result['encoder']} (cache built in {result['build_s']:.1f} s)")
    print(f"{'':<28} {'ms':>8} {'/ embedding':>12}")
    print(f"{'one embedding (hit text)':<28} {result['embed_hit_ms']:>8.2f} {1:>11.2f}x")
    print(f"{'lookup, hit':<28} {result['hit_ms']:>8.2f} {result['hit_ratio']:>11.2f}x")
    print(f"{'lookup, miss':<28} {result['miss_ms']:>8.2f} {result['miss_ratio']:>11.2f}x")
    print(f"{'index search':<28} {result['search_ms']:>8.2f} {result['search_ms'] / result['embed_hit_ms']:>11.2f}x")
    print(f"{'old flat + selector search':<28} {result['old_search_ms']:>8.2f} "
          f"{result['old_search_ms'] / result['embed_hit_ms']:>11.2f}x")
    print(f"{'old lookup, hit (estimate)':<28} {'':>8} {result['old_hit_ratio_estimate']:>11.2f}x")
    print(f"{'old lookup, miss (estimate)':<28} {'':>8} {result['old_miss_ratio_estimate']:>11.2f}x")
    print(f"headline (slower of hit and miss) / one embedding: {result['lookup_ratio']:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
