"""query_with_template end to end: built-ins and registry prompts, against the stub server, traced."""

from __future__ import annotations

import json
import uuid

import pytest

import mlflow_lite_plugin as ml

from tests.helpers import get_trace


def reply_with(text: str):
    return lambda model, messages: text


def test_summarize_one_liner_renders_traces_and_validates(default_client, stub, openai_kw):
    stub.reply = reply_with("A short summary of the text.")
    long_text = "MLflow tracks experiments. " * 50
    r = ml.query_with_template(template="summarize", input=long_text, model="gpt-4o", **openai_kw)
    assert r.text == "A short summary of the text." and r.validation.passed
    sent = stub.requests[-1].body["messages"]
    assert sent[0]["role"] == "system" and sent[-1]["role"] == "user"
    assert long_text.strip() in sent[-1]["content"] and "{{" not in sent[-1]["content"]
    root = get_trace(r.trace_id).data.spans[0]
    assert root.attributes["mlflow_lite.template"] == "summarize"
    assert root.attributes["mlflow_lite.template_version"] == "1"
    assert root.attributes["mlflow_lite.validation.rules"]["length_unit"] == "words"


def test_summarize_too_long_fails_default_validation(client, stub, openai_kw):
    stub.reply = reply_with(" ".join(["word"] * 40))
    with pytest.raises(ml.ValidationError, match="max_length"):
        client.query_with_template(template="summarize", input="text", max_words=10, model="gpt-4o", **openai_kw)


def test_classify_labels_become_choices(client, stub, openai_kw):
    stub.reply = reply_with("billing")
    r = client.query_with_template(
        template="classify", input="I was charged twice", labels=["billing", "technical", "other"],
        model="gpt-4o", **openai_kw,
    )
    assert r.text == "billing" and r.validation.passed
    assert "billing, technical, other" in stub.requests[-1].body["messages"][-1]["content"]
    stub.reply = reply_with("It is about money.")
    r = client.query_with_template(
        template="classify", input="x", labels=["billing", "technical"], model="gpt-4o", on_fail="return", **openai_kw
    )
    assert r.validation.failed_rules == ["choices"]


def test_extract_returns_validated_json(client, stub, openai_kw):
    stub.reply = reply_with('```json\n{"name": "Ada Lovelace", "year": 1843}\n```')
    r = client.query_with_template(
        template="extract", input="In 1843 Ada Lovelace published her notes.", fields=["name", "year"],
        model="claude-3-5-sonnet", api_base=stub.url, api_key="sk-stub",
    )
    assert r.validation.value == {"name": "Ada Lovelace", "year": 1843}
    stub.reply = reply_with('{"name": "Ada Lovelace"}')
    with pytest.raises(ml.ValidationError, match="year"):
        client.query_with_template(
            template="extract", input="Ada", fields=["name", "year"], model="gpt-4o", **openai_kw
        )


def test_template_retry_and_user_rules_merge(client, stub, openai_kw):
    answers = ["Maybe positive?", "positive"]
    stub.reply = lambda model, messages: answers.pop(0)
    r = client.query_with_template(
        template="sentiment", input="I love it", model="gpt-4o", on_fail="retry", **openai_kw
    )
    assert r.text == "positive" and r.validation.attempts == 2 and len(stub.requests) == 2
    stub.reply = reply_with("negative")
    r = client.query_with_template(
        template="sentiment", input="meh", model="gpt-4o", validate={"forbidden_words": ["negative"]},
        on_fail="return", **openai_kw,
    )
    assert r.validation.failed_rules == ["forbidden_words"]  # template's choices pass, the user's rule fails
    r = client.query_with_template(template="sentiment", input="meh", model="gpt-4o", validate=False, **openai_kw)
    assert r.validation is None


@pytest.mark.parametrize(
    "template, given",
    [
        ("translate", {"input": "hola"}),  # no language
        ("qa", {"question": "why?"}),  # no context
        ("classify", {"input": "x"}),  # no labels
    ],
)
def test_missing_variable_raises_before_the_call(client, stub, openai_kw, template, given):
    with pytest.raises(ml.ArgumentError) as info:
        client.query_with_template(template=template, model="gpt-4o", **given, **openai_kw)
    assert template in str(info.value)
    assert stub.requests == []


def test_unknown_keyword_names_the_template_variables(client, stub, openai_kw):
    with pytest.raises(ml.ArgumentError, match=r"labls.*labels"):
        client.query_with_template(template="classify", input="x", labls=["a", "b"], model="gpt-4o", **openai_kw)
    assert stub.requests == []


def test_registered_template_by_alias_version_and_latest(client, stub, openai_kw):
    name = f"support_{uuid.uuid4().hex[:8]}"
    v1 = ml.register_template(name, "Answer the customer: {{question}}", system="You are helpful.", alias="production")
    ml.register_template(name, "Answer briefly: {{question}}", system="You are terse.", validate={"max_length": 50})
    r = client.query_with_template(
        template=f"{name}@production", question="How do I reset?", model="gpt-4o", **openai_kw
    )
    assert stub.requests[-1].body["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Answer the customer: How do I reset?"},
    ]
    trace = get_trace(r.trace_id)
    assert trace.data.spans[0].attributes["mlflow_lite.template_version"] == v1.version == "1"
    assert trace.info.tags["mlflow_lite.template"] == name
    assert json.loads(trace.info.tags["mlflow.linkedPrompts"]) == [{"name": name, "version": "1"}]
    # latest: version 2, with its stored validation
    stub.reply = reply_with("Short.")
    r = client.query_with_template(template=name, question="Reset?", model="gpt-4o", **openai_kw)
    assert stub.requests[-1].body["messages"][-1]["content"] == "Answer briefly: Reset?"
    assert r.validation.passed and get_trace(r.trace_id).data.spans[0].attributes["mlflow_lite.template_version"] == "2"
    client.query_with_template(template=name, version=1, question="Reset?", model="gpt-4o", **openai_kw)
    assert stub.requests[-1].body["messages"][-1]["content"] == "Answer the customer: Reset?"
    with pytest.raises(ml.ArgumentError, match="question"):
        client.query_with_template(template=name, model="gpt-4o", **openai_kw)
