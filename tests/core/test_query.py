"""ml.query through LiteLLM's real HTTP path against the loopback stub (OpenAI, Anthropic, Ollama)."""

from __future__ import annotations

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.testing.stub_server import count_words

from tests.helpers import KEY


def _gpt4o_price() -> tuple[float, float]:
    from mlflow_lite_plugin.core.model_names import litellm_module

    entry = litellm_module().model_cost["gpt-4o"]
    return entry["input_cost_per_token"], entry["output_cost_per_token"]


def test_one_liner_openai(default_client, stub, openai_kw):
    r = ml.query(model="gpt-4o", prompt="How do I reset my password?", **openai_kw)

    assert r.text == "Stub answer from gpt-4o: How do I reset my password?"
    assert str(r) == r.text
    assert r.model == "openai/gpt-4o"
    assert r.usage == {"prompt_tokens": 6, "completion_tokens": count_words(r.text), "total_tokens": 6 + 10}
    price_in, price_out = _gpt4o_price()
    assert r.cost == pytest.approx(6 * price_in + 10 * price_out)
    assert r.latency > 0
    assert r.cached is None
    assert r.finish_reason == "stop"
    assert r.trace_id and r.trace_id.startswith("tr-")
    assert len(stub.requests_to("/chat/completions")) == 1


def test_system_messages_and_passthrough_kwargs(client, stub, openai_kw):
    client.query(
        model="gpt-4o", prompt="Hi", system="You are terse.", temperature=0.2, max_tokens=50, seed=7, **openai_kw
    )
    body = stub.requests[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50 and body["seed"] == 7

    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    r = client.query(model="gpt-4o", messages=messages, **openai_kw)
    assert r.text.endswith(": second")
    assert stub.requests[-1].body["messages"] == messages


def test_api_key_reaches_provider_but_not_trace(client, stub, openai_kw):
    from tests.helpers import get_trace

    r = client.query(model="gpt-4o", prompt="secret test", **openai_kw)
    assert stub.requests[-1].headers.get("authorization") == f"Bearer {KEY}"
    trace_json = get_trace(r.trace_id).to_json()
    assert KEY not in trace_json


def test_anthropic_alias_resolves_and_is_priced(client, stub, anthropic_kw):
    r = client.query(model="claude-3-5-sonnet", prompt="How do I reset my password?", **anthropic_kw)
    assert r.model == "anthropic/claude-sonnet-4-5"
    assert r.requested_model == "claude-3-5-sonnet"
    assert stub.requests_to("/v1/messages")[-1].body["model"] == "claude-sonnet-4-5"
    assert r.usage["prompt_tokens"] == 6
    assert r.cost is not None and r.cost > 0


@pytest.mark.parametrize(
    "alias, target",
    [
        ("claude-3-haiku", "anthropic/claude-haiku-4-5"),
        ("claude-3-5-haiku", "anthropic/claude-haiku-4-5"),
        ("gpt-3.5-turbo", "openai/gpt-3.5-turbo"),
    ],
)
def test_old_aliases_resolve_to_priced_models(client, alias, target):
    ref = client.models.resolve(alias)
    assert ref.name == target
    assert client.pricing.price(ref) is not None


def test_custom_alias(client, stub, openai_kw):
    client.set_model_alias("support-model", "openai/gpt-4o-mini")
    r = client.query(model="support-model", prompt="hello", **openai_kw)
    assert r.model == "openai/gpt-4o-mini"
    assert stub.requests[-1].body["model"] == "gpt-4o-mini"


def test_env_var_conventions(client, stub, monkeypatch):
    """OPENAI_BASE_URL/OPENAI_API_KEY and ANTHROPIC_API_BASE/ANTHROPIC_API_KEY, as in LiteLLM."""
    monkeypatch.setenv("OPENAI_BASE_URL", stub.openai_base)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_BASE", stub.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    assert client.query(model="gpt-4o-mini", prompt="env").text.startswith("Stub answer from gpt-4o-mini")
    assert client.query(model="claude-3-5-haiku", prompt="env").text.startswith("Stub answer from claude-haiku-4-5")
    assert stub.requests_to("/chat/completions") and stub.requests_to("/v1/messages")


@pytest.mark.parametrize("model, path", [("ollama/llama3", "/api/generate"), ("ollama_chat/llama3", "/api/chat")])
def test_local_ollama(client, stub, model, path):
    r = client.query(model=model, prompt="Are you local?", api_base=stub.url)
    assert "Are you local?" in r.text
    assert r.model == model
    assert r.usage["completion_tokens"] == count_words(r.text.strip())
    assert r.cost == 0.0  # local runtime: known to be free, not unknown
    assert stub.requests_to(path)


def test_openai_compatible_server_unknown_price(client, stub, openai_kw, caplog):
    """vLLM / llama.cpp style: any OpenAI-compatible api_base; an unknown price is None, warned once."""
    with caplog.at_level("WARNING", logger="mlflow_lite_plugin"):
        r1 = client.query(model="openai/my-local-llama", prompt="one", **openai_kw)
        r2 = client.query(model="openai/my-local-llama", prompt="two", **openai_kw)
    assert r1.text.startswith("Stub answer from my-local-llama") and r2.usage["total_tokens"] > 0
    assert r1.cost is None and r2.cost is None
    warnings = [rec for rec in caplog.records if "No known price" in rec.getMessage()]
    assert len(warnings) == 1 and "my-local-llama" in warnings[0].getMessage()

    client.set_model_price("openai/my-local-llama", input_per_million=1.0, output_per_million=2.0)
    r3 = client.query(model="openai/my-local-llama", prompt="three", **openai_kw)
    assert r3.cost == pytest.approx(r3.prompt_tokens * 1e-6 + r3.completion_tokens * 2e-6)


def test_price_override_applies_to_known_model(client, stub, openai_kw):
    client.set_model_price("gpt-4o", input_per_million=1000.0, output_per_million=0.0)
    r = client.query(model="gpt-4o", prompt="override", **openai_kw)
    assert r.cost == pytest.approx(r.prompt_tokens * 1e-3)


def test_client_defaults_and_side_by_side(stub, openai_kw):
    a = ml.Client(model="gpt-4o", temperature=0.0, **openai_kw)
    b = ml.Client(model="gpt-4o-mini", temperature=1.0, **openai_kw)
    ra, rb = a.query("same prompt"), b.query("same prompt")
    assert (ra.model, rb.model) == ("openai/gpt-4o", "openai/gpt-4o-mini")
    temps = [r.body["temperature"] for r in stub.requests_to("/chat/completions")]
    assert temps == [0.0, 1.0]
    assert a.query("override", temperature=0.5) and stub.requests[-1].body["temperature"] == 0.5


async def test_aquery(client, stub, openai_kw):
    r = await client.aquery(model="gpt-4o", prompt="async hello", **openai_kw)
    assert r.text.endswith("async hello") and r.cost and r.trace_id


async def test_aquery_one_liner(default_client, stub, openai_kw):
    r = await ml.aquery(model="gpt-4o", prompt="async one-liner", **openai_kw)
    assert r.text.endswith("async one-liner")
