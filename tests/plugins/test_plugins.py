"""MLflow plugins: the run-context tags of every run, and the ``mlflow_lite`` evaluator."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import subprocess
import sys
import textwrap

import mlflow
import pandas as pd
import pytest
from mlflow.entities import AssessmentSource

import mlflow_lite_plugin as ml
import mlflow_lite_plugin.client as client_module
from mlflow_lite_plugin.plugins.evaluator import TABLE_FILE, LiteEvaluator, feedback_metrics
from mlflow_lite_plugin.plugins.run_context import LiteRunContextProvider

from tests.helpers import KEY

HEAVY = ("litellm", "torch", "faiss", "sentence_transformers")


# -- discovery --


def test_mlflow_discovers_both_entry_points():
    from mlflow.models.evaluation.evaluator_registry import _model_evaluation_registry
    from mlflow.tracking.context.registry import _run_context_provider_registry

    groups = {
        group: {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}
        for group in ("mlflow.model_evaluator", "mlflow.run_context_provider")
    }
    assert groups["mlflow.model_evaluator"]["mlflow_lite"] == "mlflow_lite_plugin.plugins.evaluator:LiteEvaluator"
    assert groups["mlflow.run_context_provider"]["mlflow_lite"] == (
        "mlflow_lite_plugin.plugins.run_context:LiteRunContextProvider"
    )
    assert "mlflow_lite" in mlflow.models.list_evaluators()
    assert _model_evaluation_registry._registry["mlflow_lite"] is LiteEvaluator
    assert any(isinstance(p, LiteRunContextProvider) for p in _run_context_provider_registry)


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [(None, True), ("text", True), ("question-answering", True), ("text-summarization", True),
     ("mlflow_lite", True), ("classifier", False), ("regressor", False), ("retriever", False)],
)
def test_can_evaluate_text_model_types(model_type, expected):
    assert LiteEvaluator.can_evaluate(model_type=model_type, evaluator_config={}) is expected


# -- run-context tags --


def run_tags(run) -> dict[str, str]:
    tags = mlflow.get_run(run.info.run_id).data.tags
    return {k: v for k, v in tags.items() if k.startswith("mlflow_lite.")}


def test_run_has_only_the_version_without_a_default_client(monkeypatch):
    monkeypatch.setattr(client_module, "_default", None)
    with mlflow.start_run() as run:
        pass
    assert run_tags(run) == {"mlflow_lite.version": ml.__version__}
    assert client_module._default is None  # reading the tags never creates the client


def test_run_tags_describe_the_default_clients_controls(default_client, tmp_path):
    default_client.model = "gpt-4o"
    ml.set_cache(ttl=3600)
    ml.set_semantic_cache()
    ml.set_budget(daily_limit=10.0, path=str(tmp_path / "budget.db"))
    ml.set_rate_limit(60)
    ml.set_rate_limit(tokens_per_minute=30_000, model="gpt-4o")
    ml.add_metric("words", lambda text: len(text.split()))
    ml.add_metric("polite", lambda text: "please" in text)
    with mlflow.start_run() as run:
        pass
    assert run_tags(run) == {
        "mlflow_lite.version": ml.__version__,
        "mlflow_lite.default_model": "gpt-4o",
        "mlflow_lite.cache": "exact(memory, ttl=3600); semantic(threshold=0.725)",
        "mlflow_lite.budget": "daily=10.0 USD, scope=global",
        "mlflow_lite.rate_limit": "60 rpm; gpt-4o: 30000 tpm",
        "mlflow_lite.metrics": "words, polite",
    }


def test_controls_that_are_off_have_no_tag(default_client, tmp_path):
    ml.set_cache(backend="sqlite", path=str(tmp_path / "cache.db"), max_temperature=0.5)
    ml.set_budget(monthly_limit=200, scope="model", path=str(tmp_path / "budget.db"))
    with mlflow.start_run() as run:
        pass
    assert run_tags(run) == {
        "mlflow_lite.version": ml.__version__,
        "mlflow_lite.cache": "exact(sqlite, max_temperature=0.5)",
        "mlflow_lite.budget": "monthly=200.0 USD, scope=model",
    }


class Moderation(ml.Stage):
    """A third-party stage that describes itself like the built-in controls."""

    name = "moderation"

    def describe(self):
        return {"blocklist": 3, "action": "refuse"}


def test_a_stage_added_with_add_stage_is_tagged_like_the_built_ins(default_client, tmp_path):
    """Regression: the run-context plugin described five known stage classes, so a stage added with
    add_stage() never reached the run's tags."""
    ml.set_cache(ttl=60)
    default_client.add_stage(Moderation())
    default_client.add_stage(ml.Stage())  # describes nothing: no tag
    with mlflow.start_run() as run:
        pass
    assert run_tags(run) == {
        "mlflow_lite.version": ml.__version__,
        "mlflow_lite.cache": "exact(memory, ttl=60)",
        "mlflow_lite.moderation": "blocklist=3, action=refuse",
    }


