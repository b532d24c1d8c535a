"""Bad arguments fail before any network call; provider failures are typed, traced, retried."""

from __future__ import annotations

import time

import pytest

import mlflow_lite_plugin as ml

from tests.helpers import get_trace


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"model": "gpt-4o"}, "prompt"),
        ({"model": "gpt-4o", "prompt": "   "}, "prompt"),
        ({"model": "", "prompt": "hi"}, "model"),
        ({"model": None, "prompt": "hi"}, "model"),
        ({"model": "gpt-4o", "prompt": "hi", "messages": [{"role": "user", "content": "x"}]}, "prompt"),
        ({"model": "gpt-4o", "messages": []}, "messages"),
        ({"model": "gpt-4o", "messages": ["not a dict"]}, "messages"),
        ({"model": "gpt-4o", "prompt": "hi", "temprature": 0.5}, "temprature"),
        ({"model": "gpt-4o", "prompt": "hi", "num_retries": -1}, "num_retries"),
        ({"model": "gpt-4o", "prompt": "hi", "timeout": 0}, "timeout"),
        ({"model": "gpt-4o", "prompt": "hi", "fallbacks": "gpt-4o-mini"}, "fallbacks"),
        ({"model": "gpt-4o", "prompt": "hi", "stream": True}, "stream"),
        ({"model": "no-such-provider-model-xyz", "prompt": "hi"}, "model"),
    ],
)
def test_bad_arguments_raise_before_network(client, stub, openai_kw, kwargs, argument):
    with pytest.raises(ml.ArgumentError) as info:
        client.query(**{**openai_kw, **kwargs})
    assert info.value.argument == argument
    assert argument in str(info.value)
    assert isinstance(info.value, ValueError)
    assert stub.requests == []


def test_unknown_keyword_suggests_the_right_one(client, stub, openai_kw):
    with pytest.raises(ml.ArgumentError, match="Did you mean 'temperature'"):
        client.query(model="gpt-4o", prompt="hi", temprature=0.1, **openai_kw)


def test_provider_params_escape_hatch(client, stub, openai_kw):
    """Keywords LiteLLM does not list are rejected, unless passed on purpose via provider_params."""
    client.query(model="gpt-4o", prompt="hi", provider_params={"my_vendor_flag": True}, **openai_kw)
    assert stub.requests[-1].body["my_vendor_flag"] is True


def test_provider_error_keeps_message_status_and_trace(client, stub, openai_kw):
    stub.inject(status=500)
    with pytest.raises(ml.ProviderUnavailableError) as info:
        client.query(model="gpt-4o", prompt="fail please", num_retries=0, **openai_kw)
    error = info.value
    assert isinstance(error, ml.ProviderError) and error.transient
    assert error.status_code == 500
    assert "stub: injected 500" in str(error)
    assert error.model == "openai/gpt-4o"
    trace = get_trace(error.trace_id)
    assert trace.info.state.value == "ERROR"
    assert "ProviderUnavailableError" in trace.data.spans[0].attributes["mlflow_lite.error"]
    assert len(stub.requests) == 1  # no hidden SDK retries underneath


def test_auth_error_is_not_retried(client, stub, openai_kw):
    stub.inject(status=401)
    with pytest.raises(ml.ProviderAuthError):
        client.query(model="gpt-4o", prompt="who am i", num_retries=3, **openai_kw)
    assert len(stub.requests) == 1


def test_bad_request_is_not_retried(client, stub, openai_kw):
    stub.inject(status=400)
    with pytest.raises(ml.ProviderBadRequestError):
        client.query(model="gpt-4o", prompt="bad", num_retries=3, **openai_kw)
    assert len(stub.requests) == 1


