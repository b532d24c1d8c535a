"""The exact cache: key policy, TTL, LRU bound, what is never cached, and the three backends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

import mlflow_lite_plugin as ml

from tests.helpers import get_trace, start_redis


def _ask(client: ml.Client, prompt: str = "How do I reset my password?", **kw) -> ml.Response:
    return client.query(model="gpt-4o", prompt=prompt, **kw)


def test_second_identical_call_is_an_exact_hit(client, stub, openai_kw):
    client.set_cache(enabled=True, ttl=3600)
    first = _ask(client, **openai_kw)
    second = _ask(client, **openai_kw)
    assert first.cached is None and second.cached == "exact"
    assert second.text == first.text and second.finish_reason == first.finish_reason
    assert second.cost == 0.0 and second.usage["total_tokens"] == 0
    assert len(stub.requests) == 1  # no provider call for the hit
    stats = client.cache_stats()
    assert (stats["hits"], stats["misses"], stats["hit_rate"]) == (1, 1, 0.5)
    assert stats["cost_saved"] == pytest.approx(first.cost) and stats["by_kind"]["exact"]["hits"] == 1
    spans = get_trace(second.trace_id).data.spans
    assert len(spans) == 1  # no attempt span
    assert spans[0].attributes["mlflow_lite.cached"] == "exact"
    assert spans[0].attributes["mlflow_lite.cost_saved_usd"] == pytest.approx(first.cost)
    assert [e.name for e in spans[0].events] == ["cache_hit"]


@pytest.mark.parametrize(
    "change",
    [
        {"system": "You are a pirate."},
        {"temperature": 0.9},
        {"max_tokens": 5},
        {"seed": 42},
        {"namespace": "tenant-b"},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    ],
)
def test_anything_that_changes_the_output_changes_the_key(client, stub, openai_kw, change):
    client.set_cache(enabled=True)
    _ask(client, namespace="tenant-a", **openai_kw)
    kwargs = {"namespace": "tenant-a", **openai_kw, **change}
    assert _ask(client, **kwargs).cached is None
    assert _ask(client, **kwargs).cached == "exact"


def test_other_model_misses_but_new_api_key_hits(client, stub, openai_kw):
    client.set_cache(enabled=True)
    _ask(client, **openai_kw)
    assert client.query(model="gpt-4o-mini", prompt="How do I reset my password?", **openai_kw).cached is None
    rotated = {**openai_kw, "api_key": "sk-rotated"}
    assert _ask(client, **rotated).cached == "exact"  # transport settings are not part of the key


def test_ttl_expires(client, stub, openai_kw):
    client.set_cache(enabled=True, ttl=0.3)
    _ask(client, **openai_kw)
    assert _ask(client, **openai_kw).cached == "exact"
    time.sleep(0.4)
    assert _ask(client, **openai_kw).cached is None


def test_memory_backend_is_lru_bounded(client, stub, openai_kw):
    client.set_cache(enabled=True, max_entries=2)
    for prompt in ("one", "two"):
        _ask(client, prompt, **openai_kw)
    _ask(client, "one", **openai_kw)  # touch: "two" is now least recently used
    _ask(client, "three", **openai_kw)
    assert _ask(client, "one", **openai_kw).cached == "exact"
    assert _ask(client, "two", **openai_kw).cached is None


def test_errors_are_never_cached(client, stub, openai_kw):
    client.set_cache(enabled=True)
    stub.inject(status=500)
    with pytest.raises(ml.ProviderError):
        _ask(client, num_retries=0, **openai_kw)
    assert _ask(client, **openai_kw).cached is None
    assert len(stub.requests) == 2


def test_invalid_answers_are_never_cached(client, stub, openai_kw):
    class FailingValidation(ml.Stage):
        name, order = "fake_validation", 600

        def after(self, call, response):
            response.validation = type("Result", (), {"passed": False})()

    client.set_cache(enabled=True)
    client.add_stage(FailingValidation())
    _ask(client, **openai_kw)
    assert _ask(client, **openai_kw).cached is None
    assert len(stub.requests) == 2


def test_streams_are_stored_and_served_as_chunks(client, stub, openai_kw):
    client.set_cache(enabled=True)
    full = "".join(client.stream(model="gpt-4o", prompt="stream into the cache", **openai_kw))
    replay = client.stream(model="gpt-4o", prompt="stream into the cache", **openai_kw)
    chunks = list(replay)
    assert len(chunks) > 1 and "".join(chunks) == full
    assert replay.response.cached == "exact"
    assert _ask(client, "stream into the cache", **openai_kw).cached == "exact"  # query shares the key
    assert len(stub.requests) == 1


def test_partial_streams_are_not_cached(client, stub, openai_kw):
    client.set_cache(enabled=True)
    with client.stream(model="gpt-4o", prompt="stopped early", **openai_kw) as stream:
        next(stream)
    assert _ask(client, "stopped early", **openai_kw).cached is None


def test_cache_false_and_max_temperature_bypass(client, stub, openai_kw):
    client.set_cache(enabled=True, max_temperature=0.5)
    _ask(client, **openai_kw)
    assert _ask(client, cache=False, **openai_kw).cached is None
    _ask(client, temperature=0.9, **openai_kw)
    assert _ask(client, temperature=0.9, **openai_kw).cached is None  # above max_temperature
    assert len(stub.requests) == 4


def test_disable_and_clear(client, stub, openai_kw):
    client.set_cache(enabled=True)
    _ask(client, **openai_kw)
    client.clear_cache()
    assert client.cache_stats()["hits"] == 0
    assert _ask(client, **openai_kw).cached is None
    client.set_cache(enabled=False)
    assert _ask(client, **openai_kw).cached is None
    assert len(stub.requests) == 3


def test_one_liners(default_client):
    ml.set_cache(enabled=True, ttl=3600)
    ml.query(model="lite/echo", prompt="one-liner cache")
    assert ml.query(model="lite/echo", prompt="one-liner cache").cached == "exact"
    assert ml.cache_stats()["hits"] == 1
    ml.clear_cache()
    assert ml.query(model="lite/echo", prompt="one-liner cache").cached is None


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"backend": "mongo"}, "backend"),
        ({"ttl": -1}, "ttl"),
        ({"max_entries": 0}, "max_entries"),
        ({"backend": "redis"}, "url"),
    ],
)
def test_bad_cache_settings(client, kwargs, argument):
    with pytest.raises(ml.ArgumentError) as info:
        client.set_cache(enabled=True, **kwargs)
    assert info.value.argument == argument


# -- SQLite: survives restarts, shared by processes --


def test_sqlite_survives_a_restart(tmp_path, stub, openai_kw):
    path = tmp_path / "cache.db"
    first = ml.Client()
    first.set_cache(enabled=True, backend="sqlite", path=str(path))
    answer = _ask(first, **openai_kw)
    restarted = ml.Client()
    restarted.set_cache(enabled=True, backend="sqlite", path=str(path))
    hit = _ask(restarted, **openai_kw)
    assert hit.cached == "exact" and hit.text == answer.text
    assert len(stub.requests) == 1


@pytest.mark.slow
def test_sqlite_shared_by_concurrent_processes(tmp_path):
    """4 processes write and read one cache file at once: no errors, every answer visible to all."""
    path = tmp_path / "shared.db"
    code = textwrap.dedent(
        f"""
        import sys, mlflow_lite_plugin as ml
        ml.set_tracing(False)
        ml.set_cache(enabled=True, backend="sqlite", path={str(path)!r})
        me = int(sys.argv[1])
        for i in range(40):
            ml.query(model="lite/echo", prompt=f"proc {{me}} question {{i % 10}}")
        print(ml.cache_stats()["hits"])
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for n in range(4)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert [int(out.strip()) for out, _ in outputs] == [30] * 4  # 10 misses, 30 hits each
    reader = ml.Client()
    reader.set_cache(enabled=True, backend="sqlite", path=str(path))
    assert len(reader.pipeline.get("exact_cache").backend) == 40
    assert reader.query(model="lite/echo", prompt="proc 3 question 7").cached == "exact"


