"""Bad input is refused locally, before any network call, and errors are classified right.

Covers the common OpenAI parameters and message shapes (checked in ``request.py``), LiteLLM's
local encoding errors and missing API keys (``errors.py``/``providers.py``: never retried), a
non-numeric temperature under a cache temperature policy, and the time bound of regex rules.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.controls.validation.rules import Validator
from mlflow_lite_plugin.core.errors import from_provider_exception
from mlflow_lite_plugin.core.model_names import litellm_module

FALLBACK = "openai/gpt-4o-mini"


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models of every litellm.completion/acompletion call (a missing key sends no request,
    so the stub's log cannot count attempts)."""
    litellm = litellm_module()
    seen: list[str] = []
    completion, acompletion = litellm.completion, litellm.acompletion

    def spy(**kwargs):
        seen.append(kwargs["model"])
        return completion(**kwargs)

    async def aspy(**kwargs):
        seen.append(kwargs["model"])
        return await acompletion(**kwargs)

    monkeypatch.setattr(litellm, "completion", spy)
    monkeypatch.setattr(litellm, "acompletion", aspy)
    return seen


# -- parameters --

BAD_PARAMS = [
    ("temperature", "hot"),
    ("temperature", -3),
    ("temperature", 2.5),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("temperature", True),
    ("top_p", 1.5),
    ("max_tokens", -5),
    ("max_tokens", 0),
    ("max_tokens", "10"),
    ("max_tokens", 1e12),
    ("max_tokens", 10**12),
    ("max_tokens", 10.0),
    ("max_tokens", True),
    ("max_completion_tokens", -1),
    ("n", 0),
    ("n", 1000),
    ("presence_penalty", 3),
    ("frequency_penalty", -2.5),
    ("seed", "42"),
    ("seed", 1.5),
    ("stop", 5),
    ("stop", ["ok", 1]),
    ("logprobs", "yes"),
    ("top_logprobs", 50),
    ("user", 7),
    ("logit_bias", {"50256": float("nan")}),
]


@pytest.mark.parametrize(("name", "value"), BAD_PARAMS, ids=[f"{n}={v!r}" for n, v in BAD_PARAMS])
def test_bad_common_parameter_is_refused_before_any_request(client, stub, openai_kw, attempts, name, value):
    with pytest.raises(ml.ArgumentError) as caught:
        client.query(model="openai/gpt-4o", prompt="hi", **openai_kw, **{name: value})
    assert caught.value.argument == name
    assert repr(value) in str(caught.value) or name == "logit_bias"
    assert attempts == [] and stub.requests == []


def test_stream_checks_parameters_too(client, stub, openai_kw, attempts):
    with pytest.raises(ml.ArgumentError) as caught:
        list(client.stream(model="openai/gpt-4o", prompt="hi", max_tokens="10", **openai_kw))
    assert caught.value.argument == "max_tokens"
    assert attempts == [] and stub.requests == []


def test_defaults_of_a_client_are_checked(stub, openai_kw, attempts):
    client = ml.Client(temperature="hot")
    with pytest.raises(ml.ArgumentError) as caught:
        client.query(model="openai/gpt-4o", prompt="hi", **openai_kw)
    assert caught.value.argument == "temperature"
    assert stub.requests == []


def test_good_parameters_reach_the_provider(client, stub, openai_kw):
    client.query(
        model="openai/gpt-4o",
        prompt="hi",
        temperature=0,
        top_p=1,
        max_tokens=np.int64(10),  # what a served model's "long" param may be
        n=1,
        seed=7,
        stop=["\n\n", "END"],
        presence_penalty=-2,
        frequency_penalty=2.0,
        **openai_kw,
    )
    body = stub.requests[-1].body
    assert body["max_tokens"] == 10 and type(body["max_tokens"]) is int
    assert body["temperature"] == 0 and body["seed"] == 7 and body["stop"] == ["\n\n", "END"]
    client.query(model="openai/gpt-4o", prompt="hi again", temperature=2, stop="END", **openai_kw)
    assert stub.requests[-1].body["temperature"] == 2


def test_anthropic_native_parameter_still_passes(client, stub, anthropic_kw):
    client.query(model="anthropic/claude-haiku-4-5", prompt="hi", top_k=5, max_tokens=20, **anthropic_kw)
    body = stub.requests[-1].body
    assert body["top_k"] == 5 and body["max_tokens"] == 20


def test_provider_params_stay_unchecked_except_nan(client, stub, openai_kw):
    # A provider-specific extra is the caller's business, whatever its type.
    client.query(model="openai/gpt-4o", prompt="hi", provider_params={"mirostat_eta": "0.1"}, **openai_kw)
    assert len(stub.requests) == 1
    with pytest.raises(ml.ArgumentError) as caught:
        client.query(model="openai/gpt-4o", prompt="hi", provider_params={"x": {"y": [float("nan")]}}, **openai_kw)
    assert caught.value.argument == "provider_params"
    assert "provider_params['x']['y'][0]" in str(caught.value)
    assert len(stub.requests) == 1


