"""Served models: size limits (413/400 naming the limit), a deadline that stops work (provider
calls included) once the scoring server has answered 504, and single flight (identical calls in
flight at once make one provider call, in one process and across processes sharing Redis)."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.core.deadline import DeadlineExceededError
from mlflow_lite_plugin.testing import StubLLMServer

from tests.flavor.test_serve import start_server, stop_server
from tests.helpers import KEY

PROMPT = "Answer: {question}"


def chat_requests(stub: StubLLMServer) -> list:
    return stub.requests_to("/chat/completions")


def cached_client(stub: StubLLMServer, **cache) -> ml.Client:
    client = ml.Client("openai/gpt-4o", api_base=stub.openai_base, api_key=KEY, tracing=False)
    client.set_cache(**cache)
    client.query("warm up LiteLLM", cache=False)  # its first call imports and sets up for seconds
    stub.reset()
    return client


# -- single flight --


def test_a_batch_of_1000_rows_with_10_prompts_makes_10_provider_calls(stub: StubLLMServer, default_client):
    stub.latency = 0.05  # the first answers are still in flight when their duplicates start
    default_client.defaults.update(api_base=stub.openai_base, api_key=KEY)
    default_client.set_tracing(False)
    ml.set_cache(enabled=True)
    ml.query("warm up LiteLLM", model="openai/gpt-4o", cache=False)
    stub.reset()

    prompts = [f"What is {i % 10} squared?" for i in range(1000)]
    results = ml.batch(prompts, model="openai/gpt-4o", max_concurrency=16)

    assert len(chat_requests(stub)) == 10
    asked = collections.Counter(r.body["messages"][-1]["content"] for r in chat_requests(stub))
    assert asked == dict.fromkeys(set(prompts), 1)
    assert [r.text for r in results] == [f"Stub answer from gpt-4o: {p}" for p in prompts]
    paid = [r for r in results if r.cached is None]
    assert len(paid) == 10 and all(r.cost > 0 for r in paid)
    # The others did not pay: exact hits, whether they waited for the leader or came after it.
    assert all(r.cached == "exact" and r.cost == 0.0 for r in results if r.cached is not None)
    assert ml.cache_stats()["by_kind"]["exact"]["hits"] == 990


def test_threads_coalesce_too(stub: StubLLMServer):
    stub.latency = 0.05
    client = cached_client(stub)
    prompts = [f"Is {i % 10} prime?" for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: client.query(p), prompts))
    assert len(chat_requests(stub)) == 10
    assert [r.text for r in results] == [f"Stub answer from gpt-4o: {p}" for p in prompts]


def test_a_failed_leader_hands_its_waiters_no_error(stub: StubLLMServer):
    """The leader's (non-retried) 400 is its own: each waiter then makes its own call."""
    client = cached_client(stub)
    stub.inject(status=400, delay=0.5, times=1)  # the leader's request fails, slowly
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(client.query, "Same question") for _ in range(5)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60))
            except ml.ProviderBadRequestError as error:
                outcomes.append(error)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 1, outcomes
    assert all(o.text == "Stub answer from gpt-4o: Same question" for o in outcomes if not isinstance(o, Exception))
    assert len(chat_requests(stub)) == 5  # the leader's, then one each for the 4 waiters


def test_streams_and_uncached_calls_do_not_coalesce(stub: StubLLMServer):
    stub.latency = 0.3
    client = cached_client(stub)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        uncached = list(pool.map(lambda _: client.query("No cache", cache=False), range(2)))
        streamed = list(pool.map(lambda _: "".join(client.stream("A stream")), range(2)))
    assert len(chat_requests(stub)) == 4
    assert [r.cached for r in uncached] == [None, None] and len(set(streamed)) == 1


