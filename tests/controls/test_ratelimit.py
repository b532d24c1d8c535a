"""Rate limits: no window over the limit, fair queueing, threads + asyncio share one limit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import mlflow_lite_plugin as ml

WINDOW = 1.0  # seconds: limits of N per minute are checked as N/60 per second, to run in seconds
JITTER = 0.03  # sleep() wakes a little late; a window is checked this much shorter


class Admissions(ml.Stage):
    """Records when each call passed the rate limiter (it sits right after it)."""

    name, order = "admissions", 460

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prompts: list[str] = []
        self._lock = threading.Lock()

    def before(self, call):
        with self._lock:
            self.times.append(time.monotonic())
            self.prompts.append(call.request.prompt_text)


def _limited_client(**limit) -> tuple[ml.Client, Admissions]:
    client = ml.Client(model="lite/echo", tracing=False)
    client.set_rate_limit(**limit)
    admissions = Admissions()
    client.add_stage(admissions)
    return client, admissions


def _max_in_any_window(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + WINDOW - JITTER) for start in times)


def test_threads_never_exceed_the_limit_and_saturate_it():
    client, admissions = _limited_client(requests_per_minute=600)  # 10 per 1 s window
    threads = [threading.Thread(target=lambda: [client.query(f"q{i}") for i in range(3)]) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admissions.times) == 48
    assert _max_in_any_window(admissions.times) <= 10
    # saturated: calls are admitted at the limit's rate, evenly spaced
    times = sorted(admissions.times)
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate == pytest.approx(10 / WINDOW, rel=0.10)


async def test_asyncio_and_threads_share_one_limit():
    client, admissions = _limited_client(requests_per_minute=600)
    thread = threading.Thread(target=lambda: [client.query(f"thread {i}") for i in range(10)])
    thread.start()
    await asyncio.gather(*(client.aquery(f"task {i}") for i in range(20)))
    thread.join()
    assert len(admissions.times) == 30
    assert _max_in_any_window(admissions.times) <= 10


async def test_waiting_does_not_block_the_event_loop():
    client, _ = _limited_client(requests_per_minute=60)  # 1 per window
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.gather(client.aquery("first"), client.aquery("second"))
    task.cancel()
    assert ticks >= 10  # the loop kept running while the second call waited ~1 s


def test_waiting_callers_are_served_in_arrival_order():
    client, admissions = _limited_client(requests_per_minute=60)  # 1 per window
    client.query("warm up")  # fills the window
    threads = []
    for i in range(4):
        threads.append(threading.Thread(target=client.query, args=(f"caller {i}",)))
        threads[-1].start()
        time.sleep(0.05)  # arrive in a known order
    for t in threads:
        t.join()
    assert admissions.prompts[1:] == [f"caller {i}" for i in range(4)]


def test_max_wait_raises_before_the_provider(stub, openai_kw):
    client = ml.Client(model="gpt-4o", tracing=False, **openai_kw)
    client.set_rate_limit(requests_per_minute=1, max_wait=0.5)
    client.query("first")
    started = time.monotonic()
    with pytest.raises(ml.RateLimitExceededError, match="max_wait") as info:
        client.query("second")
    assert time.monotonic() - started < 0.5  # refused at once, not after waiting
    assert info.value.wait > 0.5
    assert len(stub.requests) == 1


def test_per_model_limits(stub, openai_kw):
    client = ml.Client(tracing=False, **openai_kw)
    client.set_rate_limit(requests_per_minute=1, model="gpt-4o", max_wait=0.1)
    client.query("a", model="gpt-4o")
    for i in range(3):
        client.query(f"unlimited {i}", model="gpt-4o-mini")  # other models do not wait
    with pytest.raises(ml.RateLimitExceededError):
        client.query("b", model="gpt-4o")


def test_tokens_per_minute():
    client, admissions = _limited_client(tokens_per_minute=60 * 100)  # 100 tokens per second
    prompts = [f"token heavy {i}" for i in range(3)]
    for prompt in prompts:
        client.query(prompt, max_tokens=60)
    tokens = client.count_tokens([{"role": "user", "content": prompts[0]}], model="lite/echo") + 60
    times = sorted(admissions.times)
    # each call occupies its tokens / rate: the next one starts that much later
    assert times[1] - times[0] >= tokens / 100 - JITTER and times[2] - times[1] >= tokens / 100 - JITTER


def test_cache_hits_never_wait():
    client, admissions = _limited_client(requests_per_minute=60, max_wait=0.1)
    client.set_cache(enabled=True)
    client.query("cached question")
    hits = [client.query("cached question") for _ in range(5)]
    assert all(h.cached == "exact" for h in hits)
    assert len(admissions.times) == 1


def test_remove_limit_and_bad_values():
    client, _ = _limited_client(requests_per_minute=60, max_wait=0.1)
    client.query("one")
    client.set_rate_limit()  # no limits: removed
    client.query("two")
    assert client.pipeline.get("rate_limit") is None
    with pytest.raises(ml.ArgumentError, match="requests_per_minute"):
        client.set_rate_limit(requests_per_minute=0)


def test_one_liner_seed_api(default_client):
    ml.set_rate_limit(requests_per_minute=10)
    assert ml.query(model="lite/echo", prompt="limited").text == "Echo: limited"
    # the limit is on the default client: at 10/min a slot is 6 s after the last, so a caller that may
    # wait 0.5 s is refused by the first or (if re-setting the limit starts it afresh) second next call
    ml.set_rate_limit(requests_per_minute=10, max_wait=0.5)
    with pytest.raises(ml.RateLimitExceededError, match=r"max_wait=0\.5") as info:
        for _ in range(2):
            ml.query(model="lite/echo", prompt="limited again")
    assert 5 < info.value.wait <= 6


def test_set_fallbacks(stub, openai_kw):
    client = ml.Client(tracing=False, **openai_kw)
    client.set_fallbacks(["gpt-4o-mini"], num_retries=0)
    stub.inject(status=500, model="gpt-4o")
    assert client.query("fallback by default", model="gpt-4o").model == "openai/gpt-4o-mini"
    with pytest.raises(ml.ArgumentError, match="fallbacks"):
        client.set_fallbacks("gpt-4o-mini")


# -- one limit for several processes, through Redis --


@pytest.mark.slow
def test_redis_limit_is_shared_by_processes(redis_url):
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import json, threading, time, mlflow_lite_plugin as ml

        class Admissions(ml.Stage):
            name, order = "admissions", 460
            times = []
            def before(self, call):
                self.times.append(time.time())  # wall clock: comparable across processes

        ml.Client(model="lite/echo", tracing=False).query("warm up")  # import LiteLLM before the clock
        client = ml.Client(model="lite/echo", tracing=False)
        client.set_rate_limit(requests_per_minute=600, backend="redis", url={redis_url!r})
        stage = Admissions()
        client.add_stage(stage)
        time.sleep(max(0.0, START - time.time()))  # all four saturate the limit together
        for i in range(12):
            client.query(f"process call {{i}}")
        print(json.dumps(stage.times))
        """
    )
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    code = f"START = {time.time() + 25}\n" + code
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outputs]
    times = sorted(t for out, _ in outputs for t in json.loads(out.strip().splitlines()[-1]))
    assert len(times) == 48
    assert _max_in_any_window(times) <= 10  # 10/s across all four processes together
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate == pytest.approx(10 / WINDOW, rel=0.10)


def test_redis_max_wait_and_settings(redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    client = ml.Client(model="lite/echo", tracing=False)
    client.set_rate_limit(requests_per_minute=1, backend="redis", url=redis_url, max_wait=0.2)
    client.query("first")
    other_replica = ml.Client(model="lite/echo", tracing=False)
    other_replica.set_rate_limit(requests_per_minute=1, backend="redis", url=redis_url, max_wait=0.2)
    with pytest.raises(ml.RateLimitExceededError):
        other_replica.query("second")  # the first replica's call counts here too
    with pytest.raises(ml.ArgumentError, match="url"):
        client.set_rate_limit(requests_per_minute=1, backend="redis")