# -- messages --

BAD_MESSAGES = [
    ([{"role": "hacker", "content": "hi"}], "role must be one of"),
    ([{"role": "user"}], "has no 'content'"),
    ([{"role": "user", "content": None}], "has no 'content'"),
    ([{"role": "assistant", "content": None}], "has no 'content'"),
    ([{"role": "user", "content": 123}], "content must be a string or a list"),
    ([{"role": "user", "content": [{"text": "no type"}]}], "must be a dict with a 'type'"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "needs a string 'text'"),
    ([{"role": "user", "content": ["plain string part"]}], "must be a dict with a 'type'"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}], "tool_call_id"),
    ([{"role": "user", "content": "hi", "weight": float("nan")}], "not a finite number"),
]


@pytest.mark.parametrize(("messages", "problem"), BAD_MESSAGES, ids=[p for _, p in BAD_MESSAGES])
def test_bad_message_is_refused_before_any_request(client, stub, openai_kw, attempts, messages, problem):
    with pytest.raises(ml.ArgumentError) as caught:
        client.query(model="openai/gpt-4o", messages=messages, **openai_kw)
    assert caught.value.argument == "messages"
    assert problem in str(caught.value)
    assert attempts == [] and stub.requests == []


def test_good_message_shapes_reach_the_provider(client, stub, openai_kw):
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "add 1"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "2"},
        {"role": "user", "content": "and now?"},
    ]
    response = client.query(model="openai/gpt-4o", messages=messages, **openai_kw)
    assert response.text.endswith("and now?")
    assert [m["role"] for m in stub.requests[-1].body["messages"]][-3:] == ["assistant", "tool", "user"]


# -- the cache temperature policy --


def test_non_numeric_temperature_with_max_temperature_is_no_type_error(client, stub, openai_kw):
    client.set_cache(max_temperature=0)
    with pytest.raises(ml.ArgumentError) as caught:
        client.query(model="openai/gpt-4o", prompt="hi", temperature="hot", **openai_kw)
    assert caught.value.argument == "temperature" and stub.requests == []
    # Through provider_params it is sent as given; the policy cannot hold it, so it is never cached.
    for _ in range(2):
        response = client.query(model="openai/gpt-4o", prompt="hi", provider_params={"temperature": "hot"}, **openai_kw)
        assert response.cached is None
    assert len(stub.requests) == 2


# -- local encoding errors --


def test_local_encoding_error_is_an_argument_error_never_retried(client, stub, openai_kw, attempts):
    # A set passes our checks (provider_params are the caller's) but is no JSON: LiteLLM fails
    # before sending and used to report a transient connection error, retried with backoff.
    with pytest.raises(ml.ArgumentError) as caught:
        client.query(
            model="openai/gpt-4o",
            prompt="hi",
            provider_params={"labels": {"a", "b"}},
            fallbacks=[FALLBACK],
            **openai_kw,
        )
    error = caught.value
    assert not isinstance(error, ml.ProviderError) and error.transient is False
    assert "not JSON serializable" in str(error) and error.trace_id is not None
    assert attempts == ["openai/gpt-4o"]  # no retry, no fallback: it would fail the same way
    assert stub.requests == []


async def test_local_encoding_error_async(client, stub, openai_kw, attempts):
    with pytest.raises(ml.ArgumentError):
        await client.aquery(model="openai/gpt-4o", prompt="hi", provider_params={"labels": {"a"}}, **openai_kw)
    assert attempts == ["openai/gpt-4o"] and stub.requests == []


@pytest.mark.parametrize(
    ("model", "kw", "messages", "params"),
    [
        ("openai/gpt-4o", "openai_kw", [{"role": "user", "content": 123}], {}),
        ("openai/gpt-4o", "openai_kw", [{"role": "user", "content": "hi"}], {"temperature": float("nan")}),
        ("anthropic/claude-haiku-4-5", "anthropic_kw", [{"role": "user", "content": 123}], {}),
    ],
    ids=["openai-content-123", "openai-temperature-nan", "anthropic-content-123"],
)
def test_litellm_local_errors_are_classified_as_argument_errors(request, stub, model, kw, messages, params):
    """Past our checks (a caller of LiteLLM's own), these fail inside LiteLLM before any byte is
    sent; LiteLLM calls them a connection error or a 500, which must not be read as transient."""
    with pytest.raises(Exception) as caught:
        connection = request.getfixturevalue(kw)
        litellm_module().completion(model=model, messages=messages, max_retries=0, **connection, **params)
    assert stub.requests == []
    from mlflow_lite_plugin.core.errors import local_request_error

    local = local_request_error(caught.value, model)
    assert isinstance(local, ml.ArgumentError) and local.argument == "request"
    assert model in str(local)


