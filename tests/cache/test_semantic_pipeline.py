"""ml.set_semantic_cache in the pipeline: paraphrases hit, near-misses and other scopes do not."""

from __future__ import annotations

import pytest

import mlflow_lite_plugin as ml

from tests.helpers import get_trace

ORIGINAL = "How do I reset my password?"
PARAPHRASE = "What's the process to reset my password?"


@pytest.fixture
def semantic_client(stub, openai_kw):
    client = ml.Client(model="gpt-4o", **openai_kw)
    client.set_semantic_cache(enabled=True)
    yield client
    client.flush_traces()


def test_paraphrase_is_a_semantic_hit(semantic_client, stub):
    first = semantic_client.query(ORIGINAL)
    hit = semantic_client.query(PARAPHRASE)
    assert first.cached is None
    assert hit.cached == "semantic" and hit.text == first.text and hit.cost == 0.0
    assert len(stub.requests) == 1
    root = get_trace(hit.trace_id).data.spans[0]
    assert root.attributes["mlflow_lite.cached"] == "semantic"
    event = next(e for e in root.events if e.name == "cache_hit")
    # served because it cleared the configured bar (0.725 by default), by the verifier's paraphrase rule
    threshold = semantic_client.semantic_cache().threshold
    assert event.attributes["matched_query"] == ORIGINAL
    assert threshold <= event.attributes["similarity"] < 1.0, (event.attributes["similarity"], threshold)
    assert "paraphrase" in event.attributes["reason"]
    stats = semantic_client.cache_stats()
    assert stats["by_kind"]["semantic"]["hits"] == 1 and stats["hits"] == 1 and stats["misses"] == 1


def test_near_miss_is_not_served(semantic_client, stub):
    semantic_client.query(ORIGINAL)
    negated = semantic_client.query("How do I not reset my password?")
    assert negated.cached is None
    assert len(stub.requests) == 2


@pytest.mark.parametrize(
    "change",
    [{"system": "Answer in French."}, {"namespace": "tenant-b"}, {"model": "gpt-4o-mini"}, {"temperature": 0.7}],
)
def test_scope_isolation(semantic_client, stub, change):
    semantic_client.query(ORIGINAL, namespace="tenant-a")
    kwargs = {"namespace": "tenant-a", **change}
    assert semantic_client.query(PARAPHRASE, **kwargs).cached is None
    # the miss is the change's doing: the same paraphrase in the same scope is served
    same_scope = semantic_client.query(PARAPHRASE, namespace="tenant-a")
    assert same_scope.cached == "semantic" and len(stub.requests) == 2


def test_exact_cache_answers_first(semantic_client, stub):
    semantic_client.set_cache(enabled=True)
    first = semantic_client.query(ORIGINAL)
    assert first.cached is None and first.cost > 0
    again = semantic_client.query(ORIGINAL)
    assert again.cached == "exact" and again.text == first.text and again.cost == 0.0
    assert semantic_client.query(PARAPHRASE).cached == "semantic"
    assert len(stub.requests) == 1
    stats = semantic_client.cache_stats()
    assert (stats["hits"], stats["misses"]) == (2, 1)
    # the exact cache looked first both times (ORIGINAL hit, PARAPHRASE missed); each hit saved the first answer's price
    exact = {"hits": 1, "misses": 2, "hit_rate": pytest.approx(1 / 3), "cost_saved": pytest.approx(first.cost)}
    assert stats["by_kind"]["exact"] == exact
    assert stats["by_kind"]["semantic"]["hits"] == 1 and stats["cost_saved"] == pytest.approx(2 * first.cost)


def test_semantic_hit_streams_as_chunks(semantic_client, stub):
    semantic_client.query(ORIGINAL)
    stream = semantic_client.stream(PARAPHRASE)
    chunks = list(stream)
    assert len(chunks) > 1 and stream.response.cached == "semantic"
    assert len(stub.requests) == 1


def test_clear_and_disable(semantic_client, stub):
    semantic_client.query(ORIGINAL)
    assert len(semantic_client.semantic_cache()) == 1
    semantic_client.clear_cache()
    assert len(semantic_client.semantic_cache()) == 0
    semantic_client.query(ORIGINAL)
    semantic_client.set_semantic_cache(enabled=False)
    assert semantic_client.semantic_cache() is None
    assert semantic_client.query(PARAPHRASE).cached is None


def test_warm_start_from_a_saved_cache(semantic_client, stub, tmp_path, openai_kw):
    semantic_client.query(ORIGINAL)
    semantic_client.semantic_cache().save(tmp_path / "warm")
    from mlflow_lite_plugin.cache.semantic import SemanticCache

    fresh = ml.Client(model="gpt-4o", **openai_kw)
    fresh.set_semantic_cache(enabled=True, cache=SemanticCache.load(tmp_path / "warm"))
    assert fresh.query(PARAPHRASE).cached == "semantic"
    assert len(stub.requests) == 1


def test_bad_threshold(client):
    with pytest.raises(ml.ArgumentError, match="threshold"):
        client.set_semantic_cache(enabled=True, threshold=1.5)


def test_a_semantic_hit_is_kept_in_the_exact_cache(client, stub, openai_kw):
    client.set_cache()
    client.set_semantic_cache()
    first = client.query(model="gpt-4o", prompt="How do I reset my password?", **openai_kw)
    paraphrase = "What's the process to reset my password?"
    assert client.query(model="gpt-4o", prompt=paraphrase, **openai_kw).cached == "semantic"
    again = client.query(model="gpt-4o", prompt=paraphrase, **openai_kw)
    assert again.cached == "exact" and again.text == first.text and len(stub.requests) == 1
    stats = client.cache_stats()["by_kind"]
    assert stats["exact"]["hits"] == 1 and stats["semantic"]["hits"] == 1
    assert client.cache_stats()["cost_saved"] == pytest.approx(2 * first.cost)