def test_a_broken_client_still_gives_the_version(default_client, caplog):
    default_client.pipeline = None  # anything unexpected in the client
    with caplog.at_level(logging.DEBUG, logger="mlflow_lite_plugin.plugins.run_context"):
        assert LiteRunContextProvider().tags() == {"mlflow_lite.version": ml.__version__}
    assert "could not describe the default client" in caplog.text


def test_long_tag_values_are_cut_to_mlflows_limit(default_client):
    for i in range(400):
        ml.add_metric(f"metric_number_{i:03d}", len)
    tags = LiteRunContextProvider().tags()
    assert len(tags["mlflow_lite.metrics"]) == 5000


_START_RUN_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import mlflow
import_s = time.perf_counter() - t0
t0 = time.perf_counter()
with mlflow.start_run() as run:
    pass
start_run_s = time.perf_counter() - t0
from mlflow.tracking.context.registry import _run_context_provider_registry
print(json.dumps({
    "import_mlflow_s": import_s,
    "start_run_s": start_run_s,
    "heavy": [m for m in %(heavy)r if m in sys.modules],
    "providers": [type(p).__name__ for p in _run_context_provider_registry],
    "tags": {k: v for k, v in mlflow.get_run(run.info.run_id).data.tags.items() if k.startswith("mlflow_lite.")},
}))
"""

# mlflow's own import already loads the entry point, so our modules are dropped and re-imported to
# time what the provider itself adds (mlflow and the standard library stay loaded).
_PROVIDER_COST_SCRIPT = """
import json, sys, time
import mlflow
for name in [m for m in sys.modules if m == "mlflow_lite_plugin" or m.startswith("mlflow_lite_plugin.")]:
    del sys.modules[name]
t0 = time.perf_counter()
from mlflow_lite_plugin.plugins.run_context import LiteRunContextProvider
tags = LiteRunContextProvider().tags()
print(json.dumps({"provider_s": time.perf_counter() - t0, "tags": tags,
                  "heavy": [m for m in %(heavy)r if m in sys.modules]}))
