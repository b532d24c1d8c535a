"""The Client's public surface: construction, the default client behind the ml.* one-liners,
set_default_client, and what the set_* methods return."""

from __future__ import annotations

import inspect

import pytest

import mlflow_lite_plugin as ml

ECHO = "lite/echo"


class Seen(ml.Stage):
    """Records the prompt of every call that runs through the client it is added to."""

    name, order = "seen", 210

    def __init__(self):
        self.prompts: list[str] = []

    def before(self, call):
        self.prompts.append(call.request.prompt_text)


def test_construction_model_defaults_and_aliases():
    client = ml.Client(ECHO, tracing=False, temperature=0.1, aliases={"cheap": ECHO})
    assert client.model == ECHO and client.defaults == {"temperature": 0.1}
    assert client.query("default model").text == "Echo: default model"
    assert client.query("by alias", model="cheap").model == ECHO


def test_tracing_false_gives_responses_without_a_trace():
    r = ml.Client(ECHO, tracing=False).query("untraced")
    assert r.text == "Echo: untraced" and r.trace_id is None


def test_the_default_client_is_created_once_and_kept():
    assert ml.get_default_client() is ml.get_default_client()
    assert isinstance(ml.get_default_client(), ml.Client)


def test_set_default_client_puts_a_client_behind_the_one_liners(default_client):
    seen = Seen()
    default_client.add_stage(seen)
    assert ml.get_default_client() is default_client
    assert ml.query(model=ECHO, prompt="via the one-liner").text == "Echo: via the one-liner"
    assert [chunk for chunk in ml.stream(model=ECHO, prompt="streamed")]  # noqa: C416 - consume it
    assert seen.prompts == ["via the one-liner", "streamed"]


async def test_async_one_liners_use_the_default_client(default_client):
    seen = Seen()
    default_client.add_stage(seen)
    assert (await ml.aquery(model=ECHO, prompt="async one-liner")).text == "Echo: async one-liner"
    assert seen.prompts == ["async one-liner"]


def test_one_liner_settings_land_on_the_default_client(default_client):
    ml.set_cache(enabled=True)
    ml.query(model=ECHO, prompt="cached twice")
    assert ml.query(model=ECHO, prompt="cached twice").cached == "exact"
    assert ml.cache_stats() == default_client.cache_stats() and default_client.cache_stats()["hits"] == 1
    ml.set_model_alias("tiny", ECHO)
    assert default_client.query("aliased", model="tiny").model == ECHO


def test_a_replaced_default_no_longer_receives_calls(default_client):
    first_seen, second_seen = Seen(), Seen()
    default_client.add_stage(first_seen)
    ml.query(model=ECHO, prompt="to the first")
    second = ml.Client(tracing=False)
    second.add_stage(second_seen)
    ml.set_default_client(second)
    ml.query(model=ECHO, prompt="to the second")
    assert (first_seen.prompts, second_seen.prompts) == (["to the first"], ["to the second"])


@pytest.mark.parametrize("not_a_client", [None, "client", object(), ml.Client])
def test_set_default_client_refuses_anything_but_a_client(default_client, not_a_client):
    with pytest.raises(ml.ArgumentError) as info:
        ml.set_default_client(not_a_client)
    assert info.value.argument == "client" and ml.get_default_client() is default_client


def test_one_liners_have_the_methods_signatures_without_self():
    for name in ("query", "aquery", "stream", "batch", "set_budget", "set_rate_limit", "set_cache",
                 "set_semantic_cache", "set_fallbacks", "query_with_template", "record_feedback"):
        method = inspect.signature(getattr(ml.Client, name))
        one_liner = inspect.signature(getattr(ml, name))
        assert list(one_liner.parameters) == list(method.parameters)[1:], name
        assert inspect.iscoroutinefunction(getattr(ml, name)) == inspect.iscoroutinefunction(getattr(ml.Client, name))


def test_set_methods_return_none(tmp_path):
    client = ml.Client(ECHO, tracing=False)
    results = [
        client.set_cache(enabled=True),
        client.set_budget(daily_limit=5.0, path=str(tmp_path / "budget.db")),
        client.set_alert(0.5, callback=lambda event: None),
        client.set_rate_limit(requests_per_minute=600),
        client.set_fallbacks(["gpt-4o-mini"]),
        client.set_model_alias("x", ECHO),
        client.set_model_price(ECHO, input_per_million=0.0, output_per_million=0.0),
        client.set_experiment("returns"),
        client.set_tracing(False),
        client.set_routing({"fast": ECHO, "quality": ECHO}),
        client.add_stage(Seen()),
    ]
    assert results == [None] * len(results)
    assert client.query("still answers").text == "Echo: still answers"


def test_bad_settings_are_argument_errors_and_change_nothing():
    client = ml.Client(ECHO, tracing=False, temperature=0.3)
    with pytest.raises(ml.ArgumentError) as info:
        client.set_fallbacks("gpt-4o-mini")
    assert info.value.argument == "fallbacks" and client.defaults == {"temperature": 0.3}
    with pytest.raises(ml.ArgumentError) as info:
        client.set_experiment("  ")
    assert info.value.argument == "name"
    with pytest.raises(ml.ArgumentError) as info:
        client.set_tracing(True, export="carrier-pigeon")
    assert info.value.argument == "export"
