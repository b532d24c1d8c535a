"""Budgets: refusal before the provider, reserve/settle/release, no overspend across threads,
processes and hosts (SQLite and Redis ledgers), periods, time zones and scopes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.controls.budget.stage import (
    Budget,
    BudgetExceededError,
    BudgetLedgerError,
    BudgetStage,
    RedisLedger,
    SQLiteLedger,
    UnpricedModelError,
    budget_status,
    set_alert,
    set_budget,
    usd,
)

from tests.helpers import get_trace, start_redis

UTC = timezone.utc
PER_MILLION = 1000.0  # $0.001 per token, in and out: costs are easy to reason about
ECHO = "lite/echo"  # offline model (no HTTP), priced below so it costs money
STUB_MODEL = "openai/budget-model"


def _prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}:{{budget}}:"


@pytest.fixture(params=["sqlite", "redis"])
def ledger_factory(request, tmp_path):
    """Makes ledgers of one backend that share the same storage (like processes would)."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        return lambda **kw: SQLiteLedger(path, **kw)
    url, prefix = request.getfixturevalue("redis_url"), _prefix()
    return lambda **kw: RedisLedger(url, prefix=prefix, **kw)


def _client(tmp_path, budget: Budget, *, ledger=None, clock=None, tracing: bool = False, client=None):
    c = client or ml.Client(tracing=tracing)
    for model in (ECHO, STUB_MODEL, "openai/other-model"):
        c.set_model_price(model, input_per_million=PER_MILLION, output_per_million=PER_MILLION)
    stage = BudgetStage(budget, ledger if ledger is not None else SQLiteLedger(tmp_path / "budget.db"), clock=clock)
    c.add_stage(stage)
    return c, stage


def _echo(c: ml.Client, prompt: str = "hello world", **kw) -> ml.Response:
    return c.query(model=ECHO, prompt=prompt, max_tokens=10, **kw)


def _spend_until_refused(ask, limit_calls: int = 50):
    answers = []
    for _ in range(limit_calls):
        try:
            answers.append(ask())
        except BudgetExceededError as error:
            return answers, error
    raise AssertionError("the budget never refused a call")


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# -- refusal --


def test_refused_before_the_provider_is_called(client, stub, openai_kw, tmp_path):
    c, stage = _client(tmp_path, Budget(daily_limit=0.05), client=client)
    first = c.query(model=STUB_MODEL, prompt="hi", max_tokens=10, **openai_kw)
    assert first.cost and first.cost > 0
    stub.reset()
    with pytest.raises(BudgetExceededError) as info:
        c.query(model=STUB_MODEL, prompt="hi", max_tokens=1000, **openai_kw)  # up to ~$1: over the limit
    assert stub.requests == []  # refused before any HTTP request
    error = info.value
    assert isinstance(error, ml.MlflowLiteError)
    message = str(error)
    assert usd(first.cost) in message and "spent" in message  # what was spent
    assert "$0.05" in message  # the limit
    assert f"resets at {stage.periods()[0][0].end.isoformat()}" in message
    assert (error.spent, error.limit, error.period) == (pytest.approx(first.cost), 0.05, "daily")
    assert error.resets_at == stage.periods()[0][0].end
    assert stage.status()["reserved"] == 0.0  # a refusal holds nothing
    # The refusal is on the trace of the refused call.
    root = get_trace(error.trace_id).data.spans[0]
    events = {e.name: e.attributes for e in root.events}
    assert events["budget_exceeded"]["limit_usd"] == 0.05
    assert events["budget_exceeded"]["spent_usd"] == pytest.approx(first.cost)
    assert root.attributes["mlflow_lite.budget.refused"] is True
    assert "BudgetExceededError" in root.attributes["mlflow_lite.error"]
    # The allowed call carries what it reserved and was charged.
    ok = get_trace(first.trace_id).data.spans[0].attributes
    assert ok["mlflow_lite.budget.charged_usd"] == pytest.approx(first.cost)
    assert ok["mlflow_lite.budget.reserved_usd"] >= first.cost


def test_worst_case_uses_the_models_output_limit_without_max_tokens(tmp_path, stub, openai_kw):
    # gpt-4o can answer 16384 tokens: at its real price that is ~$0.16, more than a $0.10 limit.
    c = ml.Client(tracing=False)
    c.add_stage(BudgetStage(Budget(daily_limit=0.10), SQLiteLedger(tmp_path / "b.db")))
    with pytest.raises(BudgetExceededError):
        c.query(model="gpt-4o", prompt="hi", **openai_kw)
    assert c.query(model="gpt-4o", prompt="hi", max_tokens=100, **openai_kw).text  # bounded: fits
    assert len(stub.requests) == 1