def test_429_retry_after_is_honoured(client, stub, openai_kw):
    stub.inject(status=429, retry_after=1)
    r = client.query(model="gpt-4o", prompt="rate limited", num_retries=2, **openai_kw)
    assert r.text.endswith("rate limited")
    first, second = stub.requests
    assert second.at - first.at >= 0.95
    spans = get_trace(r.trace_id).data.spans
    attempts = [s for s in spans if s.parent_id is not None]
    assert [s.status.status_code.value for s in attempts] == ["ERROR", "OK"]
    assert attempts[0].attributes["mlflow_lite.status_code"] == 429


def test_5xx_retries_exhausted(client, stub, openai_kw):
    stub.inject(status=503, times=3)
    with pytest.raises(ml.ProviderUnavailableError):
        client.query(model="gpt-4o", prompt="down", num_retries=2, **openai_kw)
    assert len(stub.requests) == 3


def test_timeout_raises_typed_error(client, stub, openai_kw):
    stub.inject(delay=3)
    started = time.perf_counter()
    with pytest.raises(ml.ProviderTimeoutError):
        client.query(model="gpt-4o", prompt="slow", timeout=0.5, num_retries=0, **openai_kw)
    assert time.perf_counter() - started < 2.5


def test_fallback_answers_when_primary_fails(client, stub, openai_kw):
    stub.inject(status=500, model="gpt-4o")
    r = client.query(model="gpt-4o", prompt="fall back", fallbacks=["gpt-4o-mini"], num_retries=0, **openai_kw)
    assert r.model == "openai/gpt-4o-mini"
    assert [q.body["model"] for q in stub.requests] == ["gpt-4o", "gpt-4o-mini"]
    names = [s.name for s in get_trace(r.trace_id).data.spans]
    assert names == ["mlflow_lite.query", "openai/gpt-4o (attempt 1)", "openai/gpt-4o-mini (attempt 2)"]


def test_connection_refused_is_a_connection_error(client):
    with pytest.raises(ml.ProviderConnectionError):
        client.query(model="gpt-4o", prompt="nobody home", api_base="http://127.0.0.1:9/v1", api_key="x")


def test_async_errors_are_typed(client, stub, openai_kw):
    import asyncio

    stub.inject(status=500)
    with pytest.raises(ml.ProviderUnavailableError):
        asyncio.run(client.aquery(model="gpt-4o", prompt="async fail", num_retries=0, **openai_kw))


def test_500_every_other_call_is_absorbed_by_retries(client, stub, openai_kw):
    stub.inject(status=500, every=2, times=100)
    answers = [client.query(model="gpt-4o", prompt=f"flaky {i}", num_retries=1, **openai_kw) for i in range(6)]
    assert [a.text.rsplit(": ", 1)[1] for a in answers] == [f"flaky {i}" for i in range(6)]
    # requests: ok, 500+ok, 500+ok, ... every failed attempt was retried once
    assert len(stub.requests) == 11


def test_provider_down_then_fallback_then_clear_error(client, stub, openai_kw):
    stub.inject(status=503, model="gpt-4o", times=100)  # gpt-4o is down for good
    r = client.query(model="gpt-4o", prompt="down", num_retries=1, fallbacks=["gpt-4o-mini"], **openai_kw)
    assert r.model == "openai/gpt-4o-mini"
    stub.inject(status=503, model="gpt-4o-mini", times=100)
    with pytest.raises(ml.ProviderUnavailableError, match=r"gpt-4o-mini.*503"):
        client.query(model="gpt-4o", prompt="all down", num_retries=1, fallbacks=["gpt-4o-mini"], **openai_kw)


def test_transient_errors_are_retried_twice_by_default(client, stub, openai_kw):
    """Like the OpenAI SDK underneath LiteLLM, but every attempt is visible on the trace."""
    stub.inject(status=503)
    r = client.query(model="gpt-4o", prompt="one hiccup", **openai_kw)
    assert r.text.endswith("one hiccup") and len(stub.requests) == 2
    assert [s.status.status_code.value for s in get_trace(r.trace_id).data.spans[1:]] == ["ERROR", "OK"]
    stub.inject(status=503, times=2)
    assert client.query(model="gpt-4o", prompt="two hiccups", **openai_kw).text.endswith("two hiccups")