_REPLICA = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import mlflow_lite_plugin as ml

    api_base, key, redis_url, namespace, workdir, name = sys.argv[1:]
    client = ml.Client("openai/gpt-4o", api_base=api_base, api_key=key, tracing=False)
    client.set_cache(backend="redis", url=redis_url, ttl=600)
    client.query("warm up LiteLLM", cache=False)
    Path(workdir, name + ".ready").touch()
    while not Path(workdir, "go").exists():
        time.sleep(0.01)
    questions = [f"Replica question {i % 10}" for i in range(100)]
    results = client.batch(questions, namespace=namespace, max_concurrency=16)
    print(json.dumps([
        getattr(r, "cached", None) or ("error" if isinstance(r, Exception) else "paid") for r in results
    ]))
    """
)


def test_two_replicas_sharing_redis_make_one_call_per_prompt(stub: StubLLMServer, redis_url):
    """Two clients (each its own Redis connection and its own in-process flights, as two replicas
    have) take turns through the Redis lock: one provider call per prompt between them."""
    stub.latency = 0.3
    namespace = uuid.uuid4().hex
    replicas = [cached_client(stub, backend="redis", url=redis_url, ttl=600) for _ in range(2)]
    prompts = [f"Shared question {i % 5}" for i in range(40)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(r.batch, prompts, namespace=namespace, max_concurrency=8) for r in replicas]
        results = [item for run in runs for item in run.result(timeout=60)]
    assert len(chat_requests(stub)) == 5
    assert [r.text for r in results] == [f"Stub answer from gpt-4o: {p}" for p in prompts * 2]
    assert sum(r.cached is None for r in results) == 5


@pytest.mark.slow
def test_two_processes_sharing_redis_make_one_call_per_prompt(stub: StubLLMServer, redis_url, tmp_path: Path):
    stub.latency = 0.3  # every first call is still in flight when the other replica asks
    namespace = uuid.uuid4().hex  # keys of their own in the shared Redis
    script = tmp_path / "replica.py"
    script.write_text(_REPLICA)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), stub.openai_base, KEY, redis_url, namespace, str(tmp_path), name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for name in ("a", "b")
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"{n}.ready").exists() for n in "ab"):
            alive = all(p.poll() is None for p in procs)
            assert time.monotonic() < deadline and alive, [p.communicate() for p in procs]
            time.sleep(0.05)
        stub.reset()
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    kinds = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    asked = collections.Counter(r.body["messages"][-1]["content"] for r in chat_requests(stub))
    assert len(chat_requests(stub)) == 10, asked
    assert sum(k.count("paid") for k in kinds) == 10 and "error" not in kinds[0] + kinds[1]


# -- limits and the deadline, in process --


def _save(tmp_path: Path, stub: StubLLMServer, **settings) -> str:
    path = tmp_path / f"bot-{uuid.uuid4().hex[:6]}"
    ml.save_model(path, model="gpt-4o", prompt=PROMPT, params={"api_base": stub.openai_base}, **settings)
    return str(path)


def test_a_row_over_the_row_limit_is_a_400_naming_it(stub: StubLLMServer, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    bot = mlflow.pyfunc.load_model(_save(tmp_path, stub, serving={"max_row_chars": 1000}))
    with pytest.raises(MlflowException, match=r"row 1: 1001 characters .*max_row_chars=1000") as caught:
        bot.predict(pd.DataFrame({"question": ["short", "x" * 1001]}))
    assert caught.value.get_http_status_code() == 400
    assert chat_requests(stub) == []  # refused before any row was sent

    monkeypatch.setenv("MLFLOW_LITE_MAX_ROW_CHARS", "2000")  # the serving host's setting wins
    bot = mlflow.pyfunc.load_model(_save(tmp_path, stub, serving={"max_row_chars": 1000}))
    assert len(bot.predict(pd.DataFrame({"question": ["x" * 1001]}))) == 1


def test_bad_serving_settings_fail_at_save_and_load(stub: StubLLMServer, tmp_path: Path, monkeypatch):
    for bad, named in [({"max_row_chars": 0}, "serving.max_row_chars"), ({"timeout": "soon"}, "serving.timeout"),
                       ({"max_bytes": 5}, "max_bytes"), ("big", "serving must be a dict")]:
        with pytest.raises(MlflowException, match=named):
            _save(tmp_path, stub, serving=bad)
    path = _save(tmp_path, stub)
    monkeypatch.setenv("MLFLOW_LITE_MAX_REQUEST_BYTES", "lots")
    with pytest.raises(MlflowException, match="MLFLOW_LITE_MAX_REQUEST_BYTES must be a positive integer, got 'lots'"):
        mlflow.pyfunc.load_model(path)


def test_a_single_row_makes_no_provider_call_after_its_deadline(stub: StubLLMServer, tmp_path: Path, monkeypatch):
    """A 1 s deadline and a provider slower than that: the attempt is abandoned at the deadline and
    none of its retries is started."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    app = ml.flavor.load_model(_save(tmp_path, stub, serving={"timeout": 1}, num_retries=3))
    app.predict(pd.DataFrame({"question": ["warm up"]}))
    stub.reset()
    stub.latency = 3.0
    started = time.monotonic()
    rows = app.predict(pd.DataFrame({"question": ["Slow?"]}), params={"return_details": True})
    assert time.monotonic() - started < 2.5
    assert rows["error"][0].startswith(DeadlineExceededError.__name__)
    time.sleep(1.5)
    assert len(chat_requests(stub)) == 1
    with pytest.raises(MlflowException) as caught:
        app.predict(pd.DataFrame({"question": ["Slow again?"]}))
    assert caught.value.get_http_status_code() == 504