def test_a_call_that_alone_exceeds_the_limit_is_refused_on_a_fresh_budget(tmp_path):
    c, _ = _client(tmp_path, Budget(daily_limit=0.001))
    with pytest.raises(BudgetExceededError, match=r"spent"):
        _echo(c)


# -- reserve, settle, release --


def test_settles_with_the_actual_cost(tmp_path):
    seen = {}

    class Peek(ml.Stage):
        name, order = "peek", 430  # right after the budget stage

        def before(self, call):
            seen["reserved"] = stage.ledger.reserved("global", stage.periods()[0][0].key)

    c, stage = _client(tmp_path, Budget(daily_limit=1.0))
    c.add_stage(Peek())
    r = _echo(c)
    worst = (r.prompt_tokens + 10) * PER_MILLION / 1e6
    assert seen["reserved"] >= worst - 1e-12 and seen["reserved"] > r.cost  # worst case held during the call
    status = stage.status()
    assert status["spent"] == pytest.approx(r.cost) and status["reserved"] == 0.0
    assert status["remaining"] == pytest.approx(1.0 - r.cost)


def test_released_on_error(tmp_path, stub, openai_kw):
    c, stage = _client(tmp_path, Budget(daily_limit=1.0))
    stub.inject(status=400)
    with pytest.raises(ml.ProviderBadRequestError):
        c.query(model=STUB_MODEL, prompt="hi", max_tokens=10, **openai_kw)
    assert (stage.status()["spent"], stage.status()["reserved"]) == (0.0, 0.0)


def test_answered_attempts_still_count_when_the_call_fails(tmp_path):
    charged = {}

    class FailsAfterAnswer(ml.Stage):
        name, order = "fails_after_answer", 600

        def after(self, call, response):
            charged["cost"] = call.spent
            raise RuntimeError("validation crashed")

    c, stage = _client(tmp_path, Budget(daily_limit=1.0))
    c.add_stage(FailsAfterAnswer())
    with pytest.raises(RuntimeError):
        _echo(c)
    assert charged["cost"] > 0
    assert stage.status()["spent"] == pytest.approx(charged["cost"]) and stage.status()["reserved"] == 0.0


def test_cache_hits_are_free(tmp_path):
    c, stage = _client(tmp_path, Budget(daily_limit=1.0))
    c.set_cache(enabled=True)
    first = _echo(c)
    for _ in range(3):
        assert _echo(c).cached == "exact"
    assert stage.status()["spent"] == pytest.approx(first.cost) and stage.status()["reserved"] == 0.0


def test_a_stream_closed_early_is_charged_for_what_it_streamed(tmp_path):
    c, stage = _client(tmp_path, Budget(daily_limit=1.0))
    with c.stream(model=ECHO, prompt="one two three four five six", max_tokens=10) as s:
        next(s)
    assert s.response.finish_reason == "cancelled" and s.response.cost > 0
    assert stage.status()["spent"] == pytest.approx(s.response.cost) and stage.status()["reserved"] == 0.0
    full = "".join(c.stream(model=ECHO, prompt="a full stream", max_tokens=10))
    assert full == "Echo: a full stream"
    assert stage.status()["reserved"] == 0.0


async def test_async_queries_are_budgeted(tmp_path):
    c, stage = _client(tmp_path, Budget(daily_limit=0.05))
    answers = []
    with pytest.raises(BudgetExceededError):
        for _ in range(10):
            answers.append(await c.aquery(model=ECHO, prompt="hello world", max_tokens=10))
    assert answers and stage.status()["spent"] == pytest.approx(sum(r.cost for r in answers))
    assert stage.status()["spent"] <= 0.05


# -- unknown prices --


def test_unpriced_model_is_refused_by_default(tmp_path, stub, openai_kw):
    c, _ = _client(tmp_path, Budget(daily_limit=1.0))
    with pytest.raises(UnpricedModelError, match="set_model_price"):
        c.query(model="openai/unpriced-model-xyz", prompt="hi", max_tokens=5, **openai_kw)
    assert stub.requests == []


def test_unpriced_model_allowed_when_configured(tmp_path, stub, openai_kw, caplog):
    c, stage = _client(tmp_path, Budget(daily_limit=1.0, on_unknown_price="allow"))
    with caplog.at_level("WARNING"):
        r = c.query(model="openai/unpriced-model-xyz", prompt="hi", max_tokens=5, **openai_kw)
        c.query(model="openai/unpriced-model-xyz", prompt="hi again", max_tokens=5, **openai_kw)
    assert r.cost is None and stage.status()["spent"] == 0.0
    assert caplog.text.count("Budget: no known price for model 'openai/unpriced-model-xyz'") == 1


