"""The provider terminal over real HTTP (LiteLLM against the loopback stub): which attempts a call
makes (retries of transient errors, then fallbacks), one span per attempt on the trace, and what
each attempt costs."""

from __future__ import annotations

import asyncio

import pytest

import mlflow_lite_plugin as ml

from tests.helpers import get_trace


def _attempt_spans(trace_id: str) -> list:
    """The root's children (one per provider attempt), in start order."""
    spans = get_trace(trace_id).data.spans
    root = next(s for s in spans if s.parent_id is None)
    return sorted((s for s in spans if s.parent_id == root.span_id), key=lambda s: s.start_time_ns)


def _summary(span) -> tuple:
    a = span.attributes
    return (span.name, a["mlflow_lite.attempt"], a["mlflow_lite.retry"], span.status.status_code.value)


def test_a_429_then_success_is_two_attempts_of_one_model(client, stub, openai_kw):
    stub.inject(status=429, retry_after=0.1)
    r = client.query(model="gpt-4o", prompt="busy", num_retries=2, **openai_kw)
    assert r.text == "Stub answer from gpt-4o: busy" and r.model == "openai/gpt-4o"
    assert [q.body["model"] for q in stub.requests] == ["gpt-4o", "gpt-4o"]
    first, second = _attempt_spans(r.trace_id)
    assert _summary(first) == ("openai/gpt-4o (attempt 1)", 1, 0, "ERROR")
    assert _summary(second) == ("openai/gpt-4o (attempt 2)", 2, 1, "OK")
    assert first.attributes["mlflow_lite.status_code"] == 429 and first.attributes["mlflow_lite.transient"] is True
    # a refused attempt is not billed: the call costs what its answered attempt cost
    assert r.cost > 0 and "mlflow.llm.cost" not in first.attributes
    assert second.attributes["mlflow.llm.cost"]["total_cost"] == pytest.approx(r.cost)
    root = get_trace(r.trace_id).data.spans[0]
    assert root.attributes["mlflow_lite.cost_usd"] == pytest.approx(r.cost)


def test_a_500_is_retried_then_falls_back_to_the_next_model(client, stub, openai_kw):
    stub.inject(status=500, model="gpt-4o", times=100)
    r = client.query(model="gpt-4o", prompt="down", num_retries=1, fallbacks=["gpt-4o-mini"], **openai_kw)
    assert (r.model, r.requested_model) == ("openai/gpt-4o-mini", "gpt-4o")
    assert r.text == "Stub answer from gpt-4o-mini: down"
    assert [q.body["model"] for q in stub.requests] == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    assert [_summary(s) for s in _attempt_spans(r.trace_id)] == [
        ("openai/gpt-4o (attempt 1)", 1, 0, "ERROR"),
        ("openai/gpt-4o (attempt 2)", 2, 1, "ERROR"),
        ("openai/gpt-4o-mini (attempt 3)", 3, 0, "OK"),
    ]


def test_an_auth_error_is_not_retried_it_moves_to_the_fallback(client, stub, openai_kw):
    stub.inject(status=401, model="gpt-4o")
    r = client.query(model="gpt-4o", prompt="key", num_retries=3, fallbacks=["gpt-4o-mini"], **openai_kw)
    assert r.model == "openai/gpt-4o-mini"
    assert [q.body["model"] for q in stub.requests] == ["gpt-4o", "gpt-4o-mini"]  # no retry of the refused key
    failed, answered = _attempt_spans(r.trace_id)
    assert failed.attributes["mlflow_lite.status_code"] == 401 and failed.attributes["mlflow_lite.transient"] is False
    assert _summary(answered) == ("openai/gpt-4o-mini (attempt 2)", 2, 0, "OK")


def test_every_attempt_failing_raises_the_last_error_with_every_span_and_no_cost(client, stub, openai_kw):
    stub.inject(status=503, times=100)
    with pytest.raises(ml.ProviderUnavailableError, match="gpt-4o-mini") as info:
        client.query(model="gpt-4o", prompt="all down", num_retries=1, fallbacks=["gpt-4o-mini"], **openai_kw)
    error = info.value
    assert error.model == "openai/gpt-4o-mini" and error.status_code == 503
    assert error.cost == 0.0  # nothing was answered, nothing billed
    assert len(stub.requests) == 4
    spans = _attempt_spans(error.trace_id)
    assert [(s.attributes["mlflow_lite.attempt"], s.status.status_code.value) for s in spans] == [
        (1, "ERROR"), (2, "ERROR"), (3, "ERROR"), (4, "ERROR"),
    ]


def test_async_attempts_are_the_same_as_sync(client, stub, openai_kw):
    stub.inject(status=429, retry_after=0.1)
    r = asyncio.run(client.aquery(model="gpt-4o", prompt="async busy", num_retries=1, **openai_kw))
    assert r.text == "Stub answer from gpt-4o: async busy"
    assert [_summary(s) for s in _attempt_spans(r.trace_id)] == [
        ("openai/gpt-4o (attempt 1)", 1, 0, "ERROR"),
        ("openai/gpt-4o (attempt 2)", 2, 1, "OK"),
    ]


def test_a_stream_refused_before_its_first_chunk_is_retried(client, stub, openai_kw):
    stub.inject(status=503)
    stream = client.stream(model="gpt-4o", prompt="streamed retry", num_retries=1, **openai_kw)
    assert "".join(stream) == "Stub answer from gpt-4o: streamed retry"
    assert [q.body.get("stream") for q in stub.requests] == [True, True]
    assert [_summary(s) for s in _attempt_spans(stream.response.trace_id)] == [
        ("openai/gpt-4o (attempt 1)", 1, 0, "ERROR"),
        ("openai/gpt-4o (attempt 2)", 2, 1, "OK"),
    ]


def test_num_retries_zero_makes_one_attempt(client, stub, openai_kw):
    stub.inject(status=429, retry_after=0.1)
    with pytest.raises(ml.ProviderRateLimitError) as info:
        client.query(model="gpt-4o", prompt="no retry", num_retries=0, **openai_kw)
    assert len(stub.requests) == 1 and info.value.retry_after == pytest.approx(0.1)
