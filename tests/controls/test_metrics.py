"""Custom metrics: scored on every answer (cached too), on r.metrics and as MLflow feedback."""

from __future__ import annotations

import pytest

import mlflow_lite_plugin as ml

from tests.helpers import get_trace


def feedback_by_name(trace):
    return {a.name: a for a in trace.info.assessments}


def test_metrics_on_response_and_trace_as_code_feedback(client, stub, openai_kw):
    client.add_metric("mentions_model", lambda text: "gpt-4o" in text)
    client.add_metric("words", lambda text: len(text.split()))
    client.add_metric("tone", lambda text: ("neutral", "no exclamation marks"))
    r = client.query(model="gpt-4o", prompt="hello there", **openai_kw)
    assert r.metrics["mentions_model"].value is True
    assert r.metrics["words"].value == len(r.text.split())
    assert (r.metrics["tone"].value, r.metrics["tone"].rationale) == ("neutral", "no exclamation marks")
    trace = get_trace(r.trace_id)
    fb = feedback_by_name(trace)
    assert fb["mentions_model"].value is True
    assert fb["words"].value == len(r.text.split())
    assert fb["tone"].rationale == "no exclamation marks"
    assert {fb[n].source.source_type for n in ("mentions_model", "words", "tone")} == {"CODE"}
    assert trace.data.spans[0].attributes["mlflow_lite.metric.words"] == len(r.text.split())


def test_a_failing_metric_is_recorded_and_the_call_succeeds(client, stub, openai_kw, caplog):
    def broken(text):
        raise RuntimeError("brand service down")

    client.add_metric("brand_voice", broken)
    client.add_metric("weird", lambda text: {"not": "a value"})
    client.add_metric("ok", lambda text: True)
    r = client.query(model="gpt-4o", prompt="hi", **openai_kw)
    assert r.text.startswith("Stub answer")
    assert r.metrics["brand_voice"].value is None
    assert r.metrics["brand_voice"].error == "RuntimeError: brand service down"
    assert "dict" in r.metrics["weird"].error
    assert r.metrics["ok"].value is True and r.metrics["ok"].ok
    fb = feedback_by_name(get_trace(r.trace_id))
    assert fb["brand_voice"].error.error_message == "RuntimeError: brand service down"
    assert fb["ok"].value is True
    assert "brand_voice" in caplog.text


def test_cached_answers_are_scored_too(client, stub, openai_kw):
    client.set_cache()
    seen = []
    client.add_metric("length", lambda text: seen.append(text) or len(text))
    first = client.query(model="gpt-4o", prompt="cache me", **openai_kw)
    hit = client.query(model="gpt-4o", prompt="cache me", **openai_kw)
    assert hit.cached == "exact" and hit.metrics["length"].value == len(first.text)
    assert len(seen) == 2 and len(stub.requests) == 1
    assert feedback_by_name(get_trace(hit.trace_id))["length"].value == len(first.text)


def test_streams_are_scored_when_complete(client, stub, openai_kw):
    client.add_metric("chars", len)
    stream = client.stream(model="gpt-4o", prompt="stream it", **openai_kw)
    text = "".join(stream)
    assert stream.response.metrics["chars"].value == len(text)


def test_metric_may_take_the_response(client, stub, openai_kw):
    client.add_metric("cheap", lambda text, response: response.cost is not None and response.cost < 1)
    assert client.query(model="gpt-4o", prompt="x", **openai_kw).metrics["cheap"].value is True


def test_list_remove_and_bad_arguments(default_client):
    ml.add_metric("a", len)
    ml.add_metric("b", len, description="length")
    assert ml.list_metrics() == ["a", "b"]
    ml.add_metric("a", lambda t: 1)  # replaces
    assert ml.list_metrics() == ["a", "b"]
    ml.remove_metric("a")
    assert ml.list_metrics() == ["b"]
    with pytest.raises(ml.ArgumentError, match=r"no metric named 'zzz'.*registered: b"):
        ml.remove_metric("zzz")
    with pytest.raises(ml.ArgumentError, match="fn"):
        ml.add_metric("c", "not callable")
    with pytest.raises(ml.ArgumentError, match="reserved"):
        ml.add_metric("validation", len)
    with pytest.raises(ml.ArgumentError, match="name"):
        ml.add_metric("", len)


def test_non_finite_numbers_are_errors(client, stub, openai_kw):
    client.add_metric("nan", lambda text: float("nan"))
    r = client.query(model="gpt-4o", prompt="x", **openai_kw)
    assert r.metrics["nan"].value is None and "finite" in r.metrics["nan"].error


def test_untraced_client_still_scores(stub, openai_kw):
    client = ml.Client(tracing=False)
    client.add_metric("chars", len)
    r = client.query(model="gpt-4o", prompt="x", **openai_kw)
    assert r.metrics["chars"].value == len(r.text) and r.trace_id is None