# -- concurrency: threads, processes, hosts --


def test_ledger_reservations_are_atomic_across_threads(ledger_factory):
    """64 threads grab $0.10 from a $1.00 budget without settling: exactly 10 can win."""
    ledgers = [ledger_factory() for _ in range(4)]  # 4 connections/clients, like 4 processes
    wins, barrier = [], threading.Barrier(64)

    def grab(i: int) -> None:
        barrier.wait()
        with contextlib.suppress(BudgetExceededError):  # a loser: counted by its absence from wins
            wins.append(ledgers[i % 4].reserve("race", "p", 0.1, 1.0))

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 10
    assert ledgers[0].reserved("race", "p") == pytest.approx(1.0)
    for reservation in wins:
        ledgers[1].settle(reservation, 0.05)
    assert ledgers[2].spent("race", "p") == pytest.approx(0.5) and ledgers[2].reserved("race", "p") == 0.0


def test_64_threads_never_overspend(tmp_path, stub, openai_kw):
    stub.latency = 0.02  # calls overlap
    c, stage = _client(tmp_path, Budget(daily_limit=0.1))
    answers, refusals, errors = [], [], []
    barrier = threading.Barrier(64)

    def ask() -> None:
        barrier.wait()
        try:
            answers.append(c.query(model=STUB_MODEL, prompt="hi", max_tokens=16, **openai_kw))
        except BudgetExceededError as error:
            refusals.append(error)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(answers) + len(refusals) == 64 and answers and refusals
    assert len(stub.requests) == len(answers)  # refused calls never reached the provider
    status = stage.status()
    assert status["spent"] == pytest.approx(sum(r.cost for r in answers))
    assert status["spent"] <= 0.1 and status["reserved"] == 0.0


