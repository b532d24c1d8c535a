"""An async call with every control on never runs blocking work on the event loop.

Every blocking operation of the controls (SQLite, Redis's sync client, the semantic cache's
lookup and store, the embedding itself) records the thread it runs on; none may be the loop's.
The embedding is made slow (it sleeps, as a busy model would), and asyncio's debug mode reports
any callback that holds the loop longer than ``slow_callback_duration``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.cache.embeddings import Embedder, get_embedder
from mlflow_lite_plugin.cache.semantic import SemanticCache
from mlflow_lite_plugin.storage.redis import RedisStorage
from mlflow_lite_plugin.storage.sqlite import SQLiteStorage

QUESTIONS = [f"How many {thing} does a {place} need in {year}?" for thing, place, year in [
    ("chairs", "classroom", 1990), ("doctors", "hospital", 2001), ("buses", "city", 2015),
    ("trees", "park", 1984), ("servers", "startup", 2023), ("pilots", "airline", 1975),
]]


class ThreadLog:
    """Records which threads ran each wrapped method."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.runs: list[tuple[str, int]] = []
        self.monkeypatch = monkeypatch

    def wrap(self, owner: object, name: str) -> None:
        original = getattr(owner, name)

        def recorded(*args, **kwargs):
            self.runs.append((name, threading.get_ident()))
            return original(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, recorded)

    def on(self, thread: int) -> list[str]:
        return sorted({name for name, ident in self.runs if ident == thread})


@pytest.fixture(params=["sqlite", "redis"])
def every_control(request, tmp_path, stub, openai_kw, monkeypatch):
    backend = request.param
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    SemanticCache().store("warm-up", "warm up the encoder", {"text": "ok"})  # loaded before timing
    client = ml.Client(model="gpt-4o", **openai_kw)
    client.set_cache(enabled=True, backend=backend, path=str(tmp_path / "cache.db"), url=url)
    client.set_semantic_cache(enabled=True)
    client.set_budget(daily_limit=100.0, backend=backend, path=str(tmp_path / "ledger.db"), url=url)
    client.set_rate_limit(requests_per_minute=100_000, backend="redis" if url else "memory", url=url)
    client.add_metric("words", lambda text: len(text.split()))
    client.query("Where is the nearest train station?")  # the semantic scope holds an entry: lookups embed

    log = ThreadLog(monkeypatch)
    log.wrap(SQLiteStorage, "run")
    log.wrap(RedisStorage, "run")
    for name in ("lookup", "probe", "store"):
        if hasattr(SemanticCache, name):  # probe: lookup keeping the vector (since one embedding per miss)
            log.wrap(SemanticCache, name)
    log.wrap(Embedder, "embed")
    model = get_embedder()._get_model()
    encode = model.encode

    def slow_encode(texts, *args, **kwargs):
        log.runs.append(("encode", threading.get_ident()))
        time.sleep(0.15)  # a busy model: on the loop, this would stall every other task
        return encode(texts, *args, **kwargs)

    monkeypatch.setattr(model, "encode", slow_encode)
    yield client, log, backend
    client.flush_traces()


def test_async_calls_with_every_control_never_block_the_loop(every_control, caplog):
    client, log, backend = every_control

    async def main() -> tuple[int, list]:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.1
        misses = await client.async_batch(QUESTIONS, max_concurrency=8, validate={"max_length": 10_000})
        hits = await client.async_batch(QUESTIONS, max_concurrency=8)  # exact hits
        return threading.get_ident(), misses + hits

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop_thread, answers = asyncio.run(main(), debug=True)
    assert all(isinstance(a, ml.Response) for a in answers), answers
    assert [a.cached for a in answers] == [None] * len(QUESTIONS) + ["exact"] * len(QUESTIONS)
    blocking = {"store", "encode"} | ({"run"} if backend == "sqlite" else set())
    assert {name for name, _ in log.runs} >= blocking, log.runs  # every kind ran (off the loop)
    assert log.on(loop_thread) == [], f"blocking work ran on the event loop: {log.on(loop_thread)}"
    slow = [r.getMessage() for r in caplog.records if "Executing" in r.getMessage()]
    assert slow == [], "\n".join(slow)
    assert client.budget_status()["spent"] > 0  # settled (off the loop)


def test_a_models_first_token_count_loads_its_tokenizer_off_the_loop(stub, openai_kw, tmp_path, monkeypatch):
    """The first count with a model's tokenizer reads its vocabulary (~0.3 s for o200k): on the
    loop, that stalled every task of the batch. Later counts are cheap and may stay on it."""
    from mlflow_lite_plugin.core import pricing

    monkeypatch.setattr(pricing, "_loaded_tokenizers", set(), raising=False)  # as in a process that never counted
    log = ThreadLog(monkeypatch)
    log.wrap(pricing.Pricing, "count_tokens")
    client = ml.Client(model="gpt-4o", tracing=False, **openai_kw)
    client.set_budget(daily_limit=100.0, path=str(tmp_path / "ledger.db"))
    client.set_rate_limit(tokens_per_minute=10_000_000)

    async def main() -> int:
        await client.async_batch(QUESTIONS[:3], max_concurrency=3)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert log.runs, "the budget counted no tokens"
    assert log.runs[0][1] != loop_thread, "the tokenizer was loaded on the event loop"
    assert "openai/gpt-4o" in pricing._loaded_tokenizers


def test_a_traced_call_does_not_import_mlflow_pyfunc_on_the_calling_thread():
    """A call reads the pyfunc prediction context only if a prediction imported it: importing
    all of mlflow.pyfunc (~0.5 s) from the first traced call stalled its event loop. (MLflow's
    own trace export imports it later, on the trace writer's thread.)"""
    import os
    import subprocess
    import sys

    code = (
        "import sys, threading\n"
        "importers = []\n"
        "sys.addaudithook(lambda event, args: event == 'import' and args[0] == 'mlflow.pyfunc.context'"
        " and importers.append(threading.current_thread().name))\n"
        "import mlflow, mlflow_lite_plugin as ml\n"  # MLflow users have it loaded
        "r = ml.query('hello', model='lite/echo')\n"
        "ml.flush_traces()\n"
        "print(r.trace_id is not None, 'MainThread' in importers)\n"
    )
    uri = "sqlite:///" + os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pyfunc-import-{os.getpid()}.db")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr
