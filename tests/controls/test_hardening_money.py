"""Money: the budget's worst case bounds every bill, and spend is what the provider billed.

- ``n`` and the other completion multipliers, tool definitions, fallbacks' prices and re-asks are
  in the reservation, so spend never passes the limit (a property test over random calls);
- a failed call is charged what it was billed and nothing else, on every path, and the trace's
  ``mlflow_lite.cost_usd`` (what the dashboard sums) equals what the ledger was charged.
"""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.apps.ui.dashboard import aggregate
from mlflow_lite_plugin.controls.budget.stage import Budget, BudgetExceededError, BudgetStage, SQLiteLedger
from mlflow_lite_plugin.testing import StubLLMServer

from tests.helpers import KEY, get_trace

PRIMARY, FALLBACK, READER = "openai/money-primary", "openai/money-fallback", "openai/money-reader"
# USD per million tokens (in, out); the reader's input is dear and its output cheap.
PER_MILLION = {PRIMARY: (10.0, 30.0), FALLBACK: (20.0, 60.0), READER: (40.0, 15.0)}
LONG_REPLY = " ".join(f"w{i}" for i in range(60))  # longer than any max_tokens below: cut by it


def _client(tmp_path, limit: float, *, tracing: bool = False) -> tuple[ml.Client, BudgetStage]:
    c = ml.Client(tracing=tracing)
    for model, (inp, out) in PER_MILLION.items():
        c.set_model_price(model, input_per_million=inp, output_per_million=out)
    stage = BudgetStage(Budget(daily_limit=limit), SQLiteLedger(tmp_path / f"{uuid.uuid4().hex}.db"))
    c.add_stage(stage)
    return c, stage


def _billed(stub: StubLLMServer) -> float:
    """USD of everything the stub billed, at the prices the client was given."""
    total = 0.0
    for bill in stub.bills:
        inp, out = PER_MILLION[f"openai/{bill.model}"]
        total += (bill.prompt_tokens * inp + bill.completion_tokens * out) / 1e6
    return total


def _requested(c: ml.Client, **kwargs) -> float:
    """The worst case the budget reserves for a call (a $0.000001 limit refuses every call)."""
    with pytest.raises(BudgetExceededError) as refused:
        c.query(model=PRIMARY, prompt="how much?", **kwargs)
    return refused.value.requested


# -- the worst case --


def test_n_completions_cannot_overspend_the_budget(tmp_path, stub, openai_kw):
    """The issue: daily_limit=0.01, max_tokens=10, n=16 spent 405% of the limit."""
    stub.reply = lambda model, messages: LONG_REPLY
    c, stage = _client(tmp_path, 0.01)
    answers = []
    with pytest.raises(BudgetExceededError):
        for _ in range(100):
            answers.append(c.query(model=PRIMARY, prompt="hi", max_tokens=10, n=16, **openai_kw))
    assert answers and all(r.usage["completion_tokens"] == 16 * 10 for r in answers)  # the stub bills n
    spent = stage.status()["spent"]
    assert spent <= 0.01 + 1e-12
    assert spent == pytest.approx(_billed(stub)) == pytest.approx(sum(r.cost for r in answers))


def test_worst_case_counts_every_completion_multiplier(tmp_path, stub):
    c, _ = _client(tmp_path, 0.000001)
    one = _requested(c, max_tokens=100)
    per_completion = 100 * PER_MILLION[PRIMARY][1] / 1e6
    assert _requested(c, max_tokens=100, n=4) == pytest.approx(one + 3 * per_completion)
    assert _requested(c, max_tokens=100, provider_params={"best_of": 3}) == pytest.approx(one + 2 * per_completion)
    assert _requested(c, max_tokens=100, provider_params={"candidate_count": 2}) == pytest.approx(one + per_completion)
    assert _requested(c, max_tokens=100, extra_body={"n": 5}) == pytest.approx(one + 4 * per_completion)
    # Several output limits: the largest bounds the answer.
    assert _requested(c, max_tokens=100, max_completion_tokens=300) == pytest.approx(one + 2 * per_completion)
    assert stub.requests == []


def test_an_unreadable_completion_count_is_refused_before_the_provider(tmp_path, stub, openai_kw):
    c, _ = _client(tmp_path, 1.0)
    for bad in ("16", 0, -2, True):
        with pytest.raises(ml.ArgumentError) as error:
            c.query(model=PRIMARY, prompt="hi", max_tokens=10, provider_params={"n": bad}, **openai_kw)
        assert error.value.argument == "n" and "whole number" in str(error.value)
    assert stub.requests == []


def test_tool_definitions_are_prompt_tokens_in_the_worst_case(tmp_path):
    c, _ = _client(tmp_path, 0.000001)
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"lookup_{i}",
                "description": "Look the order up in the warehouse system and report its status " * 5,
                "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
            },
        }
        for i in range(4)
    ]
    plain = _requested(c, max_tokens=10)
    with_tools = _requested(c, max_tokens=10, tools=tools)
    tool_tokens = (with_tools - plain) / (PER_MILLION[PRIMARY][0] / 1e6)
    assert tool_tokens >= 4 * 60  # each definition is ~60+ tokens of text
    # A response format's schema is sent too, also when given as a pydantic model.
    from pydantic import BaseModel

    class Order(BaseModel):
        order_id: str
        status: str
        warehouse_location_description: str

    schema_tokens = (_requested(c, max_tokens=10, response_format=Order) - plain) / (PER_MILLION[PRIMARY][0] / 1e6)
    assert schema_tokens >= 30


def test_worst_case_uses_the_dearest_model_for_each_answer(tmp_path):
    c, _ = _client(tmp_path, 0.000001)
    alone = _requested(c, max_tokens=50)
    chained = _requested(c, max_tokens=50, fallbacks=[FALLBACK])
    assert chained == pytest.approx(2 * alone, rel=0.05)  # the fallback costs twice as much per token
    # Re-asks: every answer may be the fallback's, each after a longer prompt.
    reasked = _requested(c, max_tokens=50, fallbacks=[FALLBACK], validate={"max_length": 5}, on_fail="retry",
                         max_attempts=3)
    assert reasked > 3 * chained


def test_worst_case_lets_each_answer_come_from_a_different_model(tmp_path):
    """The first answer from the primary (dear output), the re-ask from the fallback (dear input,
    and the re-ask's prompt is long): the bound covers that mix, not only one model's answers."""
    c, _ = _client(tmp_path, 0.000001)
    one = {"max_tokens": 100}
    two = {**one, "validate": {"max_length": 5}, "on_fail": "retry", "max_attempts": 2}

    def requested(model: str, fallbacks: list[str], **kwargs) -> float:
        with pytest.raises(BudgetExceededError) as refused:
            c.query(model=model, prompt="how much?", fallbacks=fallbacks, **kwargs)
        return refused.value.requested

    primary_first = requested(PRIMARY, [], **one)
    reader_reask = requested(READER, [], **two) - requested(READER, [], **one)
    assert primary_first > requested(READER, [], **one)  # the primary is the dearer first answer
    assert requested(PRIMARY, [READER], **two) >= primary_first + reader_reask - 1e-12


def test_worst_case_uses_every_rate_that_can_apply_and_only_those():
    c = ml.Client(tracing=False)
    gpt, gemini, claude = (c.models.resolve(m) for m in ("gpt-4o", "gemini/gemini-2.5-pro", "claude-sonnet-4-5"))
    from mlflow_lite_plugin.core.model_names import litellm_module

    info = litellm_module().get_model_info(model="gpt-4o")
    # A standard call is billed at the standard rates: the priority tier would refuse calls that fit.
    assert c.pricing.highest_price(gpt) == c.pricing.price(gpt)
    priority = c.pricing.highest_price(gpt, service_tier="priority")
    assert (priority.input, priority.output) == (info["input_cost_per_token_priority"],
                                                 info["output_cost_per_token_priority"])
    # Long-context tiers once the call can pass their threshold.
    gemini_info = litellm_module().get_model_info(model="gemini/gemini-2.5-pro")
    assert c.pricing.highest_price(gemini, tokens=150_000) == c.pricing.price(gemini)
    long = c.pricing.highest_price(gemini, tokens=250_000)
    assert long.output == gemini_info["output_cost_per_token_above_200k_tokens"]
    # Prompt-cache writes cost more than input, when the request marks cache_control.
    claude_info = litellm_module().get_model_info(model=claude.name)
    assert c.pricing.highest_price(claude).input == claude_info["input_cost_per_token"]
    assert c.pricing.highest_price(claude, cache_writes=True).input == max(
        v for k, v in claude_info.items() if k.startswith("cache_creation") and "batches" not in k and v
    )
    c.set_model_price("gpt-4o", input_per_million=1.0, output_per_million=2.0)
    assert c.pricing.highest_price(gpt, service_tier="priority") == c.pricing.price(gpt)  # a price you set is the price


def test_the_requested_service_tier_is_reserved_at_its_rate(tmp_path):
    """The price map's own rates (no set_model_price): priority processing is reserved only when
    the call asks for it, so standard calls are not refused for a rate they cannot be billed."""
    c = ml.Client(tracing=False)
    c.add_stage(BudgetStage(Budget(daily_limit=0.000001), SQLiteLedger(tmp_path / "tier.db")))

    def requested(**kwargs) -> float:
        with pytest.raises(BudgetExceededError) as refused:
            c.query(model="gpt-4o", prompt="how much?", max_tokens=100, **kwargs)
        return refused.value.requested

    from mlflow_lite_plugin.core.model_names import litellm_module

    info = litellm_module().get_model_info(model="gpt-4o")
    standard, priority = requested(), requested(service_tier="priority")
    assert standard == pytest.approx(
        c.count_tokens("how much?", model="gpt-4o") * info["input_cost_per_token"]
        + 100 * info["output_cost_per_token"],
        rel=0.2,
    )
    assert priority / standard == pytest.approx(info["output_cost_per_token_priority"] / info["output_cost_per_token"],
                                                rel=0.1)


# -- what counts as spend --


def _root(trace_id: str):
    return get_trace(trace_id).data.spans[0]


def test_a_stream_that_fails_before_any_answer_costs_nothing(tmp_path, stub, openai_kw):
    """The issue: a stream with no API key wrote cost_usd 2e-05 on its ERROR trace."""
    c, stage = _client(tmp_path, 1.0, tracing=True)
    s = c.stream(model=PRIMARY, prompt="hello there", max_tokens=10, api_base=stub.openai_base)  # no api_key
    with pytest.raises(ml.MlflowLiteError) as failed:
        list(s)
    s.close()
    del s  # the finaliser closes it again: still nothing recorded
    assert stage.status()["spent"] == 0.0 and stage.status()["reserved"] == 0.0
    c.flush_traces()
    root = _root(failed.value.trace_id)
    assert root.attributes.get("mlflow_lite.cost_usd", 0.0) == 0.0
    assert root.attributes["mlflow_lite.budget.charged_usd"] == 0.0
    totals = aggregate([get_trace(failed.value.trace_id)], datetime.now(timezone.utc).date(), 1)["totals"]
    assert (totals["cost"], totals["calls"], totals["errors"]) == (0.0, 0, 1)


def test_a_broken_stream_is_charged_what_it_delivered_on_the_trace_and_the_ledger(tmp_path, stub, openai_kw):
    stub.reply = lambda model, messages: LONG_REPLY
    stub.inject(break_stream_after=6)  # a role chunk, then five words, then the connection drops
    c, stage = _client(tmp_path, 1.0, tracing=True)
    s = c.stream(model=PRIMARY, prompt="hello there", max_tokens=50, num_retries=0, **openai_kw)
    received = []
    with pytest.raises(ml.MlflowLiteError) as failed:
        for chunk in s:
            received.append(chunk)
    assert "".join(received) == "w0 w1 w2 w3 w4 "
    spent = stage.status()["spent"]
    assert spent > 0
    c.flush_traces()
    trace = get_trace(failed.value.trace_id)
    root = trace.data.spans[0]
    assert root.attributes["mlflow_lite.cost_usd"] == pytest.approx(spent)
    assert root.attributes["mlflow_lite.budget.charged_usd"] == pytest.approx(spent)
    totals = aggregate([trace], datetime.now(timezone.utc).date(), 1)["totals"]
    assert totals["cost"] == pytest.approx(spent) and totals["errors"] == 1 and totals["calls"] == 0


def test_a_query_that_fails_after_paying_has_its_cost_on_the_trace(tmp_path, stub, openai_kw):
    seen = {}

    class FailsAfterAnswer(ml.Stage):
        name, order = "fails_after_answer", 600

        def after(self, call, response):
            seen["trace"] = call.span.trace_ref
            raise RuntimeError("a stage crashed after the answer was paid")

    c, stage = _client(tmp_path, 1.0, tracing=True)
    c.add_stage(FailsAfterAnswer())
    with pytest.raises(RuntimeError):
        c.query(model=PRIMARY, prompt="hi", max_tokens=10, **openai_kw)
    spent = stage.status()["spent"]
    assert spent == pytest.approx(_billed(stub)) and spent > 0
    c.flush_traces()
    trace = get_trace(seen["trace"].trace_id)
    assert trace.data.spans[0].attributes["mlflow_lite.cost_usd"] == pytest.approx(spent)
    totals = aggregate([trace], datetime.now(timezone.utc).date(), 1)["totals"]
    assert totals["cost"] == pytest.approx(spent) and totals["errors"] == 1


def test_a_cache_hit_streamed_and_closed_early_costs_nothing(tmp_path, stub, openai_kw):
    c, stage = _client(tmp_path, 1.0)
    c.set_cache(enabled=True)
    first = c.query(model=PRIMARY, prompt="cache me please", max_tokens=20, **openai_kw)
    with c.stream(model=PRIMARY, prompt="cache me please", max_tokens=20, **openai_kw) as s:
        next(s)
    assert s.response.cost == 0.0
    assert stage.status()["spent"] == pytest.approx(first.cost) == pytest.approx(_billed(stub))


def test_a_stream_closed_before_reading_costs_nothing(tmp_path, stub, openai_kw):
    c, stage = _client(tmp_path, 1.0)
    s = c.stream(model=PRIMARY, prompt="never read", max_tokens=20, **openai_kw)
    s.close()
    assert s.response.cost == 0.0 and s.response.usage["total_tokens"] == 0
    assert stage.status()["spent"] == 0.0 and stub.requests == []


# -- the promise: spend never exceeds the limit, and is exactly what was billed --


@pytest.fixture(scope="module")
def tokenized_stub():
    """A stub that counts tokens with the client's tokenizer, so a stream the client counts
    locally (one that broke or was stopped) is billed the tokens the client records."""
    from mlflow_lite_plugin.core.model_names import litellm_module

    litellm = litellm_module()

    def tokens(value) -> int:
        if isinstance(value, str):
            return int(litellm.token_counter(model=PRIMARY, text=value))
        return int(litellm.token_counter(model=PRIMARY, messages=value))

    with StubLLMServer(tokenizer=tokens, reply=lambda model, messages: LONG_REPLY) as server:
        yield server


class _Turns:
    """Calls that queue faults on the shared stub run alone (a fault hits the next request);
    the others run together."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._alone = False

    @contextmanager
    def turn(self, alone: bool):
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and (not alone or self._running == 0))
            self._running += 1
            self._alone = alone
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._alone = False
                self._cond.notify_all()


call_plans = st.fixed_dictionaries(
    {
        "n": st.integers(1, 4),
        "max_tokens": st.one_of(st.none(), st.integers(1, 40)),
        "fallback": st.booleans(),  # the primary fails with a 500 first, the fallback answers
        "reask": st.booleans(),  # queries: validation on_fail="retry" (the stub's answer never passes)
        "stream": st.sampled_from([None, "whole", "broken", "stopped"]),
        "cut": st.integers(1, 8),  # words before a stream breaks, or is stopped by the caller
        "prompt_words": st.integers(1, 30),
    }
)


def _model_id(name: str) -> str:
    return name.split("/", 1)[1]  # the model as the stub sees it


def _run_plan(c: ml.Client, stub: StubLLMServer, plan: dict) -> str:
    """Make the call; returns how it ended."""
    kwargs = {"api_base": stub.openai_base, "api_key": KEY, "num_retries": 0}
    if plan["max_tokens"] is not None:
        kwargs["max_tokens"] = plan["max_tokens"]
    answering = PRIMARY
    if plan["fallback"]:
        kwargs["fallbacks"] = [FALLBACK]
        stub.inject(status=500, model=_model_id(PRIMARY))
        answering = FALLBACK
    prompt = " ".join(f"p{i}" for i in range(plan["prompt_words"]))
    try:
        if plan["stream"] is None:
            if plan["reask"]:
                kwargs.update(validate={"required_words": ["never-said"]}, on_fail="retry", max_attempts=2)
            c.query(model=PRIMARY, prompt=prompt, n=plan["n"], **kwargs)
            return "query answered"
        if plan["stream"] != "whole":
            # A role chunk, then `cut` words, then the connection drops. A caller that stops after
            # `cut` words has read exactly what the stub sent (and billed).
            stub.inject(break_stream_after=plan["cut"] + 1, model=_model_id(answering))
        with c.stream(model=PRIMARY, prompt=prompt, **kwargs) as s:
            for read, _ in enumerate(s, 1):
                if plan["stream"] == "stopped" and read == plan["cut"]:
                    break
        return f"stream {plan['stream']} answered"
    except BudgetExceededError:
        return "refused"
    except ml.MlflowLiteError as error:  # broken, or invalid after its re-asks: what was billed counts
        return f"{'stream ' + plan['stream'] if plan['stream'] else 'query'} failed: {type(error).__name__}"
    finally:
        with stub._lock:  # a fault the call did not reach (it was refused) must not hit the next
            stub._faults.clear()


_BIG = {"n": 4, "max_tokens": 40, "fallback": False, "reask": False, "stream": None, "cut": 1, "prompt_words": 5}


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plans=st.lists(call_plans, min_size=1, max_size=10),
    limit=st.sampled_from([0.002, 0.01, 0.03, 0.2]),
    threads=st.integers(1, 3),
)
@example(plans=[_BIG] * 8, limit=0.01, threads=1)  # the issue: n= completions billed, one reserved
@example(plans=[_BIG] * 8, limit=0.01, threads=3)
def test_spend_never_exceeds_the_limit_and_is_what_was_billed(tokenized_stub, tmp_path, plans, limit, threads):
    stub = tokenized_stub
    stub.reset()
    c, stage = _client(tmp_path, limit)
    turns = _Turns()
    outcomes: list[str | BaseException] = []

    def worker(mine: list[dict]) -> None:
        for plan in mine:
            faulted = plan["fallback"] or plan["stream"] in ("broken", "stopped")
            try:
                with turns.turn(alone=faulted):
                    outcomes.append(_run_plan(c, stub, plan))
            except BaseException as unexpected:  # raised below, on the test's thread
                outcomes.append(unexpected)

    workers = [threading.Thread(target=worker, args=(plans[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        event(outcome)
    status = stage.status()
    assert status["reserved"] == 0.0
    assert status["spent"] <= limit + 1e-12
    assert status["spent"] == pytest.approx(_billed(stub), rel=1e-9, abs=1e-12)