_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, os, pathlib, sys, time
    import mlflow_lite_plugin as ml
    from mlflow_lite_plugin.controls.budget.stage import (
        Budget,
        BudgetExceededError,
        BudgetStage,
        RedisLedger,
        SQLiteLedger,
    )
    from mlflow_lite_plugin.core.model_names import litellm_module

    backend, where, prefix, barrier = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
    ledger = lambda: SQLiteLedger(where) if backend == "sqlite" else RedisLedger(where, prefix=prefix)
    client = ml.Client(tracing=False)
    client.set_model_price("lite/echo", input_per_million=1000, output_per_million=1000)
    client.add_stage(BudgetStage(Budget(daily_limit=0.2), ledger()))
    litellm_module(); client.count_tokens("warm up", model="lite/echo")  # import before the race
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < 4 and time.time() < deadline:
        time.sleep(0.01)

    raw, took = ledger(), 0  # the ledger alone: reserve $0.10 of $1.00 until refused, never settle
    while True:
        try:
            raw.reserve("race", "p", 0.1, 1.0)
            took += 1
        except BudgetExceededError:
            break
    ok, spent = 0, 0.0  # queries through the budget stage
    for i in range(12):
        try:
            spent += client.query(model="lite/echo", prompt=f"hello from {os.getpid()}", max_tokens=10).cost
            ok += 1
        except BudgetExceededError:
            pass
    print(json.dumps({"took": took, "ok": ok, "spent": spent}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_four_processes_never_overspend(backend, tmp_path, request):
    if backend == "sqlite":
        where, prefix = str(tmp_path / "shared.db"), ""
        check = SQLiteLedger(where)
    else:
        where, prefix = request.getfixturevalue("redis_url"), _prefix()
        check = RedisLedger(where, prefix=prefix)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_SCRIPT, backend, where, prefix, str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum(r["took"] for r in results) == 10  # exactly $1.00 of $0.10 reservations, no more
    status = BudgetStage(Budget(daily_limit=0.2), check).status()
    assert status["spent"] == pytest.approx(sum(r["spent"] for r in results))
    assert status["spent"] <= 0.2 and status["reserved"] == 0.0
    assert 0 < sum(r["ok"] for r in results) < 48  # some calls ran, the limit refused others


# -- ledgers: restarts, stale reservations, outages --


def test_spend_survives_a_restart(tmp_path):
    c, _ = _client(tmp_path, Budget(daily_limit=1.0))
    r = _echo(c)
    _, restarted = _client(tmp_path, Budget(daily_limit=1.0))
    assert restarted.status()["spent"] == pytest.approx(r.cost)


def test_stale_reservations_expire(ledger_factory):
    ledger = ledger_factory(reservation_ttl=0.3)
    abandoned = ledger.reserve("global", "p", 0.9, 1.0)  # its process "dies": never settled
    with pytest.raises(BudgetExceededError):
        ledger.reserve("global", "p", 0.2, 1.0)
    time.sleep(0.4)
    assert ledger.reserved("global", "p") == 0.0
    ledger.settle(ledger.reserve("global", "p", 0.2, 1.0), 0.1)
    ledger.settle(abandoned, 0.5)  # a late settle still records what was paid
    assert ledger.spent("global", "p") == pytest.approx(0.6)


def test_alert_marks_are_recorded_once(ledger_factory):
    a, b = ledger_factory(), ledger_factory()
    assert a.mark_alert_fired("global", "p", 0.8) is True
    assert b.mark_alert_fired("global", "p", 0.8) is False
    assert b.mark_alert_fired("global", "p", 0.5) is True
    assert b.mark_alert_fired("global", "q", 0.8) is True


def test_ledger_outage_refuses_calls(tmp_path):
    url, proc = start_redis(tmp_path)
    c, _ = _client(tmp_path, Budget(daily_limit=1.0), ledger=RedisLedger(url, prefix=_prefix()))
    assert _echo(c).text
    proc.kill()
    proc.wait(10)
    with pytest.raises(BudgetLedgerError, match="refused"):
        _echo(c)


# -- periods and time zones --


def test_daily_budget_resets_at_midnight(tmp_path):
    clock = Clock(datetime(2024, 5, 1, 23, 59, tzinfo=UTC))
    c, stage = _client(tmp_path, Budget(daily_limit=0.05), clock=clock)
    answers, error = _spend_until_refused(lambda: _echo(c))
    assert answers and error.resets_at == datetime(2024, 5, 2, tzinfo=UTC)
    assert "2024-05-02T00:00:00+00:00" in str(error)
    clock.now = datetime(2024, 5, 2, 0, 0, 1, tzinfo=UTC)
    fresh = _echo(c)
    status = stage.status()
    assert status["period"] == "daily" and status["spent"] == pytest.approx(fresh.cost)
    assert (status["period_start"], status["resets_at"]) == ("2024-05-02T00:00:00+00:00", "2024-05-03T00:00:00+00:00")
    yesterday = stage.status(now=datetime(2024, 5, 1, 12, tzinfo=UTC))
    assert yesterday["spent"] == pytest.approx(sum(r.cost for r in answers))


def test_timezone_sets_the_day(tmp_path):
    clock = Clock(datetime(2024, 5, 2, 3, 0, tzinfo=UTC))  # 23:00 on May 1st in New York (EDT)
    c, stage = _client(tmp_path, Budget(daily_limit=0.05, timezone="America/New_York"), clock=clock)
    status = stage.status()
    assert (status["period_start"], status["resets_at"]) == ("2024-05-01T00:00:00-04:00", "2024-05-02T00:00:00-04:00")
    _spend_until_refused(lambda: _echo(c))
    clock.now = datetime(2024, 5, 2, 3, 59, tzinfo=UTC)  # still May 1st there
    with pytest.raises(BudgetExceededError, match=r"2024-05-02T00:00:00-04:00"):
        _echo(c)
    clock.now = datetime(2024, 5, 2, 4, 0, tzinfo=UTC)  # midnight in New York
    assert _echo(c).text
    assert stage.status()["period_start"] == "2024-05-02T00:00:00-04:00"


def test_monthly_budget(tmp_path):
    clock = Clock(datetime(2024, 1, 31, 12, tzinfo=UTC))
    c, stage = _client(tmp_path, Budget(monthly_limit=0.05), clock=clock)
    _spend_until_refused(lambda: _echo(c))
    status = stage.status()
    assert (status["period"], status["period_start"], status["resets_at"]) == (
        "monthly",
        "2024-01-01T00:00:00+00:00",
        "2024-02-01T00:00:00+00:00",
    )
    clock.now = datetime(2024, 2, 1, tzinfo=UTC)
    assert _echo(c).text


def test_daily_and_monthly_limits_together(tmp_path):
    clock = Clock(datetime(2024, 3, 1, 12, tzinfo=UTC))
    c, stage = _client(tmp_path, Budget(daily_limit=0.04, monthly_limit=0.05), clock=clock)
    _, error = _spend_until_refused(lambda: _echo(c))
    assert error.period == "daily"
    clock.now = datetime(2024, 3, 2, 12, tzinfo=UTC)  # a new day, but the month is nearly spent
    _, error = _spend_until_refused(lambda: _echo(c))
    assert error.period == "monthly" and error.resets_at == datetime(2024, 4, 1, tzinfo=UTC)
    status = stage.status()
    assert status["period"] == "monthly" and set(status["periods"]) == {"daily", "monthly"}
    first_day = stage.status(now=datetime(2024, 3, 1, 12, tzinfo=UTC))["periods"]["daily"]["spent"]
    assert status["periods"]["monthly"]["spent"] == pytest.approx(status["periods"]["daily"]["spent"] + first_day)


# -- scopes --


def test_per_model_scope(tmp_path, stub, openai_kw):
    c, stage = _client(tmp_path, Budget(daily_limit=0.05, scope="model"))
    ask = lambda model: c.query(model=model, prompt="hi", max_tokens=10, **openai_kw)  # noqa: E731
    _spend_until_refused(lambda: ask(STUB_MODEL))
    assert ask("openai/other-model").text  # another model has its own budget
    assert stage.status(model=STUB_MODEL)["remaining"] < stage.status(model="openai/other-model")["remaining"]
    assert stage.status(model=STUB_MODEL)["scope"] == f"model:{STUB_MODEL}"
    with pytest.raises(ml.ArgumentError):
        stage.status()


def test_per_tag_scope(tmp_path):
    c, stage = _client(tmp_path, Budget(daily_limit=0.05, scope="tag:user"))
    _spend_until_refused(lambda: _echo(c, tags={"user": "alice"}))
    assert _echo(c, tags={"user": "bob"}).text
    assert _echo(c).text  # untagged calls share their own bucket
    assert stage.status(tag="alice")["spent"] > stage.status(tag="bob")["spent"] > 0
    assert stage.status()["scope"] == "tag:user=(untagged)"


# -- configuration and the seed API helpers --


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"daily_limit": -1}, "daily_limit"),
        ({"daily_limit": 0}, "daily_limit"),
        ({}, "daily_limit"),
        ({"monthly_limit": "10"}, "monthly_limit"),
        ({"daily_limit": 1, "timezone": "Mars/Olympus"}, "timezone"),
        ({"daily_limit": 1, "scope": "user"}, "scope"),
        ({"daily_limit": 1, "on_unknown_price": "maybe"}, "on_unknown_price"),
    ],
)
def test_bad_budget_settings(kwargs, argument):
    with pytest.raises(ml.ArgumentError) as info:
        Budget(**kwargs)
    assert info.value.argument == argument


