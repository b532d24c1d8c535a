"""Budget reservations: waiting for the calls in flight instead of refusing (a saturated budget
is spent to >= 90% of its limit, never over), and leases renewed by the live call (a killed
process's reservation stops blocking after the TTL; a slow live call keeps its own)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.controls.budget.stage import Budget, BudgetExceededError, BudgetStage, SQLiteLedger

from tests.controls.test_budget import ledger_factory  # noqa: F401  (a fixture: SQLite and Redis ledgers on one storage)

PER_MILLION = 1000.0  # $0.001 per token, in and out
STUB_MODEL = "openai/budget-wait-model"


@pytest.fixture
def backend(request, ledger_factory):
    """(name, make_ledger(**kw)): ledgers of one backend on the same storage, like processes."""
    return request.node.callspec.params["ledger_factory"], ledger_factory


def _priced_client() -> ml.Client:
    c = ml.Client(tracing=False)
    c.set_model_price(STUB_MODEL, input_per_million=PER_MILLION, output_per_million=PER_MILLION)
    return c


class _Peek(ml.Stage):
    """Right after the budget stage: what the call reserved (its worst case)."""

    name, order = "peek", 430

    def __init__(self, stage: BudgetStage):
        self.stage, self.worst = stage, 0.0

    def before(self, call):
        self.worst = call.state[self.stage.name].reservation.amount


def _race(ask, threads: int = 48) -> tuple[list[ml.Response], list[BudgetExceededError], list[BaseException]]:
    answers, refusals, errors = [], [], []
    barrier = threading.Barrier(threads)

    def one() -> None:
        barrier.wait()
        try:
            answers.append(ask())
        except BudgetExceededError as error:
            refusals.append(error)
        except Exception as error:  # reported by the caller's assertion
            errors.append(error)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    return answers, refusals, errors


# -- waiting for the calls in flight --


@pytest.mark.parametrize("ledger_backend", ["sqlite", "redis"])
def test_48_threads_spend_a_saturated_budget_to_90_percent_never_over(
    ledger_backend, tmp_path, stub, openai_kw, request
):
    """The limit is worth 10 worst cases; answers cost ~30% of theirs. Refusing whenever the
    reservations in flight fill the limit spent ~30% of it; waiting for them spends >= 90%."""
    stub.latency = 0.05  # calls overlap
    stub.reply = lambda model, messages: " ".join(["word"] * 30)
    run = uuid.uuid4().hex  # the bucket of this test only (Redis is shared by the session)
    ask_kw = dict(model=STUB_MODEL, prompt="hi", max_tokens=100, tags={"run": run}, **openai_kw)
    if ledger_backend == "sqlite":
        where = {"path": str(tmp_path / "b.db")}
    else:
        where = {"backend": "redis", "url": request.getfixturevalue("redis_url")}

    probe = _priced_client()  # what one call reserves and costs, on a throwaway ledger
    probe.add_stage(probe_stage := BudgetStage(Budget(daily_limit=100.0), SQLiteLedger(tmp_path / "probe.db")))
    probe.add_stage(peek := _Peek(probe_stage))
    actual = probe.query(**ask_kw).cost
    worst = peek.worst
    assert 0.2 * worst < actual < 0.5 * worst  # answers cost much less than their worst case
    stub.reset()

    limit = 10 * worst
    c = _priced_client()
    c.set_budget(daily_limit=limit, scope="tag:run", **where)  # waits up to 30 s by default
    stage = c.pipeline.get("budget")
    answers, refusals, errors = _race(lambda: c.query(**ask_kw))

    assert not errors, errors[:3]
    assert len(answers) + len(refusals) == 48 and refusals
    assert len(stub.requests) == len(answers)  # refused calls never reached the provider
    status = stage.status(tag=run)
    assert status["spent"] == pytest.approx(sum(r.cost for r in answers))
    assert status["reserved"] == 0.0
    assert status["spent"] <= limit + 1e-9  # zero overspend
    assert status["spent"] >= 0.9 * limit - 1e-9  # the limit was used, not refused away
    # Every refusal came once the spend alone left no room: none timed out waiting.
    assert all(e.spent + e.requested > e.limit for e in refusals)


def test_waits_for_a_settle_in_another_thread_and_refuses_at_once_when_spent_forbids(backend):
    _, make = backend
    ledger = make()
    in_flight = ledger.reserve("global", "p", 0.6, 1.0)

    def settle_soon() -> None:
        time.sleep(0.3)
        ledger.settle(in_flight, 0.2)

    threading.Thread(target=settle_soon).start()
    waited = ledger.reserve_many([("global", "p", 1.0)], 0.6, max_wait=30)  # fits once it settles
    assert waited.waited > 0
    assert (ledger.spent("global", "p"), ledger.reserved("global", "p")) == (pytest.approx(0.2), pytest.approx(0.6))

    # $0.20 spent + $0.90 > $1.00: no settle can make room, so no waiting.
    with pytest.raises(BudgetExceededError) as hopeless:
        ledger.reserve_many([("global", "p", 1.0)], 0.9, max_wait=30)
    assert hopeless.value.waited == 0.0
    # Only the reservation in flight stands in the way, but it is never settled: refused at max_wait.
    with pytest.raises(BudgetExceededError, match=r"after waiting \d+\.\ds for them to settle") as late:
        ledger.reserve_many([("global", "p", 1.0)], 0.5, max_wait=0.3)
    assert late.value.waited >= 0.3
    # The default of a ledger is not to wait.
    with pytest.raises(BudgetExceededError):
        ledger.reserve("global", "p", 0.5, 1.0)
    assert ledger.reserved("global", "p") == pytest.approx(0.6)


def test_the_bucket_spend_forbids_is_reported_first(backend):
    """Of two periods, the one whose spend alone leaves no room is named (and not waited for),
    even if the other is only full of reservations."""
    _, make = backend
    ledger = make()
    ledger.settle(ledger.reserve("global", "month", 0.9, 1.0), 0.9)
    ledger.reserve("global", "day", 0.5, 1.0)
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve_many([("global", "day", 1.0), ("global", "month", 1.0)], 0.2, max_wait=30)
    assert (info.value.period_key, info.value.waited) == ("month", 0.0)


_SETTLER = textwrap.dedent(
    """
    import sys, time
    from mlflow_lite_plugin.controls.budget.stage import RedisLedger, SQLiteLedger

    backend, where, prefix = sys.argv[1:4]
    ledger = SQLiteLedger(where) if backend == "sqlite" else RedisLedger(where, prefix=prefix)
    held = ledger.reserve("global", "p", 0.6, 1.0)
    print("held", flush=True)
    sys.stdin.readline()  # the parent is waiting on it now
    time.sleep(0.3)
    ledger.settle(held, 0.1)
    print("settled", flush=True)
    """
)


def _spawn(script: str, backend: str, ledger, *args: str) -> subprocess.Popen:
    where = str(ledger.path) if backend == "sqlite" else ledger.url
    prefix = "" if backend == "sqlite" else ledger.prefix
    proc = subprocess.Popen(
        [sys.executable, "-c", script, backend, where, prefix, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if line.strip() != "held":
        proc.kill()
        raise AssertionError(f"the child did not reserve: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


def test_waits_for_a_settle_in_another_process(backend):
    name, make = backend
    ledger = make()
    child = _spawn(_SETTLER, name, ledger)
    try:
        child.stdin.write("go\n")
        child.stdin.flush()
        reservation = ledger.reserve_many([("global", "p", 1.0)], 0.6, max_wait=30)
        assert reservation.waited > 0
        assert child.stdout.readline().strip() == "settled"
    finally:
        child.kill()
        child.wait(10)
    assert ledger.spent("global", "p") == pytest.approx(0.1)


async def test_async_waiting_does_not_block_the_event_loop(tmp_path, stub, openai_kw):
    """The waiting call gets in only if the loop keeps running: the settle that makes room is
    another coroutine on the same loop."""
    ledger = SQLiteLedger(tmp_path / "b.db")
    c = _priced_client()
    c.add_stage(stage := BudgetStage(Budget(daily_limit=1.0), ledger))  # waits up to 30 s by default
    c.add_stage(peek := _Peek(stage))
    period = stage.periods()[0][0].key
    first = await c.aquery(model=STUB_MODEL, prompt="hi", max_tokens=10, **openai_kw)
    room = 1.0 - first.cost
    blocker = ledger.reserve("global", period, room - peek.worst / 2, 1.0)  # leaves half a call free

    async def settle_soon() -> None:
        await asyncio.sleep(0.3)
        ledger.release(blocker)

    answer, _ = await asyncio.gather(
        c.aquery(model=STUB_MODEL, prompt="hi", max_tokens=10, **openai_kw), settle_soon()
    )
    assert answer.text
    assert stage.status()["spent"] == pytest.approx(first.cost + answer.cost)
    assert stage.status()["reserved"] == 0.0


# -- leases renewed by the live call --


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from mlflow_lite_plugin.controls.budget.stage import RedisLedger, SQLiteLedger

    backend, where, prefix, ttl = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    ledger = (
        SQLiteLedger(where, reservation_ttl=ttl)
        if backend == "sqlite"
        else RedisLedger(where, prefix=prefix, reservation_ttl=ttl)
    )
    ledger.reserve_many([("global", "p", 1.0)], 0.6, lease=True)  # a call in flight, never settled
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_process_stops_blocking_after_the_ttl(backend):
    name, make = backend
    ttl = 1.0
    ledger = make(reservation_ttl=ttl)
    child = _spawn(_HOLDER, name, ledger, str(ttl))
    try:
        time.sleep(2 * ttl)  # alive: its lease is renewed past the TTL
        assert ledger.reserved("global", "p") == pytest.approx(0.6)
        with pytest.raises(BudgetExceededError):
            ledger.reserve("global", "p", 0.6, 1.0)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        time.sleep(ttl + 0.2)  # its last renewal was before the kill
        assert ledger.reserved("global", "p") == 0.0
        # Its money is free for the next call.
        reservation = ledger.reserve_many([("global", "p", 1.0)], 0.6, max_wait=30)
        assert ledger.reserved("global", "p") == pytest.approx(0.6)
        ledger.settle(reservation, 0.0)
    finally:
        child.kill()
        child.wait(10)


def test_a_slow_live_call_keeps_its_reservation_past_the_ttl(backend, stub, openai_kw):
    """The call takes twice the TTL: its lease is renewed meanwhile, so nobody else can spend the
    money it may still cost."""
    _, make = backend
    ttl = 1.0
    c = _priced_client()
    c.add_stage(stage := BudgetStage(Budget(daily_limit=1.0), make(reservation_ttl=ttl)))
    c.add_stage(peek := _Peek(stage))
    period = stage.periods()[0][0].key
    stub.latency = 2 * ttl
    slow = threading.Thread(target=lambda: c.query(model=STUB_MODEL, prompt="hi", max_tokens=10, **openai_kw))
    slow.start()
    try:
        deadline = time.monotonic() + 30
        while not stub.requests and time.monotonic() < deadline:  # the call has reserved, is in flight
            time.sleep(0.02)
        assert stub.requests
        time.sleep(1.5 * ttl)
        other = make(reservation_ttl=ttl)  # another process's view
        assert other.reserved("global", period) == pytest.approx(peek.worst)
        with pytest.raises(BudgetExceededError):
            other.reserve("global", period, 1.0 - peek.worst / 2, 1.0)
    finally:
        slow.join(30)
    status = stage.status()
    assert status["reserved"] == 0.0 and 0 < status["spent"] <= 1.0


def test_one_renewal_thread_per_process_not_one_per_call(backend):
    _, make = backend
    ledgers = [make(reservation_ttl=0.6) for _ in range(3)]
    held = [ledger.reserve_many([("global", "p", 100.0)], 0.1, lease=True) for ledger in ledgers for _ in range(10)]
    time.sleep(0.5)
    renewers = [t for t in threading.enumerate() if t.name == "mlflow-lite-budget-leases"]
    assert len(renewers) == 1
    time.sleep(0.6)  # past the TTL: all 30 renewed
    assert ledgers[0].reserved("global", "p") == pytest.approx(3.0)
    for i, reservation in enumerate(held):
        ledgers[i // 10].release(reservation)
    assert ledgers[0].reserved("global", "p") == 0.0


# -- settings --


def test_max_wait_is_validated_before_anything(tmp_path):
    c = ml.Client(tracing=False)
    for bad in (-1, "soon", True, float("nan"), float("inf")):
        with pytest.raises(ml.ArgumentError) as info:
            c.set_budget(daily_limit=1.0, max_wait=bad, backend="redis", url="redis://127.0.0.1:1/0")
        assert info.value.argument == "max_wait"
    with pytest.raises(ml.ArgumentError, match="max_wait"):
        Budget(daily_limit=1.0, max_wait=-0.5)
    with pytest.raises(ml.ArgumentError, match="max_wait"):  # the ledger checks it too
        SQLiteLedger(tmp_path / "b.db").reserve_many([("global", "p", 1.0)], 0.1, max_wait=-1)
    assert c.pipeline.get("budget") is None


def test_set_budget_defaults_and_explicit_max_wait(tmp_path):
    c = ml.Client(tracing=False)
    c.set_budget(daily_limit=10.0, path=str(tmp_path / "b.db"))  # as before: still works
    assert c.pipeline.get("budget").budget.max_wait == 30.0
    c.set_budget(daily_limit=10.0, path=str(tmp_path / "b.db"), max_wait=0)
    assert c.pipeline.get("budget").budget.max_wait == 0
    c.set_budget(daily_limit=10.0, path=str(tmp_path / "b.db"), max_wait=None)
    assert c.pipeline.get("budget").budget.max_wait is None


def test_waiting_stops_at_the_requests_deadline(tmp_path):
    """A served request answered 504 at its deadline must not keep a worker waiting for budget or
    rate-limit room: both waits are bounded by what is left of the deadline, not only max_wait."""
    from mlflow_lite_plugin.core import deadline

    ledger = SQLiteLedger(tmp_path / "ledger.db")
    c = _priced_client()
    stage = BudgetStage(Budget(daily_limit=1.0, max_wait=30), ledger)
    c.add_stage(stage)
    period, limit = stage.periods()[0]
    blocker = ledger.reserve("global", period.key, limit, limit)  # a call in flight that never settles
    with deadline.running(0.5):
        started = time.monotonic()
        with pytest.raises(BudgetExceededError) as refused:
            c.query(model=STUB_MODEL, prompt="hi", max_tokens=10, api_base="http://127.0.0.1:9", api_key="sk-x")
        took = time.monotonic() - started
    assert refused.value.waited > 0 and took < 10  # max_wait alone would have waited 30 s
    ledger.release(blocker)

    limited = ml.Client(model="lite/echo", tracing=False)
    limited.set_rate_limit(requests_per_minute=1, max_wait=30)
    limited.query("first")  # takes the only slot of this minute
    with deadline.running(0.5):
        started = time.monotonic()
        with pytest.raises(ml.RateLimitExceededError):
            limited.query("second")
    assert time.monotonic() - started < 10