# -- a real scoring server --


@pytest.fixture(scope="module")
def limited_server(stub_server: StubLLMServer, tmp_path_factory: pytest.TempPathFactory):
    """``mlflow models serve`` with small limits set by the serving host's environment and a 4 s
    request timeout."""
    workdir = tmp_path_factory.mktemp("limited-serve")
    path = workdir / "bot"
    ml.save_model(path, model="gpt-4o", prompt=PROMPT, params={"api_base": stub_server.openai_base})
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.update(OPENAI_API_KEY=KEY, MLFLOW_LITE_MAX_REQUEST_BYTES="20000", MLFLOW_LITE_MAX_ROW_CHARS="5000",
               MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT="4")
    served = start_server(str(path), workdir, env)
    yield served
    stop_server(served)


def _rows(*questions: str) -> dict:
    return {"dataframe_records": [{"question": q} for q in questions]}


@pytest.mark.slow
def test_served_size_limits_answer_413_and_400_naming_the_limit(limited_server, stub: StubLLMServer):
    response = limited_server.post(_rows(*["y" * 4000] * 6))  # 24,000 bytes of values
    assert response.status_code == 413, limited_server.explain(response)
    assert "max_request_bytes=20000" in response.text and "MLFLOW_LITE_MAX_REQUEST_BYTES" in response.text

    response = limited_server.post(_rows("fine", "z" * 6000))
    assert response.status_code == 400, limited_server.explain(response)
    assert "row 1: 6000 characters" in response.text and "max_row_chars=5000" in response.text
    assert chat_requests(stub) == []
    answers = limited_server.predictions(_rows("Within the limits?"))
    assert answers == ["Stub answer from gpt-4o: Answer: Within the limits?"]


@pytest.mark.slow
def test_served_work_stops_at_the_request_deadline(limited_server, stub: StubLLMServer):
    """80 rows at 1 s each, 8 at a time, is 10 s of work; the server answers 504 at 4 s, and from
    then on the model starts no provider request (it used to go on through all 80 rows)."""
    limited_server.predictions(_rows("warm up"))
    stub.reset()
    stub.latency = 1.0
    started = time.monotonic()
    response = limited_server.post(_rows(*[f"Slow question {i}" for i in range(80)]))
    assert response.status_code == 504, limited_server.explain(response)
    assert time.monotonic() - started < 10
    time.sleep(0.5)  # requests already sent when the deadline passed reach the stub
    sent = len(chat_requests(stub))
    time.sleep(3)
    assert len(chat_requests(stub)) == sent <= 40, "the model kept calling the provider after its 504"
    assert requests.get(f"{limited_server.url}/ping", timeout=5).status_code == 200