def test_transport_errors_stay_transient(stub):
    """A refused connection is the provider's side: still a retried ProviderConnectionError."""
    from mlflow_lite_plugin.core.errors import local_request_error
    from mlflow_lite_plugin.testing import free_port

    with pytest.raises(Exception) as caught:
        litellm_module().completion(
            model="openai/gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            api_base=f"http://127.0.0.1:{free_port()}/v1",
            api_key="sk-x",
            max_retries=0,
        )
    assert local_request_error(caught.value, "openai/gpt-4o") is None
    error = from_provider_exception(caught.value, "openai/gpt-4o")
    assert isinstance(error, ml.ProviderConnectionError) and error.transient


# -- missing API keys --


@pytest.mark.parametrize(
    ("model", "base", "variable"),
    [("gpt-4o", "openai_base", "OPENAI_API_KEY"), ("anthropic/claude-haiku-4-5", "url", "ANTHROPIC_API_KEY")],
)
def test_missing_api_key_is_an_auth_error_never_retried(client, stub, attempts, monkeypatch, model, base, variable):
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ml.ProviderAuthError) as caught:
        client.query(model=model, prompt="hi", api_base=getattr(stub, base), num_retries=3)
    error = caught.value
    assert error.transient is False and error.status_code == 401
    assert variable in str(error) and "api_key=" in str(error)
    assert len(attempts) == 1 and stub.requests == []


def test_missing_api_key_in_a_stream_is_not_retried(client, stub, attempts, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ml.ProviderAuthError) as caught:
        list(client.stream(model="openai/gpt-4o", prompt="hi", api_base=stub.openai_base))
    assert "OPENAI_API_KEY" in str(caught.value) and len(attempts) == 1


def test_missing_key_moves_to_a_fallback_that_has_one(client, stub, attempts, monkeypatch):
    """Never retried, but a fallback on another provider may hold a key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-stub-not-a-real-key")
    monkeypatch.setenv("ANTHROPIC_API_BASE", stub.url)
    response = client.query(model="openai/gpt-4o", prompt="hi", api_base=stub.openai_base,
                            fallbacks=["anthropic/claude-haiku-4-5"])
    assert response.model == "anthropic/claude-haiku-4-5"
    assert attempts == ["openai/gpt-4o", "anthropic/claude-haiku-4-5"]


def test_rejected_key_from_the_provider_is_an_auth_error(client, stub, openai_kw, attempts):
    stub.inject(status=401)
    with pytest.raises(ml.ProviderAuthError) as caught:
        client.query(model="openai/gpt-4o", prompt="hi", **openai_kw)
    assert caught.value.status_code == 401 and len(attempts) == 1 and len(stub.requests) == 1


# -- regex rules --

_CATASTROPHIC = """
import json, time
from mlflow_lite_plugin.controls.validation.rules import Validator
out = {}
for pattern in ("(a+)+$", "(a|a)+$"):
    started = time.monotonic()
    result = Validator({"regex": pattern}).check("a" * 40 + "!")
    out[pattern] = {"errors": result.errors, "seconds": time.monotonic() - started}
print(json.dumps(out))
"""


def test_backtracking_regex_is_bounded_not_a_hang():
    """In a subprocess: Python's ``re`` cannot be interrupted (it holds the GIL), so a hang there
    would stop the test run; this one is killed instead and fails."""
    try:
        done = subprocess.run([sys.executable, "-c", _CATASTROPHIC], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a backtracking regex rule ran for more than 60 s on a 41-character answer")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["(a+)+$"]["errors"] == ["regex: no match for '(a+)+$'"]
    (error,) = out["(a|a)+$"]["errors"]
    assert error.startswith("regex: '(a|a)+$' gave up after")


def test_ui_and_query_rules_compile_through_the_same_bounded_engine(client):
    """The playground sends its rules as validate= (ui.playground.call_arguments), so every
    path builds the same Validator; a bounded search fails the answer, it does not raise."""
    from mlflow_lite_plugin.apps.ui.playground import RunRequest, call_arguments

    kwargs = call_arguments(RunRequest(model="lite/echo", prompt="a" * 30 + "!", validation={"regex": "(a|a)+$"}))
    assert kwargs["validate"] == {"regex": "(a|a)+$"} and kwargs["on_fail"] == "return"
    response = client.query(**kwargs)
    assert response.validation.passed is False
    assert "gave up after" in response.validation.errors[0]


def test_compiled_patterns_keep_their_flags():
    validator = Validator({"regex": [re.compile("^answer", re.I | re.M), re.compile(r"\w+$", re.A)]})
    assert validator.check("intro\nANSWER: ok").passed
    assert not validator.check("intro\nANSWER: é").passed  # \w is ASCII only under re.A
    assert validator.describe()["regex"] == ["(?im)^answer", r"\w+$"]
    with pytest.raises(ml.ArgumentError, match="does not compile"):
        Validator({"regex": "(unclosed"})

