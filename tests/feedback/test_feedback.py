"""Human feedback is stored on the trace, and corrections shape later prompts as few-shot examples."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from uuid import uuid4

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.feedback.human import (
    CORRECTION,
    RATING,
    FeedbackLearner,
    FewShotStage,
    learner_of,
    prompt_name,
    record_feedback,
    scope_of,
    set_feedback_learning,
    with_examples,
)

from tests.helpers import get_trace

QUESTION = "How do I reset my password?"
SIMILAR = "How can I reset my password?"
DISSIMILAR = "What is the capital of France?"
FIXED = "Click 'Forgot password' on the sign-in page and follow the emailed link."


@pytest.fixture
def traced(client: ml.Client) -> ml.Client:
    """A fresh client whose traces go to an experiment of their own."""
    client.set_experiment(f"exp-{uuid4().hex}")
    return client


def ask(client: ml.Client, openai_kw: dict, prompt: str = QUESTION, **kwargs) -> str:
    r = client.query(model="gpt-4o", prompt=prompt, **openai_kw, **kwargs)
    client.flush_traces()
    assert r.trace_id
    return r.trace_id


def by_name(trace_id: str) -> dict:
    return {a.name: a for a in get_trace(trace_id).info.assessments}


# -- recording --


def test_rating_and_correction_are_human_assessments(traced, openai_kw):
    trace_id = ask(traced, openai_kw)
    created = record_feedback(trace_id, rating=5, correction=FIXED, user="alice", comment="missing the link")

    assert [a.name for a in created] == [RATING, CORRECTION]
    assert all(a.assessment_id for a in created)
    found = by_name(trace_id)
    rating, correction = found[RATING], found[CORRECTION]
    assert rating.feedback.value == 5
    assert rating.rationale == "missing the link"
    assert correction.expectation.value == FIXED
    assert correction.metadata == {"comment": "missing the link"}
    for assessment in (rating, correction):
        assert assessment.source.source_type == "HUMAN"
        assert assessment.source.source_id == "alice"
    assert {a.assessment_id for a in created} == {rating.assessment_id, correction.assessment_id}


def test_user_defaults_to_the_login_name(traced, openai_kw, monkeypatch):
    trace_id = ask(traced, openai_kw)
    monkeypatch.setenv("USER", "carol")
    record_feedback(trace_id, rating=4)
    monkeypatch.delenv("USER")
    record_feedback(trace_id, correction=FIXED)
    found = by_name(trace_id)
    assert found[RATING].source.source_id == "carol"
    assert found[CORRECTION].source.source_id == "unknown"
    assert found[CORRECTION].metadata in (None, {})


def test_thumbs_and_other_scales(traced, openai_kw):
    trace_id = ask(traced, openai_kw)
    (thumbs,) = record_feedback(trace_id, rating=False, user="dan")
    assert thumbs.feedback.value is False
    (tenth,) = record_feedback(trace_id, rating=7, scale=(0, 10), user="erin")
    (fraction,) = record_feedback(trace_id, rating=0.75, scale=(0.0, 1.0), user="fay")
    (whole,) = record_feedback(trace_id, rating=4.0, user="gus")
    assert (tenth.feedback.value, fraction.feedback.value, whole.feedback.value) == (7, 0.75, 4)
    assert sorted(a.source.source_id for a in get_trace(trace_id).info.assessments) == ["dan", "erin", "fay", "gus"]


def test_unknown_trace_id_is_an_argument_error():
    with pytest.raises(ml.ArgumentError, match="tr-0123456789abcdef") as caught:
        record_feedback("tr-0123456789abcdef", rating=5)
    assert caught.value.argument == "trace_id"
    with pytest.raises(ml.ArgumentError, match="trace_id"):
        record_feedback("", rating=5)


@pytest.mark.parametrize(
    "rating, options",
    [
        (0, {}),
        (6, {}),
        (4.5, {}),
        (math.nan, {}),
        (math.inf, {}),
        ("5", {}),
        (11, {"scale": (0, 10)}),
        (3, {"scale": (5, 1)}),
        (3, {"scale": (1, math.inf)}),
    ],
)
def test_bad_ratings_are_refused_before_anything_is_logged(traced, openai_kw, rating, options):
    trace_id = ask(traced, openai_kw)
    with pytest.raises(ml.ArgumentError) as caught:
        record_feedback(trace_id, rating=rating, correction=FIXED, **options)
    assert caught.value.argument in ("rating", "scale")
    assert get_trace(trace_id).info.assessments == []


def test_feedback_needs_a_rating_or_a_correction(traced, openai_kw):
    trace_id = ask(traced, openai_kw)
    with pytest.raises(ml.ArgumentError, match="rating, a correction or both"):
        record_feedback(trace_id)
    with pytest.raises(ml.ArgumentError, match="correction"):
        record_feedback(trace_id, correction="   ")
    assert get_trace(trace_id).info.assessments == []


# -- learning --


def learning_client() -> tuple[ml.Client, FeedbackLearner]:
    client = ml.Client(experiment=f"exp-{uuid4().hex}")
    learner = FeedbackLearner()
    client.add_stage(FewShotStage(learner))
    return client, learner


def new_system() -> str:
    """A system prompt of its own, so examples learned by other tests never apply."""
    return f"You are the support bot of shop {uuid4().hex}."


def scope(system: str) -> str:
    return scope_of([{"role": "system", "content": system}])


def asking(system: str, question: str = SIMILAR) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def sent_messages(stub) -> list[dict]:
    return stub.requests_to("/chat/completions")[-1].body["messages"]


def test_a_correction_shapes_the_next_similar_prompt(stub, openai_kw):
    system = new_system()
    client, learner = learning_client()
    first = ask(client, openai_kw, system=system)
    assert sent_messages(stub) == asking(system, QUESTION)

    record_feedback(first, correction=FIXED, user="alice", learner=learner)

    second = ask(client, openai_kw, SIMILAR, system=system)
    assert sent_messages(stub) == [
        {"role": "system", "content": system},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": FIXED},
        {"role": "user", "content": SIMILAR},
    ]
    root = next(s for s in get_trace(second).data.spans if s.parent_id is None)
    assert root.attributes["mlflow_lite.few_shot_examples"] == 1
    assert root.attributes["mlflow_lite.few_shot_trace_ids"] == [first]
    assert root.attributes["mlflow_lite.few_shot_prompt"] == prompt_name(scope(system))
    assert root.inputs["messages"] == asking(system)  # the trace keeps what the caller asked
    (event,) = [e for e in root.events if e.name == "few_shot_examples"]
    assert json.loads(event.attributes["questions"]) == [QUESTION]
    assert json.loads(event.attributes["similarities"])[0] > 0.9
    assert json.loads(event.attributes["trace_ids"]) == [first]

    ask(client, openai_kw, DISSIMILAR, system=system)
    assert sent_messages(stub) == asking(system, DISSIMILAR)


def test_examples_stay_in_their_scope(stub, openai_kw):
    system = new_system()
    client, learner = learning_client()
    record_feedback(ask(client, openai_kw, system=system), correction=FIXED, learner=learner)

    other = new_system()
    ask(client, openai_kw, SIMILAR, system=other)
    assert sent_messages(stub) == asking(other)
    assert learner.examples_for(asking(system)) == [(QUESTION, FIXED)]
    assert learner.examples_for(asking(system), template="summarize") == []
    assert learner.examples_for([{"role": "user", "content": SIMILAR}]) == []


def test_a_namespace_keeps_its_corrections_to_itself(stub, openai_kw):
    """namespace= separates tenants in the cache; their corrections must not cross either."""
    system = new_system()
    client, learner = learning_client()
    corrected = ask(client, openai_kw, system=system, namespace="tenant-a")
    assert get_trace(corrected).data.spans[0].attributes["mlflow_lite.namespace"] == "tenant-a"
    record_feedback(corrected, correction=FIXED, learner=learner)

    for namespace in ("tenant-b", None):
        ask(client, openai_kw, SIMILAR, system=system, **({"namespace": namespace} if namespace else {}))
        assert sent_messages(stub) == asking(system), namespace
    ask(client, openai_kw, SIMILAR, system=system, namespace="tenant-a")
    assert sent_messages(stub) == [
        {"role": "system", "content": system},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": FIXED},
        {"role": "user", "content": SIMILAR},
    ]
    assert learner.examples_for(asking(system), namespace="tenant-a") == [(QUESTION, FIXED)]
    assert learner.examples_for(asking(system)) == []


def test_examples_are_versioned_in_the_prompt_registry(stub, openai_kw):
    import mlflow

    system = new_system()
    client, learner = learning_client()
    first = ask(client, openai_kw, system=system)
    record_feedback(first, rating=5, learner=learner)
    record_feedback(first, correction=FIXED, learner=learner)
    name = prompt_name(scope(system))

    latest = mlflow.genai.load_prompt(f"prompts:/{name}@latest", cache_ttl_seconds=0)
    assert int(latest.version) == 2  # the top-rated answer first, then the correction replacing it
    assert latest.template == [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": FIXED}]
    assert latest.tags["mlflow_lite_scope"] == scope(system)
    assert json.loads(latest.tags["mlflow_lite_sources"]) == [{"trace_id": first, "source": "correction"}]
    first_version = mlflow.genai.load_prompt(f"prompts:/{name}/1")
    assert first_version.template[1]["content"] == f"Stub answer from gpt-4o: {QUESTION}"

    fresh = FeedbackLearner()  # as in a new process
    assert fresh.examples_for(asking(system)) == []
    assert fresh.load(scope(system)) == 1
    assert fresh.examples_for(asking(system)) == [(QUESTION, FIXED)]
    everything = FeedbackLearner()
    assert everything.load() >= 1
    assert everything.examples(scope(system)) == fresh.examples(scope(system))


def test_only_top_ratings_and_corrections_are_learned(stub, openai_kw):
    system = new_system()
    client, learner = learning_client()
    learner.registry = False
    low = ask(client, openai_kw, "How do I delete my account?", system=system)
    record_feedback(low, rating=3, learner=learner)
    record_feedback(low, rating=False, learner=learner)
    assert learner.examples(scope(system)) == []
    top = ask(client, openai_kw, "How do I export my data?", system=system)
    record_feedback(top, rating=True, learner=learner)
    rated = ask(client, openai_kw, "How do I change my email address?", system=system)
    record_feedback(rated, rating=4, learner=learner)
    examples = learner.examples(scope(system))
    assert [(e.question, e.source) for e in examples] == [
        ("How do I export my data?", "rating"),
        ("How do I change my email address?", "rating"),
    ]
    assert examples[0].answer == "Stub answer from gpt-4o: How do I export my data?"
    # a later well-rated answer never replaces a correction of the same question
    record_feedback(rated, correction="Go to Settings > Email.", learner=learner)
    record_feedback(rated, rating=5, learner=learner)
    (changed,) = [e for e in learner.examples(scope(system)) if "email" in e.question]
    assert (changed.answer, changed.source) == ("Go to Settings > Email.", "correction")


def test_learning_from_the_traces_own_assessments(traced, openai_kw):
    system = new_system()
    trace_id = ask(traced, openai_kw, system=system)
    record_feedback(trace_id, rating=2, correction=FIXED)  # no learner: stored only
    learner = FeedbackLearner(registry=False)
    example = learner.learn_from(trace_id)
    assert (example.question, example.answer, example.source, example.trace_id) == (
        QUESTION, FIXED, "correction", trace_id
    )
    with pytest.raises(ml.ArgumentError, match="tr-ffffffffffffffff"):
        learner.learn_from("tr-ffffffffffffffff")


def test_error_traces_teach_only_through_corrections(stub, openai_kw):
    system = new_system()
    client, learner = learning_client()
    learner.registry = False
    stub.inject(status=500)
    with pytest.raises(ml.ProviderUnavailableError) as caught:
        client.query(model="gpt-4o", prompt=QUESTION, system=system, num_retries=0, **openai_kw)
    client.flush_traces()
    failed = caught.value.trace_id
    record_feedback(failed, rating=5, learner=learner)
    assert learner.examples(scope(system)) == []
    record_feedback(failed, correction=FIXED, learner=learner)
    assert [e.answer for e in learner.examples(scope(system))] == [FIXED]


def test_template_calls_share_examples_within_their_template(stub, openai_kw):
    from mlflow_lite_plugin.prompts.templates import BUILTIN_TEMPLATES

    client, learner = learning_client()
    learner.registry = False
    first = client.query_with_template(
        template="rewrite", input="teh cat sat on teh mat", model="gpt-4o", validate=False, **openai_kw
    )
    client.flush_traces()
    asked = sent_messages(stub)
    record_feedback(first.trace_id, correction="The cat sat on the mat.", learner=learner)

    client.query_with_template(
        template="rewrite", input="teh dog sat on teh mat", model="gpt-4o", validate=False, **openai_kw
    )
    assert sent_messages(stub)[1:3] == [asked[1], {"role": "assistant", "content": "The cat sat on the mat."}]
    # the same system prompt without the template is another scope
    ask(client, openai_kw, asked[1]["content"], system=BUILTIN_TEMPLATES["rewrite"].system)
    assert len(sent_messages(stub)) == 2
    client.flush_traces()


def test_set_feedback_learning_wires_a_pipeline(stub, openai_kw):
    client = ml.Client(experiment=f"exp-{uuid4().hex}")
    assert learner_of(client.pipeline) is None
    learner = set_feedback_learning(client.pipeline, max_examples=2, min_rating=5, similarity=0.6, registry=False)
    assert learner_of(client.pipeline) is learner
    assert (learner.max_examples, learner.min_rating, learner.threshold, learner.registry) == (2, 5, 0.6, False)
    stage = client.pipeline.get(FewShotStage.name)
    assert [s.name for s in client.pipeline.stages].index("few_shot") == 0

    system = new_system()
    trace_id = ask(client, openai_kw, system=system)
    record_feedback(trace_id, rating=4, learner=learner)  # below min_rating=5
    assert learner.examples(scope(system)) == []
    record_feedback(trace_id, correction=FIXED, learner=learner)
    ask(client, openai_kw, SIMILAR, system=system)
    assert len(sent_messages(stub)) == 4

    assert set_feedback_learning(client.pipeline, enabled=False) is learner
    assert client.pipeline.get(FewShotStage.name) is stage and not learner.enabled
    ask(client, openai_kw, SIMILAR, system=system)
    assert sent_messages(stub) == asking(system)
    set_feedback_learning(client.pipeline, registry=False)
    ask(client, openai_kw, SIMILAR, system=system)
    assert len(sent_messages(stub)) == 4  # the examples were kept while learning was off

    with pytest.raises(ml.ArgumentError, match="max_examples"):
        set_feedback_learning(client.pipeline, max_examples=0)
    with pytest.raises(ml.ArgumentError, match="similarity"):
        set_feedback_learning(client.pipeline, similarity=2)
    client.flush_traces()


def test_the_best_example_sits_next_to_the_question():
    from mlflow_lite_plugin.feedback.human import Example

    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    best, second = Example("b", "B", "t1", "rating"), Example("c", "C", "t2", "correction")
    assert with_examples(messages, [best, second]) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "C"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "q"},
    ]
    assert messages[1] == {"role": "user", "content": "q"} and len(messages) == 2


def test_modules_import_light():
    code = (
        "import sys; import mlflow_lite_plugin.feedback.human, mlflow_lite_plugin.feedback.datasets; "
        "print([m for m in ('mlflow', 'numpy', 'pandas', 'torch', 'litellm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_one_liners_feedback_learning_and_export(default_client, stub, openai_kw, tmp_path):
    """The issue's API as written: ml.record_feedback shapes the next similar query, and
    ml.export_dataset writes the corrected answer."""
    default_client.set_experiment(f"exp-{uuid4().hex}")
    ml.set_feedback_learning(enabled=True, registry=False)
    r = ml.query(model="gpt-4o", prompt=QUESTION, system="Support bot.", **openai_kw)
    ml.record_feedback(trace_id=r.trace_id, rating=5, correction=FIXED, user="ana", comment="be precise")
    ml.query(model="gpt-4o", prompt=SIMILAR, system="Support bot.", **openai_kw)
    sent = stub.requests[-1].body["messages"]
    assert {"role": "assistant", "content": FIXED} in sent and sent[-1]["content"] == SIMILAR
    summary = ml.export_dataset(str(tmp_path / "train.jsonl"), format="openai", min_rating=4)
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert summary.kept == 1 and records[0]["messages"][-1] == {"role": "assistant", "content": FIXED}