"""


def _run_python(script: str, tmp_path) -> dict:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),  # a file store: no schema to create
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "true",
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script % {"heavy": HEAVY})],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_plain_start_run_imports_nothing_heavy_and_the_provider_is_cheap(tmp_path):
    run = _run_python(_START_RUN_SCRIPT, tmp_path)
    cost = _run_python(_PROVIDER_COST_SCRIPT, tmp_path)
    print(  # the figures, for the record (pytest -s)
        f"\nimport mlflow {run['import_mlflow_s']:.3f} s, start_run {run['start_run_s']:.3f} s, "
        f"mlflow_lite provider import + tags {cost['provider_s']:.3f} s"
    )
    assert "LiteRunContextProvider" in run["providers"]
    assert run["tags"] == {"mlflow_lite.version": ml.__version__}
    assert run["heavy"] == [] and cost["heavy"] == []
    assert cost["tags"] == {"mlflow_lite.version": ml.__version__}
    assert cost["provider_s"] < 0.5


# -- the evaluator on any pyfunc model --

ANSWERS = {
    "What is the capital of France?": "Paris.",
    "Who wrote Hamlet?": "William Shakespeare wrote it",
    "What color is the sky?": "The sky is blue",
    "Which fruit keeps the doctor away?": "An apple",
}


class QAModel(mlflow.pyfunc.PythonModel):
    """Known answers; an unknown question raises (an error row)."""

    def predict(self, context, model_input, params=None):
        return [ANSWERS[q] for q in model_input["question"]]


QA_DATA = pd.DataFrame({
    "question": [*ANSWERS, "What is the meaning of life?"],
    "answer": ["Paris", "Shakespeare", "blue", "the apple", "42"],
})


@pytest.fixture(scope="module")
def qa_model_uri() -> str:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="qa", python_model=QAModel(), pip_requirements=["mlflow"])
    return info.model_uri


def evaluate(model, data=QA_DATA, **kwargs):
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(model, data, evaluators=["mlflow_lite"], **kwargs)
    return result, run.info.run_id


def test_question_answering_scores_against_targets(qa_model_uri, default_client):
    result, run_id = evaluate(qa_model_uri, model_type="question-answering", targets="answer")
    m = result.metrics
    # exact match: "Paris." = "Paris" and "An apple" = "the apple" once normalised; the failed row is 0.
    assert m["exact_match/mean"] == pytest.approx(2 / 5)
    # token F1: 1, 1/4 precision x full recall = 0.4, 1/3 x 1 = 0.5 ("the" is dropped), 1, and 0.
    assert m["token_f1/mean"] == pytest.approx((1 + 0.4 + 0.5 + 1 + 0) / 5)
    assert m["mlflow_lite/error_rate"] == pytest.approx(0.2)
    assert m["mlflow_lite/row_count"] == 5
    assert 0 < m["mlflow_lite/latency_p50"] <= m["mlflow_lite/latency_p95"]
    # a plain pyfunc reports no cost, tokens, cache or validation: nothing is made up
    for unknown in ("cost_total", "cost_per_row", "tokens_total", "tokens_per_row", "cache_hit_rate",
                    "validation_pass_rate"):
        assert f"mlflow_lite/{unknown}" not in m
    assert not any(k.startswith("feedback/") for k in m)
    assert mlflow.get_run(run_id).data.metrics == pytest.approx(m)


def test_custom_metrics_are_the_clients_and_a_failing_one_is_counted(qa_model_uri, default_client):
    def mentions_sky(text):
        if "sky" in text:
            raise ValueError("sky service down")
        return True

    ml.add_metric("words", lambda text: len(text.split()))
    ml.add_metric("mentions_sky", mentions_sky)
    ml.add_metric("timed", lambda text, response: response.latency > 0 and response.cost is None)
    ml.add_metric("label", lambda text: ("short", "a label has no mean") if len(text) < 10 else "long")
    result, run_id = evaluate(qa_model_uri, model_type="text")
    m = result.metrics
    assert m["words/mean"] == pytest.approx((1 + 4 + 4 + 2) / 4)  # the failed row has no answer to score
    assert m["words/error_count"] == 0
    assert m["mentions_sky/mean"] == 1.0 and m["mentions_sky/error_count"] == 1
    assert m["timed/mean"] == 1.0
    assert "label/mean" not in m and m["label/error_count"] == 0
    assert "exact_match/mean" not in m  # no targets

    table = mlflow.load_table(TABLE_FILE, run_ids=[run_id])
    assert len(table) == len(QA_DATA)
    assert list(table["question"]) == list(QA_DATA["question"])
    assert list(table["outputs"][:4]) == list(ANSWERS.values()) and _missing(table["outputs"][4])
    assert list(table["words/score"][:4]) == [1, 4, 4, 2] and _missing(table["words/score"][4])
    assert table["mentions_sky/error"][2] == "ValueError: sky service down"
    assert table["label/rationale"][0] == "a label has no mean"
    assert table["error"][4] == "KeyError: 'What is the meaning of life?'"
    assert all(x > 0 for x in table["latency"])
    artifact = result.artifacts["mlflow_lite_eval_results"]
    assert artifact.uri.endswith(TABLE_FILE)


def test_evaluator_config_selects_metrics_and_rejects_unknown_ones(qa_model_uri, default_client):
    ml.add_metric("words", lambda text: len(text.split()))
    ml.add_metric("chars", len)
    result, _ = evaluate(qa_model_uri, model_type="text", evaluator_config={"mlflow_lite": {"metrics": ["chars"]}})
    assert "chars/mean" in result.metrics and "words/mean" not in result.metrics
    with pytest.raises(ml.ArgumentError, match=r"\['nope'\] are not registered.*words, chars"):
        evaluate(qa_model_uri, model_type="text", evaluator_config={"mlflow_lite": {"metrics": ["nope"]}})


def test_given_predictions_are_scored_with_their_text_only(default_client):
    data = QA_DATA.assign(output=["Paris", "Shakespeare", "green", "apple", "no idea"])
    result, run_id = evaluate(None, data, model_type="question-answering", targets="answer", predictions="output")
    assert result.metrics["exact_match/mean"] == pytest.approx(3 / 5)
    assert result.metrics["mlflow_lite/row_count"] == 5
    assert not any(k.startswith("mlflow_lite/") and k != "mlflow_lite/row_count" for k in result.metrics)
    assert len(mlflow.load_table(TABLE_FILE, run_ids=[run_id])) == 5


def test_a_model_returning_a_frame_uses_its_predictions_column(default_client):
    def answer(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"score": [0.5] * len(frame), "predictions": ["Paris"] * len(frame)})

    result, run_id = evaluate(answer, QA_DATA[:1], model_type="question-answering", targets="answer")
    assert result.metrics["exact_match/mean"] == 1.0
    assert list(mlflow.load_table(TABLE_FILE, run_ids=[run_id])["outputs"]) == ["Paris"]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- feedback on traces --


def test_feedback_statistics_count_numeric_human_ratings():
    def new_trace() -> str:
        with mlflow.start_span("answer") as span:
            span.set_outputs("hi")
        return span.trace_id

    rated, unrated = new_trace(), new_trace()
    human, code = AssessmentSource("HUMAN", "alice"), AssessmentSource("CODE", "scorer")
    for name, value, source in [
        ("rating", 4, human), ("rating", 2.0, human),
        ("rating", 5, code), ("rating", "great", human), ("helpfulness", 1, human),  # not counted
    ]:
        mlflow.log_feedback(trace_id=rated, name=name, value=value, source=source)
    assert feedback_metrics([rated, unrated]) == {"feedback/rating_count": 2.0, "feedback/rating_mean": 3.0}
    assert feedback_metrics([unrated]) == {"feedback/rating_count": 0.0}
    assert feedback_metrics([]) == {}


# -- the mlflow_lite flavor --


def test_evaluating_an_mlflow_lite_model_logs_cost_latency_tokens_cache_and_validation(
    stub, default_client, monkeypatch, tmp_path
):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with mlflow.start_run():
        info = ml.log_model(
            name="bot", model="gpt-4o", prompt="Answer: {question}", params={"api_base": stub.openai_base},
            validate={"max_length": 1000}, cache={"backend": "sqlite", "path": str(tmp_path / "cache.db")},
        )
    questions = pd.DataFrame({"question": ["What is MLflow?", "What is a trace?", "What is a run?"]})
    mlflow.pyfunc.load_model(info.model_uri).predict(questions[:1])  # warms the shared sqlite cache
    ml.add_metric("priced", lambda text, response: response.cost is not None)

    result, run_id = evaluate(info.model_uri, questions, model_type="text")
    m = result.metrics
    assert m["mlflow_lite/cost_total"] > 0  # two paid answers, one free cache hit
    assert m["mlflow_lite/cost_per_row"] == pytest.approx(m["mlflow_lite/cost_total"] / 3)
    assert m["mlflow_lite/tokens_total"] > 0
    assert m["mlflow_lite/tokens_per_row"] == pytest.approx(m["mlflow_lite/tokens_total"] / 3)
    assert m["mlflow_lite/latency_p50"] <= m["mlflow_lite/latency_p95"]
    assert m["mlflow_lite/cache_hit_rate"] == pytest.approx(1 / 3)
    assert m["mlflow_lite/validation_pass_rate"] == 1.0
    assert m["mlflow_lite/error_rate"] == 0.0
    assert m["priced/mean"] == 1.0
    assert m["feedback/rating_count"] == 0 and "feedback/rating_mean" not in m

    table = mlflow.load_table(TABLE_FILE, run_ids=[run_id])
    assert len(table) == 3
    assert list(table["cached"]) == ["exact", "", ""]
    assert all(table["trace_id"]) and all(table["validation_passed"])
    assert all(text.startswith("Stub answer from gpt-4o") for text in table["outputs"])
