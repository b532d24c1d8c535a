"""Traces become fine-tuning datasets: formats, corrections, filters and the summary."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from uuid import uuid4

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.feedback.datasets import FORMATS, export_dataset, validate_record
from mlflow_lite_plugin.feedback.human import record_feedback

SYSTEM = "You are a helpful support bot."
FIXED = "Click 'Forgot password' on the sign-in page."


@pytest.fixture
def experiment(client: ml.Client) -> str:
    name = f"exp-{uuid4().hex}"
    client.set_experiment(name)
    return name


def ask(client: ml.Client, openai_kw: dict, prompt: str, **kwargs) -> str:
    r = client.query(model="gpt-4o", prompt=prompt, system=SYSTEM, **openai_kw, **kwargs)
    client.flush_traces()
    return r.trace_id


def fail(client: ml.Client, stub, openai_kw: dict, prompt: str) -> str:
    stub.inject(status=500)
    with pytest.raises(ml.ProviderUnavailableError) as caught:
        client.query(model="gpt-4o", prompt=prompt, num_retries=0, **openai_kw)
    client.flush_traces()
    return caught.value.trace_id


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def history(client, experiment, stub, openai_kw) -> dict[str, str]:
    """Traces of every kind in one experiment, by what they are."""
    traces = {
        "good": ask(client, openai_kw, "How do I export my data?"),
        "corrected": ask(client, openai_kw, "How do I reset my password?"),
        "low": ask(client, openai_kw, "How do I delete my account?"),
        "unrated": ask(client, openai_kw, "What are your opening hours?"),
        "thumbs_up": ask(client, openai_kw, "Do you ship abroad?"),
        "error": fail(client, stub, openai_kw, "Why did this fail?"),
    }
    stream = client.stream(model="gpt-4o", prompt="Tell me a long story about dragons", **openai_kw)
    next(iter(stream))
    stream.close()
    client.flush_traces()
    traces["stopped"] = stream.response.trace_id
    record_feedback(traces["good"], rating=5, user="a")
    record_feedback(traces["good"], rating=4, user="b")
    record_feedback(traces["corrected"], rating=1, correction=FIXED, user="a")
    record_feedback(traces["low"], rating=2, user="a")
    record_feedback(traces["thumbs_up"], rating=True, user="a")
    return traces


def answer(question: str) -> str:
    return f"Stub answer from gpt-4o: {question}"


def test_openai_format_with_corrections(history, experiment, tmp_path):
    path = tmp_path / "out" / "train.jsonl"
    summary = export_dataset(path, format="openai", experiment=experiment)

    assert summary.kept == 5
    assert summary.dropped == {"error": 1, "stopped_early": 1}
    assert summary.path == str(path)
    records = read_jsonl(path)
    assert records == summary.records
    assert all(validate_record(r, "openai") == [] for r in records)
    by_trace = dict(zip(summary.trace_ids, records, strict=True))
    assert set(by_trace) == {history[k] for k in ("good", "corrected", "low", "unrated", "thumbs_up")}
    assert by_trace[history["corrected"]] == {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "How do I reset my password?"},
            {"role": "assistant", "content": FIXED},
        ]
    }
    assert by_trace[history["good"]]["messages"][-1]["content"] == answer("How do I export my data?")
    assert str(summary) == "kept 5 openai records, dropped 2 (error: 1, stopped_early: 1)"


def test_min_rating_keeps_well_rated_and_corrected_traces(history, experiment, tmp_path):
    summary = export_dataset(tmp_path / "rated.jsonl", format="jsonl", experiment=experiment, min_rating=4)

    assert summary.dropped == {"error": 1, "stopped_early": 1, "low_rating": 1, "unrated": 1}
    records = {r["trace_id"]: r for r in read_jsonl(tmp_path / "rated.jsonl")}
    assert set(records) == {history["good"], history["corrected"], history["thumbs_up"]}
    assert all(validate_record(r, "jsonl") == [] for r in records.values())
    good, corrected, thumbs = records[history["good"]], records[history["corrected"]], records[history["thumbs_up"]]
    assert (good["rating"], good["correction"]) == (4.5, False)
    assert good["prompt"] == "How do I export my data?"
    assert good["completion"] == answer("How do I export my data?") == good["messages"][-1]["content"]
    assert good["model"] == "openai/gpt-4o"
    assert (corrected["rating"], corrected["correction"], corrected["completion"]) == (1.0, True, FIXED)
    assert thumbs["rating"] is True

    strict = export_dataset(format="jsonl", experiment=experiment, min_rating=4.6)
    assert {r["trace_id"] for r in strict.records} == {history["corrected"], history["thumbs_up"]}
    assert strict.dropped["low_rating"] == 2 and strict.path is None


def test_anthropic_format_moves_the_system_prompt_and_merges_turns(client, experiment, openai_kw, tmp_path):
    plain = ask(client, openai_kw, "How do I export my data?")
    turns = client.query(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi."},
            {"role": "user", "content": "How do I log in?"},
        ],
        **openai_kw,
    )
    opener = client.query(
        model="gpt-4o",
        messages=[{"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "Thanks."}],
        **openai_kw,
    )
    client.flush_traces()
    summary = export_dataset(tmp_path / "claude.jsonl", format="anthropic", experiment=experiment)

    assert summary.kept == 2 and summary.dropped == {"invalid_format": 1}
    records = dict(zip(summary.trace_ids, read_jsonl(tmp_path / "claude.jsonl"), strict=True))
    assert opener.trace_id not in records
    assert all(validate_record(r, "anthropic") == [] for r in records.values())
    assert records[plain] == {
        "system": SYSTEM,
        "messages": [
            {"role": "user", "content": "How do I export my data?"},
            {"role": "assistant", "content": answer("How do I export my data?")},
        ],
    }
    assert records[turns.trace_id] == {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hi.\n\nHow do I log in?"},
            {"role": "assistant", "content": answer("How do I log in?")},
        ],
    }
    # the OpenAI format takes the opener as it is
    assert export_dataset(format="openai", experiment=experiment).kept == 3


def test_since_filters_older_traces(client, experiment, openai_kw):
    old = ask(client, openai_kw, "An old question?")
    time.sleep(0.05)
    cut = time.time()
    time.sleep(0.05)
    new = ask(client, openai_kw, "A new question?")

    for since in (cut, datetime.fromtimestamp(cut, tz=timezone.utc),
                  datetime.fromtimestamp(cut, tz=timezone.utc).isoformat()):
        summary = export_dataset(format="openai", experiment=experiment, since=since)
        assert summary.trace_ids == [new]
        assert summary.dropped == {"before_since": 1}
    assert export_dataset(format="openai", experiment=experiment).trace_ids == [new, old]
    assert export_dataset(format="openai", experiment=experiment, max_traces=1).trace_ids == [new]
    capped = export_dataset(format="openai", experiment=experiment, since=cut + 3600, max_traces=1)
    assert capped.kept == 0 and capped.dropped == {"before_since": 1}


def test_errors_can_be_included(client, experiment, stub, openai_kw):
    failed = fail(client, stub, openai_kw, "Why did this fail?")
    assert export_dataset(experiment=experiment).dropped == {"error": 1}
    assert export_dataset(experiment=experiment, include_errors=True).dropped == {"no_answer": 1}
    record_feedback(failed, correction="It failed because the provider was down.")
    (record,) = export_dataset(experiment=experiment).records
    assert record["messages"][-1] == {"role": "assistant", "content": "It failed because the provider was down."}


def test_cached_answers_are_real_answers(client, experiment, openai_kw):
    client.set_cache(enabled=True)
    ask(client, openai_kw, "How do I export my data?")
    ask(client, openai_kw, "How do I export my data?")
    summary = export_dataset(experiment=experiment)
    assert summary.kept == 2 and summary.dropped == {}


def test_dataframe_and_mlflow_dataset(history, experiment, tmp_path):
    import mlflow

    path = tmp_path / "train.jsonl"
    summary = export_dataset(path, format="jsonl", experiment=experiment, min_rating=4)
    frame = summary.to_pandas()
    assert list(frame.columns) == ["prompt", "completion", "messages", "model", "trace_id", "rating", "correction"]
    assert sorted(frame["trace_id"]) == sorted(summary.trace_ids)

    openai_frame = export_dataset(format="openai", experiment=experiment).to_pandas()
    assert list(openai_frame.columns) == ["messages", "trace_id"] and len(openai_frame) == 5

    dataset = summary.to_mlflow_dataset(name="support-finetune")
    assert dataset.name == "support-finetune"
    assert dataset.df.equals(frame)
    assert dataset.source.uri == str(path)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(experiment).experiment_id) as run:
        mlflow.log_input(dataset, context="fine-tuning")
    (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.name == "support-finetune"
    assert export_dataset(format="openai", experiment=experiment).to_mlflow_dataset().name == "mlflow_lite_openai"


def test_other_traces_are_skipped(client, experiment, openai_kw):
    import mlflow

    ask(client, openai_kw, "How do I export my data?")
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    span = mlflow.start_span_no_context(name="my_app", inputs={"question": "hi"}, experiment_id=experiment_id)
    span.end(outputs={"answer": "hello"})
    mlflow.flush_trace_async_logging()
    summary = export_dataset(experiment=experiment)
    assert summary.kept == 1 and summary.dropped == {"not_mlflow_lite": 1}


@pytest.mark.parametrize(
    "options, argument",
    [
        ({"format": "csv"}, "format"),
        ({"min_rating": "4"}, "min_rating"),
        ({"since": "yesterday"}, "since"),
        ({"since": True}, "since"),
        ({"max_traces": 0}, "max_traces"),
        ({"experiment": "no-such-experiment-" + uuid4().hex}, "experiment"),
    ],
)
def test_bad_arguments(options, argument, tmp_path):
    with pytest.raises(ml.ArgumentError) as caught:
        export_dataset(tmp_path / "x.jsonl", **options)
    assert caught.value.argument == argument
    assert not (tmp_path / "x.jsonl").exists()


def test_validators_enforce_each_formats_rules():
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert all(validate_record(ok, f) == [] for f in ("openai", "anthropic"))
    assert validate_record({"messages": [{"role": "user", "content": "q"}]}, "openai") == [
        "the last message must be the assistant's"
    ]
    assert validate_record({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
                           "openai") == ["there must be at least one user message"]
    assert validate_record({"messages": [{"role": "tool", "content": "x"}, *ok["messages"]]}, "openai")
    assert validate_record({"messages": [{"role": "user", "content": " "}, ok["messages"][1]]}, "openai")
    assert validate_record({"system": "s", "messages": [ok["messages"][1]]}, "anthropic")
    assert validate_record({"system": "", **ok}, "anthropic") == ["system must be non-empty text when present"]
    two_users = {"messages": [ok["messages"][0], *ok["messages"]]}
    assert validate_record(two_users, "anthropic") == ["messages must alternate user/assistant, starting with user"]
    assert validate_record({**ok, "extra": 1}, "openai") == ["unexpected keys ['extra']"]
    assert validate_record({"prompt": "q"}, "jsonl")[0].startswith("missing keys")
    assert validate_record([], "openai") == ["a record must be a JSON object, got list"]
    assert sorted(FORMATS) == ["anthropic", "jsonl", "openai"]


def test_default_experiment_is_mlflows_active_one(monkeypatch, stub, openai_kw):
    import mlflow
    import mlflow.tracking.fluent as fluent

    name = f"exp-{uuid4().hex}"
    mlflow.MlflowClient().create_experiment(name)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    client = ml.Client()  # no experiment of its own: traces go to MLflow's active experiment
    trace_id = ask(client, openai_kw, "How do I export my data?")
    assert export_dataset().trace_ids == [trace_id]
