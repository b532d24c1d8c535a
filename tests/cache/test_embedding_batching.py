"""One embedding per semantic-cache miss, and concurrent lookups share one encode call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.cache.embeddings import get_embedder
from mlflow_lite_plugin.cache.semantic import SemanticCache

QUESTIONS = [
    "How do I reset my password?",
    "What is the capital of Australia?",
    "How many moons does Jupiter have?",
    "Which river flows through Cairo?",
    "Who wrote the novel Middlemarch?",
    "What is the boiling point of ethanol?",
    "How tall is Mount Kilimanjaro?",
    "When was the Eiffel Tower finished?",
]


class EncodeSpy:
    """Wraps the embedder's one call into its model (whichever encoder runs): records the texts of
    each call; ``hold`` makes the first call wait until released (so that other callers queue
    behind it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold: bool = False):
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        model = get_embedder()._get_model()
        original = model.encode

        def encode(texts, *args, **kwargs):
            self.calls.append(list(texts))
            self.started.set()
            self.release.wait(10)
            return original(texts, *args, **kwargs)

        monkeypatch.setattr(model, "encode", encode)

    def count(self, text: str) -> int:
        return sum(call.count(text) for call in self.calls)


def queued(cache: SemanticCache, n: int, timeout: float = 30.0) -> None:
    """Wait until ``n`` requests wait in the cache's embedding batcher (the first is being encoded)."""
    batcher = cache._get_embedder()._batched()
    deadline = time.monotonic() + timeout
    while len(batcher._queue) < n:
        assert time.monotonic() < deadline, f"only {len(batcher._queue)} of {n} queued"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def warm():
    """Load the model once, outside any spy."""
    SemanticCache().store("warm-up", "warm up the encoder", {"text": "ok"})


def test_a_miss_that_is_stored_is_embedded_once(warm, monkeypatch, stub, openai_kw):
    client = ml.Client(model="gpt-4o", **openai_kw)
    client.set_semantic_cache(enabled=True)
    client.query(QUESTIONS[0])  # the scope now holds an entry, so the next lookup embeds
    spy = EncodeSpy(monkeypatch)
    answer = client.query(QUESTIONS[1])
    assert answer.cached is None and len(stub.requests) == 2
    assert spy.count(QUESTIONS[1]) == 1, spy.calls  # looked up and stored with the same vector
    assert client.query(QUESTIONS[1]).cached in ("exact", "semantic")  # it was stored


def test_async_miss_is_embedded_once(warm, monkeypatch, stub, openai_kw):
    client = ml.Client(model="gpt-4o", **openai_kw)
    client.set_semantic_cache(enabled=True)
    asyncio.run(client.aquery(QUESTIONS[0]))
    spy = EncodeSpy(monkeypatch)
    assert asyncio.run(client.aquery(QUESTIONS[2])).cached is None
    assert spy.count(QUESTIONS[2]) == 1, spy.calls


def test_concurrent_lookups_from_threads_share_one_encode_call(warm, monkeypatch):
    cache = SemanticCache()
    cache.store("scope", "Where is the nearest train station?", {"text": "two blocks north"})
    spy = EncodeSpy(monkeypatch, hold=True)
    threads = [threading.Thread(target=cache.lookup, args=("scope", q)) for q in QUESTIONS]
    threads[0].start()
    assert spy.started.wait(10)  # the first lookup is being encoded: the others queue meanwhile
    for thread in threads[1:]:
        thread.start()
    queued(cache, len(QUESTIONS) - 1)  # every other thread has submitted its question
    spy.release.set()
    for thread in threads:
        thread.join(10)
    assert [len(call) for call in spy.calls] == [1, len(QUESTIONS) - 1], spy.calls  # 8 lookups, 2 encodes
    assert sorted(q for call in spy.calls for q in call) == sorted(QUESTIONS)


def test_concurrent_async_queries_share_encode_calls(warm, monkeypatch, stub, openai_kw):
    client = ml.Client(model="gpt-4o", **openai_kw)
    client.set_semantic_cache(enabled=True)
    client.query("Where is the nearest train station?")
    spy = EncodeSpy(monkeypatch, hold=True)

    async def run() -> list:
        batch = asyncio.ensure_future(client.async_batch(QUESTIONS, max_concurrency=len(QUESTIONS)))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, spy.started.wait, 10)
        first = len(spy.calls[0])  # the lookups that reached the batcher before it started encoding
        if first < len(QUESTIONS):  # the others queue behind that encode
            await loop.run_in_executor(None, queued, client.semantic_cache(), len(QUESTIONS) - first)
        spy.release.set()
        return await batch

    answers = asyncio.run(run())
    assert all(isinstance(a, ml.Response) and a.cached is None for a in answers), answers
    lookups = spy.calls[: 1 if len(spy.calls[0]) == len(QUESTIONS) else 2]
    assert sum(len(call) for call in lookups) == len(QUESTIONS), spy.calls  # 8 lookups in at most 2 encodes
    # each question embedded once in all: its vector was stored with its answer
    assert all(spy.count(q) == 1 for q in QUESTIONS), spy.calls


def test_a_failed_encode_reaches_its_caller_and_the_batcher_goes_on(warm, monkeypatch):
    cache = SemanticCache()
    cache.store("scope", "How do I reset my password?", {"text": "use the link"})

    def broken(texts, *args, **kwargs):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(get_embedder()._get_model(), "encode", broken)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        cache.lookup("scope", QUESTIONS[1])
    monkeypatch.undo()
    assert cache.lookup("scope", "What's the process to reset my password?") is not None