def test_seed_api_helpers(tmp_path):
    c = ml.Client(tracing=False)
    c.set_model_price(ECHO, input_per_million=PER_MILLION, output_per_million=PER_MILLION)
    with pytest.raises(ml.ArgumentError, match="set_budget"):
        budget_status(c.pipeline)
    set_budget(c.pipeline, daily_limit=10.0, path=tmp_path / "b.db")
    alert = set_alert(c.pipeline, threshold=0.80, callback=lambda event: None)
    r = _echo(c)
    status = budget_status(c.pipeline)
    assert set(status) >= {"spent", "reserved", "remaining", "limit", "period", "period_start", "resets_at"}
    assert (status["limit"], status["period"], status["spent"]) == (10.0, "daily", pytest.approx(r.cost))
    datetime.fromisoformat(status["resets_at"])
    set_budget(c.pipeline, daily_limit=20.0, path=tmp_path / "b.db")  # replaced: same ledger, alerts kept
    assert budget_status(c.pipeline)["limit"] == 20.0 and c.pipeline.get("budget").alerts == [alert]
    set_budget(c.pipeline, enabled=False)
    assert c.pipeline.get("budget") is None
    with pytest.raises(ml.ArgumentError, match="url"):
        set_budget(c.pipeline, daily_limit=1.0, backend="redis")


def test_cache_hits_are_served_when_the_budget_is_spent(tmp_path, stub, openai_kw):
    """A cached answer costs nothing, so an exhausted budget does not refuse it."""
    client = ml.Client(model="gpt-4o", tracing=False, **openai_kw)
    client.set_model_price("gpt-4o", input_per_million=10_000, output_per_million=10_000)
    client.set_cache(enabled=True)
    client.set_budget(daily_limit=0.5, path=str(tmp_path / "ledger.db"))
    first = client.query("cache me", max_tokens=10)
    with pytest.raises(ml.BudgetExceededError):
        client.query("something new that would cost more", max_tokens=40)
    assert client.query("cache me", max_tokens=10).cached == "exact"
    assert first.cost > 0 and len(stub.requests) == 1
