"""The offline model lite/echo, token counting and cost estimates."""

from __future__ import annotations

import logging

import pytest

import mlflow_lite_plugin as ml


def test_offline_model_is_deterministic_and_free(client):
    a = client.query(model="lite/echo", prompt="same input")
    b = client.query(model="lite/echo", prompt="same input")
    assert a.text == b.text == "Echo: same input"
    assert a.usage == b.usage and a.usage["prompt_tokens"] > 0 and a.usage["completion_tokens"] > 0
    assert a.cost == 0.0  # known to be free: not None
    assert a.model == "lite/echo" and a.provider == "lite"


def test_offline_model_streams(client):
    stream = client.stream(model="lite/echo", prompt="one two three")
    chunks = list(stream)
    assert chunks == ["Echo: ", "one ", "two ", "three"]
    assert stream.response.usage == client.query(model="lite/echo", prompt="one two three").usage


def test_unknown_offline_model_is_an_error(client):
    with pytest.raises(ml.ProviderError, match="unknown offline model"):
        client.query(model="lite/nope", prompt="hi")


def test_count_tokens_uses_the_models_tokenizer(client):
    from mlflow_lite_plugin.core.model_names import litellm_module

    text = "Your long prompt here..."
    assert client.count_tokens(text, model="gpt-4o") == litellm_module().token_counter(model="gpt-4o", text=text)
    assert client.count_tokens("", model="gpt-4o") == 0
    messages = [{"role": "user", "content": text}]
    assert client.count_tokens(messages, model="gpt-4o") > client.count_tokens(text, model="gpt-4o")


def test_estimate_cost_is_input_tokens_times_price(client):
    from mlflow_lite_plugin.core.model_names import litellm_module

    price = litellm_module().model_cost["gpt-4o"]["input_cost_per_token"]
    assert client.estimate_cost(1000, model="gpt-4o") == pytest.approx(1000 * price)
    assert client.estimate_cost(0, model="gpt-4o") == 0.0
    # an alias is priced as its target
    sonnet = litellm_module().model_cost["claude-sonnet-4-5"]["input_cost_per_token"]
    assert client.estimate_cost(100, model="claude-3-5-sonnet") == pytest.approx(100 * sonnet)


def test_one_liners_count_and_estimate(default_client):
    tokens = ml.count_tokens("Your long prompt here...", model="gpt-4o")
    assert isinstance(tokens, int) and tokens > 0
    assert ml.estimate_cost(tokens, model="gpt-4o") > 0


def test_unknown_price_is_none_with_one_warning(client, caplog):
    with caplog.at_level(logging.WARNING, logger="mlflow_lite_plugin"):
        assert client.estimate_cost(100, model="openai/brand-new-model") is None
        assert client.estimate_cost(200, model="openai/brand-new-model") is None
    assert sum("No known price" in r.getMessage() for r in caplog.records) == 1


def test_set_model_price_rejects_bad_values(client):
    with pytest.raises(ml.ArgumentError, match="input_per_million"):
        client.set_model_price("gpt-4o", input_per_million=-1, output_per_million=1)
    with pytest.raises(ml.ArgumentError, match="tokens"):
        client.estimate_cost(-5, model="gpt-4o")


def test_set_model_price_one_liner(default_client):
    ml.set_model_price("openai/in-house", input_per_million=2.0, output_per_million=4.0)
    assert ml.estimate_cost(1_000_000, model="openai/in-house") == pytest.approx(2.0)


def test_listed_prices_are_read_once_and_follow_litellm_register_model(monkeypatch):
    """Resolving a model in LiteLLM's price map costs ~1 ms and ran several times per call: it is
    remembered, until LiteLLM's map changes (``litellm.register_model``)."""
    import uuid

    from mlflow_lite_plugin.core.model_names import ModelRef, litellm_module
    from mlflow_lite_plugin.core.pricing import Pricing

    litellm = litellm_module()
    name = f"openai/priced-{uuid.uuid4().hex[:8]}"
    litellm.register_model({name: {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
                                   "litellm_provider": "openai", "mode": "chat"}})
    asked = []
    lookup = litellm.cost_per_token

    def counted(*args, **kwargs):
        asked.append(kwargs.get("model"))
        return lookup(*args, **kwargs)

    monkeypatch.setattr(litellm, "cost_per_token", counted)
    pricing, model = Pricing(), ModelRef(name, name, "openai")
    prices = {pricing.price(model) for _ in range(5)}
    assert [(p.input, p.output) for p in prices] == [(1e-6, 2e-6)]
    assert pricing.highest_price(model).input == 1e-6
    assert len(asked) == 1
    litellm.register_model({name: {"input_cost_per_token": 3e-6, "output_cost_per_token": 4e-6,
                                   "litellm_provider": "openai", "mode": "chat"}})
    assert (pricing.price(model).input, pricing.price(model).output) == (3e-6, 4e-6)
    assert pricing.highest_price(model).output == 4e-6
