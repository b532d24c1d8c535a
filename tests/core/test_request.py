"""Request building: what the provider is sent for prompt/messages/system, client defaults under
a call's own keywords, and every bad argument refused with a typed error before any network call."""

from __future__ import annotations

import math

import pytest

import mlflow_lite_plugin as ml


@pytest.fixture
def quiet(openai_kw) -> ml.Client:
    """A client on the stub with no tracing: these tests read what the stub received."""
    return ml.Client(model="gpt-4o", tracing=False, **openai_kw)


def _sent(stub) -> list[dict]:
    (request,) = stub.requests
    return request.body["messages"]


def test_prompt_becomes_one_user_message(quiet, stub):
    quiet.query("hello there")
    assert _sent(stub) == [{"role": "user", "content": "hello there"}]


def test_system_goes_first_before_the_prompt(quiet, stub):
    quiet.query("hello", system="Be brief.")
    assert _sent(stub) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]


def test_messages_are_sent_as_given_with_system_in_front(quiet, stub):
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    r = quiet.query(messages=conversation, system="Be kind.")
    assert _sent(stub) == [{"role": "system", "content": "Be kind."}, *conversation]
    assert r.text == "Stub answer from gpt-4o: How are you?"  # the last user message is the question
    assert conversation[0] == {"role": "user", "content": "Hi"}  # the caller's list is not changed


def test_call_keywords_override_client_defaults(stub, openai_kw):
    client = ml.Client(model="gpt-4o", tracing=False, temperature=0.2, max_tokens=50, **openai_kw)
    client.query("defaults")
    client.query("overridden", temperature=0.9, model="gpt-4o-mini")
    first, second = (q.body for q in stub.requests)
    assert (first["model"], first["temperature"], first["max_tokens"]) == ("gpt-4o", 0.2, 50)
    assert (second["model"], second["temperature"], second["max_tokens"]) == ("gpt-4o-mini", 0.9, 50)


def test_provider_params_reach_the_provider_verbatim(quiet, stub):
    quiet.query("extra", provider_params={"vendor_flag": {"nested": [1, 2]}}, seed=7, stop=["END"], user="u-1")
    body = stub.requests[-1].body
    assert body["vendor_flag"] == {"nested": [1, 2]}
    assert (body["seed"], body["stop"], body["user"]) == (7, ["END"], "u-1")


@pytest.mark.parametrize(
    ("kwargs", "argument", "message"),
    [
        ({"prompt": "x", "system": 3}, "system", "must be a string"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages", "role must be one of"),
        ({"messages": [{"role": "user"}]}, "messages", "has no 'content'"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages", "tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "weight": math.nan}]}, "messages", "not a finite number"),
        ({"prompt": "x", "seed": 1.5}, "seed", "whole number"),
        ({"prompt": "x", "stop": 5}, "stop", "string or a list of strings"),
        ({"prompt": "x", "user": 5}, "user", "must be a string"),
        ({"prompt": "x", "tags": ["team"]}, "tags", "dict of str to str"),
        ({"prompt": "x", "tags": {"team": 1}}, "tags", "dict of str to str"),  # MLflow tags are text
        ({"prompt": "x", "namespace": ""}, "namespace", "non-empty string"),
        ({"prompt": "x", "cache": "yes"}, "cache", "True or False"),
        ({"prompt": "x", "provider_params": ["flag"]}, "provider_params", "must be a dict"),
        ({"prompt": "x", "provider_params": {"p": math.inf}}, "provider_params", "not a finite number"),
        ({"prompt": "x", "image": 42}, "image", "must be a path, URL, bytes"),
        ({"prompt": "x", "max_tokenz": 5}, "max_tokenz", "Did you mean 'max_tokens'"),
    ],
)
def test_bad_arguments_are_typed_and_refused_before_the_network(quiet, stub, kwargs, argument, message):
    for call in (quiet.query, quiet.stream):  # streams are built by the same checks
        with pytest.raises(ml.ArgumentError, match=message) as info:
            call(**kwargs)
        assert info.value.argument == argument and isinstance(info.value, ValueError)
    assert stub.requests == []


async def test_async_calls_refuse_bad_arguments_the_same_way(quiet, stub):
    with pytest.raises(ml.ArgumentError) as info:
        await quiet.aquery("x", seed="seven")
    assert info.value.argument == "seed" and stub.requests == []


def test_no_model_anywhere_is_an_argument_error(stub, openai_kw):
    with pytest.raises(ml.ArgumentError) as info:
        ml.Client(tracing=False, **openai_kw).query("which model?")
    assert info.value.argument == "model" and stub.requests == []


def test_client_defaults_are_checked_when_a_call_uses_them(stub, openai_kw):
    client = ml.Client(model="gpt-4o", tracing=False, temprature=0.3, **openai_kw)
    with pytest.raises(ml.ArgumentError, match="Did you mean 'temperature'"):
        client.query("x")
    assert stub.requests == []
