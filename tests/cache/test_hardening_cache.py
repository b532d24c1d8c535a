"""Cache hardening: long questions skip the semantic cache, a failing cache backend is skipped by a
circuit breaker, and a saved semantic cache refuses an index whose bytes changed.

Imports of the new names are inside the tests, so each test fails on its own on code without them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.cache import semantic as semantic_module
from mlflow_lite_plugin.cache import verify as verify_module

from tests.helpers import get_trace, start_redis

ORIGINAL = "How do I reset my password?"


def _spy(monkeypatch, module, name: str) -> list[int]:
    """Replace ``module.name`` by a wrapper that records the length of its first argument."""
    lengths: list[int] = []
    original = getattr(module, name)

    def spy(text, *args, **kwargs):
        lengths.append(len(text))
        return original(text, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return lengths


# --- input size: the semantic cache never normalises, embeds or verifies a long question --------


def test_a_1mb_question_skips_the_semantic_cache_and_says_so(stub, openai_kw, monkeypatch):
    from mlflow_lite_plugin.cache.embeddings import Embedder

    normalised = _spy(monkeypatch, semantic_module, "normalize")
    verified = _spy(monkeypatch, semantic_module, "verify_pair")
    embedded: list[int] = []
    original_embed = Embedder.embed
    monkeypatch.setattr(
        Embedder, "embed", lambda self, texts: embedded.extend(map(len, texts)) or original_embed(self, texts)
    )
    client = ml.Client(model="gpt-4o", **openai_kw)
    client.set_semantic_cache(enabled=True)
    huge = "Please summarise this log line. " * 32_768  # 1 MiB
    first = client.query(huge)
    second = client.query(huge)
    client.flush_traces()
    assert first.cached is None and second.cached is None and len(stub.requests) == 2  # not stored
    assert normalised == [] and verified == [] and embedded == []
    root = get_trace(second.trace_id).data.spans[0]
    assert root.attributes["mlflow_lite.cache.semantic_skipped"] == "query_too_long"
    event = next(e for e in root.events if e.name == "semantic_cache_skipped")
    assert event.attributes["query_chars"] == len(huge) and event.attributes["max_query_chars"] == 2_000
    assert len(client.semantic_cache()) == 0


def test_a_question_is_normalised_once_per_call(stub, openai_kw, monkeypatch):
    normalised = _spy(monkeypatch, semantic_module, "normalize")
    client = ml.Client(model="gpt-4o", **openai_kw)
    client.set_semantic_cache(enabled=True)
    first = client.query(ORIGINAL)  # a miss: lookup, then store
    client.flush_traces()
    assert first.cached is None
    assert normalised == [len(ORIGINAL)]
    assert len(client.semantic_cache()) == 1


def test_the_cap_is_a_setting_and_applies_to_direct_use(tmp_path):
    from mlflow_lite_plugin.cache.semantic import SemanticCache

    cache = SemanticCache(max_query_chars=10)
    assert cache.lookup("s", "x" * 11) is None  # no model is needed to refuse it
    assert cache.store("s", "x" * 11, {"text": "a"}) is False and len(cache) == 0
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="max_query_chars"):
            SemanticCache(max_query_chars=bad)


def test_set_semantic_cache_takes_the_cap():
    client = ml.Client(model="lite/echo")
    client.set_semantic_cache(enabled=True, max_query_chars=50)
    assert client.semantic_cache().max_query_chars == 50
    for bad in (0, 2.5, True, "10"):
        with pytest.raises(ml.ArgumentError) as exc:
            client.set_semantic_cache(enabled=True, max_query_chars=bad)
        assert exc.value.argument == "max_query_chars"


@pytest.mark.parametrize(
    "text",
    [
        "one " + "million " * 2_000,  # the spelled-out number grew without bound (and str() refused it)
        "1" * 5_000 + "th",  # an ordinal int() refuses to parse
    ],
    ids=["million-million", "huge-ordinal"],
)
def test_normalising_huge_numbers_neither_fails_nor_grows(text):
    out = verify_module.normalize(text)
    assert len(out) <= 2 * len(text)
    assert verify_module.verify(text, text, 1.0, threshold=0.7)[0]


def test_spelled_out_numbers_still_merge():
    assert verify_module.normalize("twenty five") == verify_module.normalize("25")
    assert verify_module.normalize("three million") == verify_module.normalize("3000000")
    assert verify_module.normalize("the 3rd one") == verify_module.normalize("the third one")


def _words(seed: int, n: int, capitalise: bool) -> list[str]:
    import random
    import string

    rng = random.Random(seed)
    words = ("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 8))) for _ in range(n))
    return [w.capitalize() if capitalise else w for w in words]


def test_verifier_compares_affixes_without_trying_every_word_pair(monkeypatch):
    calls = []
    original = verify_module._affix_opposed
    monkeypatch.setattr(verify_module, "_affix_opposed", lambda x, y: calls.append((x, y)) or original(x, y))
    cached, query = " ".join(_words(1, 300, False)), " ".join(_words(2, 300, False))
    accepted, reason = verify_module.verify(cached, query, 0.99, threshold=0.7)
    assert accepted, reason  # nothing in common and nothing opposed: only the cosine decided
    assert len(calls) < 300  # was 300 x 300: quadratic in the question length
    assert not verify_module.verify("Is it safe?", "Is it unsafe?", 0.99, threshold=0.7)[0]
    assert verify_module._affix_pair(["enable", "employer"], ["disable", "employee"]) == ("enable", "disable")


def test_verifier_reads_acronym_spans_once_per_side_not_once_per_name(monkeypatch):
    reads = []

    class Spans(dict):
        def items(self):
            reads.append(1)
            return super().items()

    original = verify_module._acronym_spans
    monkeypatch.setattr(verify_module, "_acronym_spans", lambda tokens: Spans(original(tokens)))
    # 40 names the other side lacks, among lower-case words (so the text is not in Title Case)
    triples = zip(_words(3, 40, True), _words(5, 40, False), _words(6, 40, False), strict=True)
    cached = " ".join(a for triple in triples for a in triple)
    query = " ".join(_words(4, 120, False))
    accepted, reason = verify_module.verify(cached, query, 0.99, threshold=0.7)
    assert not accepted and reason.startswith("name/identifier without counterpart"), reason
    assert len(reads) <= 2  # was one pass over every span per name: quadratic
    same = ("Which cities in the United States have the most rain?", "Which US cities get the most rain?")
    assert verify_module.verify(*same, 0.9, threshold=0.7)[0]  # "US" still counts as "United States"


# --- circuit breaker around the shared cache backends ------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_failures_probes_once_and_closes(caplog):
    from mlflow_lite_plugin.cache.backends import BackendSkipped, BreakerSettings, CircuitBreaker

    clock = _Clock()
    breaker = CircuitBreaker("redis", (ConnectionError,), BreakerSettings(failures=3, cooldown=30), clock=clock)
    attempts = []

    def down():
        attempts.append(1)
        raise ConnectionError("down")

    caplog.set_level(logging.INFO, logger="mlflow_lite_plugin.storage.breaker")
    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.run(down)
    assert breaker.state == "open"
    for _ in range(10):
        with pytest.raises(BackendSkipped) as skipped:
            breaker.run(down)
    assert len(attempts) == 3 and skipped.value.retry_in == pytest.approx(30)
    opened = [r for r in caplog.records if "skipping it" in r.getMessage()]
    assert len(opened) == 1 and opened[0].levelno == logging.WARNING

    clock.now += 30  # cool-down over: one probe, which fails, re-opens for another cool-down
    assert breaker.state == "half-open"
    with pytest.raises(ConnectionError):
        breaker.run(down)
    with pytest.raises(BackendSkipped):
        breaker.run(down)
    assert len(attempts) == 4 and breaker.state == "open"

    clock.now += 30
    assert breaker.run(lambda: "back") == "back" and breaker.state == "closed"
    assert sum("answered again" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ConnectionError):  # closed again: failures count from zero
        breaker.run(down)
    assert breaker.state == "closed"


def test_breaker_lets_one_probe_through_at_a_time():
    from mlflow_lite_plugin.cache.backends import BackendSkipped, BreakerSettings, CircuitBreaker

    clock = _Clock()
    breaker = CircuitBreaker("redis", (ConnectionError,), BreakerSettings(failures=1, cooldown=5), clock=clock)
    with pytest.raises(ConnectionError):
        breaker.run(lambda: (_ for _ in ()).throw(ConnectionError("down")))
    clock.now += 5
    entered, release = threading.Event(), threading.Event()
    probe = threading.Thread(target=lambda: breaker.run(lambda: entered.set() or release.wait(5)))
    probe.start()
    assert entered.wait(5)
    with pytest.raises(BackendSkipped):  # while the probe is out, the others are still skipped
        breaker.run(lambda: "second")
    release.set()
    probe.join(5)
    assert breaker.state == "closed" and breaker.run(lambda: "second") == "second"


def test_breaker_ignores_errors_that_are_answers():
    from mlflow_lite_plugin.cache.backends import BreakerSettings, CircuitBreaker

    breaker = CircuitBreaker("redis", (ConnectionError,), BreakerSettings(failures=1))
    with pytest.raises(ValueError):  # e.g. an entry that is not JSON: the backend did answer
        breaker.run(lambda: json.loads("{"))
    assert breaker.state == "closed"


def test_breaker_settings_are_checked():
    from mlflow_lite_plugin.cache.backends import BreakerSettings

    bad = (({"failures": 0}, "failures"), ({"cooldown": 0}, "cooldown"), ({"failures": True}, "failures"))
    for kwargs, argument in bad:
        with pytest.raises(ml.ArgumentError) as info:
            BreakerSettings(**kwargs)
        assert info.value.argument == argument


def test_sqlite_backend_is_behind_the_breaker(tmp_path, monkeypatch, stub, openai_kw):
    import sqlite3

    from mlflow_lite_plugin.cache.backends import BreakerSettings

    client = ml.Client(model="gpt-4o", **openai_kw)
    client.set_cache(enabled=True, backend="sqlite", path=str(tmp_path / "cache.db"))
    backend = client.pipeline.get("exact_cache").backend
    backend.breaker.settings = BreakerSettings(cooldown=3600)  # a slow machine must not see it end
    attempts = []

    def broken():
        attempts.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(backend, "_connect", broken)
    for i in range(4):
        assert client.query(f"question {i}").cached is None
    client.flush_traces()
    assert len(attempts) == 3  # lookup + store of call 0, lookup of call 1; then skipped
    assert backend.breaker.state == "open"


def test_a_hung_redis_is_skipped_then_used_again(tmp_path, stub, openai_kw, caplog):
    """SIGSTOP a dedicated redis-server: the first operations pay the (short) timeout, then the
    backend is skipped (on the trace, logged once); after SIGCONT and the cool-down it serves again."""
    from mlflow_lite_plugin.cache.backends import BreakerSettings

    url, proc = start_redis(tmp_path)
    try:
        client = ml.Client(model="gpt-4o", **openai_kw)
        client.set_cache(enabled=True, backend="redis", url=url)
        backend = client.pipeline.get("exact_cache").backend
        backend.breaker.settings = BreakerSettings(cooldown=3600)  # a slow machine must not see it end
        attempts = []
        execute = backend._redis.execute_command

        def counted(*args, **kwargs):
            attempts.append(args[0])  # every command: the cache's GET/SET and single flight's lock
            return execute(*args, **kwargs)

        backend._redis.execute_command = counted
        os.kill(proc.pid, signal.SIGSTOP)
        caplog.set_level(logging.INFO, logger="mlflow_lite_plugin.storage.breaker")
        answers = [client.query(f"hung redis {i}") for i in range(2)]
        assert backend.breaker.state == "open"  # 3 timeouts in a row (lookup, lock, store...)
        paid = len(attempts)
        assert paid <= 4
        answers += [client.query(f"hung redis {i}") for i in range(2, 5)]
        assert len(attempts) == paid  # skipped: no command, no timeout
        assert all(a.cached is None for a in answers) and len(stub.requests) == 5
        client.flush_traces()
        root = get_trace(answers[-1].trace_id).data.spans[0]
        assert root.attributes["mlflow_lite.cache.backend_skipped"] == "redis"
        assert {e.attributes["action"] for e in root.events if e.name == "cache_backend_skipped"} == {"lookup", "store"}
        assert sum("skipping it" in r.getMessage() for r in caplog.records) == 1

        os.kill(proc.pid, signal.SIGCONT)
        backend.breaker.settings = BreakerSettings(cooldown=0.2)  # instead of waiting 30 s
        threading.Event().wait(0.3)
        assert client.query("back again").cached is None  # the probe: a miss, then a store
        assert backend.breaker.state == "closed"
        assert client.query("back again").cached == "exact"
        assert sum("answered again" in r.getMessage() for r in caplog.records) == 1
        client.flush_traces()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


def test_redis_cache_fails_fast_by_default_and_the_url_can_say_otherwise(redis_url):
    from mlflow_lite_plugin.cache.backends import RedisBackend

    fast = RedisBackend(redis_url)._redis.connection_pool.connection_kwargs
    assert fast["socket_timeout"] == 0.5 and fast["socket_connect_timeout"] == 0.5
    slow = RedisBackend(redis_url + "?socket_timeout=2")._redis.connection_pool.connection_kwargs
    assert slow["socket_timeout"] == 2.0
    with pytest.raises(ml.ArgumentError) as info:
        RedisBackend(redis_url, socket_timeout=0)
    assert info.value.argument == "socket_timeout"


# --- checksums of saved semantic caches -------------------------------------------------------


@pytest.fixture(scope="module")
def saved_cache(tmp_path_factory):
    from mlflow_lite_plugin.cache.semantic import SemanticCache

    cache = SemanticCache()
    for i, question in enumerate((ORIGINAL, "How do I delete my account?", "Why is the sky blue?")):
        cache.store("s", question, {"text": f"answer {i}"})
    directory = tmp_path_factory.mktemp("semantic") / "cache"
    cache.save(directory)
    return directory


def _copy_dir(source, target):
    target.mkdir()
    for name in ("index.faiss", "entries.json"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_saved_index_carries_its_sha256(saved_cache):
    import hashlib

    document = json.loads((saved_cache / "entries.json").read_text())
    digest = hashlib.sha256((saved_cache / "index.faiss").read_bytes()).hexdigest()
    assert document["checksums"] == {"index.faiss": f"sha256:{digest}"}
    assert document["max_query_chars"] == 2_000


def test_flipped_bytes_in_the_index_are_refused_naming_the_file(saved_cache, tmp_path):
    from mlflow_lite_plugin.cache.semantic import SemanticCache, SemanticCacheError

    directory = _copy_dir(saved_cache, tmp_path / "flipped")
    index = directory / "index.faiss"
    data = bytearray(index.read_bytes())
    middle = len(data) // 2  # inside the stored vectors: FAISS itself reads them without complaint
    for offset in range(middle, middle + 8):
        data[offset] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(SemanticCacheError, match=r"index\.faiss.*checksum") as info:
        SemanticCache.load(directory)
    assert info.value.path == str(index)


def test_a_cache_saved_without_checksums_still_loads(saved_cache, tmp_path, caplog):
    from mlflow_lite_plugin.cache.semantic import SemanticCache

    directory = _copy_dir(saved_cache, tmp_path / "old")
    entries = directory / "entries.json"
    document = json.loads(entries.read_text())
    del document["checksums"], document["max_query_chars"]  # as written before this version
    entries.write_text(json.dumps(document))
    with caplog.at_level(logging.DEBUG, logger="mlflow_lite_plugin.cache.semantic"):
        loaded = SemanticCache.load(directory)
    assert len(loaded) == 3 and loaded.max_query_chars == 2_000
    assert loaded.lookup("s", ORIGINAL).value == {"text": "answer 0"}
    assert "no checksum" in caplog.text


def test_malformed_checksums_name_the_entries_file(saved_cache, tmp_path):
    from mlflow_lite_plugin.cache.semantic import SemanticCache, SemanticCacheError

    directory = _copy_dir(saved_cache, tmp_path / "bad")
    entries = directory / "entries.json"
    document = json.loads(entries.read_text())
    for bad in ({"index.faiss": "md5:abc"}, ["sha256:abc"], {"index.faiss": 1}):
        entries.write_text(json.dumps({**document, "checksums": bad}))
        with pytest.raises(SemanticCacheError, match=r"entries\.json.*checksums"):
            SemanticCache.load(directory)
    entries.write_text(json.dumps(document))
    assert SemanticCache.load(directory, max_query_chars=50).max_query_chars == 50