# -- Redis: shared by serving replicas --


def test_redis_shared_by_two_replicas(redis_url, stub, openai_kw):
    replica_a, replica_b = ml.Client(), ml.Client()
    for replica in (replica_a, replica_b):
        replica.set_cache(enabled=True, backend="redis", url=redis_url, ttl=60)
    replica_a.clear_cache()
    answer = _ask(replica_a, "shared across replicas", **openai_kw)
    hit = _ask(replica_b, "shared across replicas", **openai_kw)
    assert hit.cached == "exact" and hit.text == answer.text
    assert len(stub.requests) == 1
    replica_b.clear_cache()
    assert _ask(replica_a, "shared across replicas", **openai_kw).cached is None


def test_redis_ttl_is_enforced_by_redis(redis_url, stub, openai_kw):
    client = ml.Client()
    client.set_cache(enabled=True, backend="redis", url=redis_url, ttl=0.5)
    _ask(client, "short lived", **openai_kw)
    assert _ask(client, "short lived", **openai_kw).cached == "exact"
    time.sleep(0.7)
    assert _ask(client, "short lived", **openai_kw).cached is None


def test_redis_unreachable_at_setup_is_a_clear_error(client):
    import redis

    with pytest.raises(redis.ConnectionError, match=r"(?i)connect.*127\.0\.0\.1:1"):
        client.set_cache(enabled=True, backend="redis", url="redis://127.0.0.1:1/0")


def test_redis_outage_after_setup_never_fails_a_call(tmp_path, stub, openai_kw, caplog):
    url, proc = start_redis(tmp_path)
    client = ml.Client()
    client.set_cache(enabled=True, backend="redis", url=url)
    proc.kill()  # the cache goes down while the service keeps running
    proc.wait(10)
    with caplog.at_level("WARNING"):
        r = _ask(client, "redis is down", **openai_kw)
    assert r.cached is None and r.text.endswith("redis is down")
    assert "exact cache lookup failed" in caplog.text


def test_cache_survives_env_without_redis_package_import_at_module_load():
    code = "import sys, mlflow_lite_plugin.cache; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip() == "False"
