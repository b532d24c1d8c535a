"""validate= on real calls: on_fail raise/return/retry against the stub server, caching, budgets,
tracing, and streams validated as they arrive (stub streams over SSE)."""

from __future__ import annotations

import json

import pytest

import mlflow_lite_plugin as ml

from tests.helpers import get_trace

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "bio": {"type": "string"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
LONG_BIO = " ".join(f"word{i}" for i in range(60))


def replies(*texts: str):
    """A stub reply function answering ``texts`` in turn (the last one repeats)."""
    answers = list(texts)

    def reply(model, messages):
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return reply


def feedback(trace, name: str):
    return [a for a in trace.info.assessments if a.name == name]


# -- non-streaming --


def test_passing_answer_has_validation_on_response_and_trace(client, stub, openai_kw):
    stub.reply = replies("First, the process: step one, then step two.")
    r = client.query(
        model="gpt-4o", prompt="How?", validate={"max_length": 100, "required_words": ["step", "process"]}, **openai_kw
    )
    assert r.validation.passed and r.validation.errors == [] and r.validation.attempts == 1
    trace = get_trace(r.trace_id)
    root = trace.data.spans[0]
    assert root.attributes["mlflow_lite.validation.passed"] is True
    assert root.attributes["mlflow_lite.validation.rules"]["max_length"] == 100
    (fb,) = feedback(trace, "validation")
    assert fb.value is True and fb.source.source_type == "CODE"


def test_default_on_fail_raises_with_the_response_and_is_not_cached(client, stub, openai_kw):
    client.set_cache()
    stub.reply = replies("no json here")
    with pytest.raises(ml.ValidationError) as info:
        client.query(model="gpt-4o", prompt="Give JSON", validate={"format": "json"}, **openai_kw)
    error = info.value
    assert error.response.text == "no json here"
    assert error.response.validation.passed is False
    assert any(e.startswith("format") for e in error.errors)
    assert error.response.cost is not None and error.response.cost > 0  # it was paid for
    trace = get_trace(error.trace_id)
    assert trace.info.state == "ERROR"
    assert "ValidationError" in trace.data.spans[0].attributes["mlflow_lite.error"]
    with pytest.raises(ml.ValidationError):  # the invalid answer was not cached
        client.query(model="gpt-4o", prompt="Give JSON", validate={"format": "json"}, **openai_kw)
    assert len(stub.requests) == 2


def test_on_fail_return_gives_the_invalid_answer_back(client, stub, openai_kw):
    client.set_cache()
    stub.reply = replies("This answer contains a forbidden secret.")
    rules = {"forbidden_words": ["secret"], "min_length": 5}
    r = client.query(model="gpt-4o", prompt="Tell me", validate=rules, on_fail="return", **openai_kw)
    assert r.validation.passed is False
    assert r.validation.failed_rules == ["forbidden_words"]
    assert "secret" in r.validation.errors[0]
    client.query(model="gpt-4o", prompt="Tell me", validate=rules, on_fail="return", **openai_kw)
    assert len(stub.requests) == 2  # never cached
    assert client.cache_stats()["hits"] == 0


def test_retry_repairs_a_bad_answer_every_attempt_traced_and_costed(client, stub, openai_kw):
    client.set_cache()
    good = json.dumps({"name": "Ada", "age": 36})
    stub.reply = replies("Sure! Ada is 36.", good)
    r = client.query(
        model="gpt-4o", prompt="Ada as JSON", validate={"schema": PERSON}, on_fail="retry", max_attempts=3, **openai_kw
    )
    assert r.text == good and r.validation.passed and r.validation.attempts == 2
    assert r.validation.value == {"name": "Ada", "age": 36}
    # the re-ask shows the model its answer and what was wrong with it
    second = stub.requests[-1].body["messages"]
    assert second[0] == {"role": "user", "content": "Ada as JSON"}
    assert second[1] == {"role": "assistant", "content": "Sure! Ada is 36."}
    assert second[2]["role"] == "user" and "json" in second[2]["content"].lower()
    # both attempts are paid: the response's cost and usage add them up
    trace = get_trace(r.trace_id)
    attempts = [s for s in trace.data.spans if s.parent_id == trace.data.spans[0].span_id]
    assert [s.name for s in attempts] == ["openai/gpt-4o (attempt 1)", "openai/gpt-4o (attempt 1, re-ask 1)"]
    costs = [s.attributes["mlflow.llm.cost"]["total_cost"] for s in attempts]
    assert r.cost == pytest.approx(sum(costs))
    assert r.usage["prompt_tokens"] == sum(s.attributes["mlflow.chat.tokenUsage"]["input_tokens"] for s in attempts)
    assert trace.data.spans[0].attributes["mlflow_lite.validation.attempts"] == 2
    assert [e.name for e in trace.data.spans[0].events].count("validation_reask") == 1
    # the repaired answer is cached for the original question
    again = client.query(model="gpt-4o", prompt="Ada as JSON", validate={"schema": PERSON}, **openai_kw)
    assert again.cached == "exact" and again.text == good and len(stub.requests) == 2


def test_retry_gives_up_after_max_attempts(client, stub, openai_kw):
    stub.reply = replies("still not json")
    with pytest.raises(ml.ValidationError) as info:
        client.query(
            model="gpt-4o", prompt="JSON!", validate={"format": "json"}, on_fail="retry", max_attempts=3, **openai_kw
        )
    assert info.value.validation.attempts == 3
    assert "after 3 attempts" in str(info.value)
    assert len(stub.requests) == 3


async def test_retry_works_with_aquery(client, stub, openai_kw):
    stub.reply = replies("nope", '{"ok": true}')
    r = await client.aquery(model="gpt-4o", prompt="JSON", validate={"format": "json"}, on_fail="retry", **openai_kw)
    assert r.validation.passed and r.validation.attempts == 2 and r.validation.value == {"ok": True}


def test_callable_rule_and_anthropic_wire_format(client, stub, anthropic_kw):
    stub.reply = replies("ALL CAPS ANSWER")

    def lowercase(text):
        return text == text.lower() or "answer must be lower case"

    r = client.query(model="claude-3-5-sonnet", prompt="hi", validate=lowercase, on_fail="return", **anthropic_kw)
    assert r.validation.errors == ["lowercase: answer must be lower case"]


@pytest.mark.parametrize(
    "rules, named",
    [
        ({"max_lenght": 10}, "max_lenght"),
        ({"schema": {"type": "objekt"}}, "schema"),
        ({"regex": "([a-z"}, "regex"),
        ({"format": "jsonn"}, "format"),
    ],
)
def test_bad_rules_are_refused_before_any_call(client, stub, openai_kw, rules, named):
    with pytest.raises(ml.ArgumentError, match=named) as info:
        client.query(model="gpt-4o", prompt="x", validate=rules, **openai_kw)
    assert info.value.argument == "validate"
    assert stub.requests == []


def test_bad_on_fail_and_orphan_options_are_refused(client, stub, openai_kw):
    with pytest.raises(ml.ArgumentError, match="on_fail"):
        client.query(model="gpt-4o", prompt="x", validate={"format": "json"}, on_fail="ignore", **openai_kw)
    with pytest.raises(ml.ArgumentError, match="only applies with validate"):
        client.query(model="gpt-4o", prompt="x", on_fail="retry", **openai_kw)
    assert stub.requests == []


def test_cached_answer_must_pass_this_calls_rules(client, stub, openai_kw):
    client.set_cache()
    stub.reply = replies("plain text answer", '{"a": 1}')
    client.query(model="gpt-4o", prompt="same question", **openai_kw)  # cached, no rules
    r = client.query(model="gpt-4o", prompt="same question", validate={"format": "json"}, **openai_kw)
    assert r.cached is None and r.validation.passed and len(stub.requests) == 2
    hit = client.query(model="gpt-4o", prompt="same question", validate={"format": "json"}, **openai_kw)
    assert hit.cached == "exact" and hit.validation.passed and hit.text == '{"a": 1}'


def test_budget_reserves_for_every_possible_reask(client, tmp_path, openai_kw):
    from mlflow_lite_plugin.controls.budget.stage import BudgetStage

    client.set_budget(daily_limit=100.0, path=str(tmp_path / "budget.db"))
    stage = client.pipeline.get(BudgetStage.name)
    one = stage.worst_case(client._call("query", "hi", "gpt-4o", None, None, {"max_tokens": 100}))[0]
    three = stage.worst_case(
        client._call(
            "query", "hi", "gpt-4o", None, None,
            {"max_tokens": 100, "validate": {"format": "json"}, "on_fail": "retry", "max_attempts": 3},
        )
    )[0]
    assert three > 3 * one


# -- streaming --


def test_stream_validated_passes_a_valid_document(client, stub, openai_kw):
    doc = json.dumps({"name": "Ada", "age": 36, "bio": LONG_BIO})
    stub.reply = replies(doc)
    stream = client.stream_validated(model="gpt-4o", prompt="Ada", schema=PERSON, **openai_kw)
    assert "".join(stream) == doc
    assert stream.response.validation.passed and stream.response.validation.value["age"] == 36


@pytest.mark.parametrize(
    "doc, stop_after, rule",
    [
        # a string where the schema wants an integer: certain as soon as the quote arrives
        (
            '{"name": "Ada", "age": "thirty-six", "bio": "' + LONG_BIO + '"}',
            '{"name": "Ada", "age": "thirty-six", ',
            "schema",
        ),
        # a key the schema forbids (additionalProperties: false)
        ('{"name": "Ada", "salary": 5, "bio": "' + LONG_BIO + '"}', '{"name": "Ada", "salary": ', "schema"),
        # broken syntax: a missing comma
        ('{"name": "Ada" "age": 36, "bio": "' + LONG_BIO + '"}', '{"name": "Ada" "age": ', "json"),
    ],
)
def test_stream_validated_stops_at_the_first_certain_violation(client, stub, openai_kw, doc, stop_after, rule):
    stub.reply = replies(doc)
    stream = client.stream_validated(model="gpt-4o", prompt="Ada", schema=PERSON, **openai_kw)
    received = []
    with pytest.raises(ml.ValidationError) as info:
        for chunk in stream:
            received.append(chunk)
    error = info.value
    assert error.read == len(stop_after)  # how much was read, including the violating chunk
    assert doc.startswith("".join(received)) and len("".join(received)) < error.read < len(doc)
    assert error.validation.failed_rules == [rule]
    assert error.response.finish_reason == "cancelled" and error.response.text == stop_after
    assert error.response.cost is not None and error.response.cost > 0  # what was streamed is paid
    trace = get_trace(error.trace_id)
    root = trace.data.spans[0]
    assert root.attributes["mlflow_lite.validation.stopped_at_char"] == len(stop_after)
    assert root.attributes["mlflow_lite.validation.stop_rule"] == rule
    assert root.attributes["mlflow_lite.stopped_early"] is True
    assert "stream_stopped" in [e.name for e in root.events]
    assert trace.data.spans[1].attributes["mlflow_lite.stopped_early"] is True


def test_stream_schema_checked_in_full_at_the_end(client, stub, openai_kw):
    stub.reply = replies('{"name": "Ada"}')  # "age" is required: known only when the object closes
    with pytest.raises(ml.ValidationError, match="age"):
        list(client.stream_validated(model="gpt-4o", prompt="Ada", schema=PERSON, **openai_kw))


def test_stream_text_rules_checked_incrementally_anthropic(client, stub, anthropic_kw):
    stub.reply = replies("This is fine until the word classified appears, and then much more text follows here")
    stream = client.stream(
        model="claude-3-5-sonnet", prompt="x", validate={"forbidden_words": ["classified"]}, **anthropic_kw
    )
    with pytest.raises(ml.ValidationError) as info:
        list(stream)
    assert info.value.read == len("This is fine until the word classified ")
    stub.reply = replies("one two three four five six seven eight")
    with pytest.raises(ml.ValidationError, match="max_length"):
        list(client.stream(model="claude-3-5-sonnet", prompt="y", validate={"max_length": 12}, **anthropic_kw))


def test_stream_on_fail_return_ends_quietly(client, stub, openai_kw):
    stub.reply = replies('["not", "an", "object", "at", "all"]')
    stream = client.stream_validated(model="gpt-4o", prompt="x", schema=PERSON, on_fail="return", **openai_kw)
    chunks = list(stream)
    assert chunks == []  # the first chunk already shows an array where an object is required
    assert stream.response.validation.passed is False and stream.response.validation.failed_rules == ["schema"]


def test_stream_validated_needs_rules_and_refuses_retry(client, stub, openai_kw):
    with pytest.raises(ml.ArgumentError, match="schema"):
        client.stream_validated(model="gpt-4o", prompt="x", **openai_kw)
    with pytest.raises(ml.ArgumentError, match="retry"):
        client.stream_validated(model="gpt-4o", prompt="x", schema=PERSON, on_fail="retry", **openai_kw)
    assert stub.requests == []


def test_stream_validated_one_liner(default_client, stub, openai_kw):
    stub.reply = replies('{"name": "Ada", "age": 36}')
    chunks = list(ml.stream_validated(model="gpt-4o", prompt="Ada", schema=PERSON, **openai_kw))
    assert json.loads("".join(chunks)) == {"name": "Ada", "age": 36}
