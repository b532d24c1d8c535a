"""One MLflow trace per call: spans, attributes, experiments, nesting, autolog, exit flush."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid

import mlflow
import pytest

import mlflow_lite_plugin as ml

from tests.helpers import get_trace


def _traces_tagged(marker: str, experiment_ids: list[str] | None = None) -> list:
    mlflow.flush_trace_async_logging()
    return mlflow.search_traces(
        locations=experiment_ids,
        filter_string=f"tags.test_marker = '{marker}'",
        return_type="list",
    )


def test_trace_has_root_and_attempt_spans_with_usage_and_cost(client, stub, openai_kw):
    r = client.query(model="gpt-4o", prompt="trace me", system="Be brief.", **openai_kw)
    trace = get_trace(r.trace_id)
    root, attempt = trace.data.spans
    assert root.name == "mlflow_lite.query" and root.span_type == "CHAT_MODEL"
    assert root.inputs["messages"][0] == {"role": "system", "content": "Be brief."}
    assert root.outputs["choices"][0]["message"]["content"] == r.text
    attrs = root.attributes
    assert attrs["mlflow_lite.model"] == "openai/gpt-4o"
    assert attrs["mlflow_lite.provider"] == "openai"
    assert attrs["mlflow_lite.prompt_tokens"] == r.prompt_tokens
    assert attrs["mlflow_lite.completion_tokens"] == r.completion_tokens
    assert attrs["mlflow_lite.total_tokens"] == r.total_tokens
    assert attrs["mlflow_lite.cost_usd"] == pytest.approx(r.cost)
    assert attrs["mlflow_lite.latency_s"] == pytest.approx(r.latency, abs=1e-5)
    assert attrs["mlflow_lite.cached"] == "none"

    assert attempt.parent_id == root.span_id
    assert attempt.attributes["mlflow.chat.tokenUsage"]["total_tokens"] == r.total_tokens
    assert attempt.attributes["mlflow.llm.cost"]["total_cost"] == pytest.approx(r.cost)
    # MLflow aggregates the attempt's usage and cost at trace level (shown in its UI)
    assert trace.info.token_usage["total_tokens"] == r.total_tokens
    assert trace.info.tags["mlflow_lite.model"] == "gpt-4o"
    # span times are the real call times, not the time the background writer replayed them
    assert (root.end_time_ns - root.start_time_ns) / 1e9 == pytest.approx(r.latency, abs=0.05)


def test_unknown_price_is_null_cost_on_trace(client, stub, openai_kw):
    r = client.query(model="openai/unpriced-model", prompt="cost?", **openai_kw)
    attempt = get_trace(r.trace_id).data.spans[1]
    assert r.cost is None
    assert attempt.attributes["mlflow_lite.cost_known"] is False
    assert attempt.attributes.get("mlflow.llm.cost") is None  # never a made-up $0
    assert get_trace(r.trace_id).data.spans[0].attributes["mlflow_lite.cost_usd"] is None


def test_set_experiment(stub, openai_kw):
    name = f"lite-exp-{uuid.uuid4().hex[:8]}"
    client = ml.Client()
    client.set_experiment(name)
    r = client.query(model="gpt-4o", prompt="which experiment?", **openai_kw)
    trace = get_trace(r.trace_id)  # waits for the writer, which creates the experiment
    experiment = mlflow.get_experiment_by_name(name)
    assert experiment is not None
    assert trace.info.experiment_id == experiment.experiment_id


def test_set_tracing_off(stub, openai_kw):
    client = ml.Client()
    client.set_tracing(enabled=False)
    marker = uuid.uuid4().hex
    r = client.query(model="gpt-4o", prompt="untraced", tags={"test_marker": marker}, **openai_kw)
    assert r.text and r.trace_id is None
    client.flush_traces()
    assert _traces_tagged(marker) == []


def test_nests_under_callers_active_span(client, stub, openai_kw):
    with mlflow.start_span("my_app") as parent:
        r = client.query(model="gpt-4o", prompt="nested", tags={"team": "search"}, **openai_kw)
    assert r.trace_id == parent.trace_id
    trace = get_trace(parent.trace_id)
    names = {s.name: s for s in trace.data.spans}
    assert names["mlflow_lite.query"].parent_id == parent.span_id
    assert names["openai/gpt-4o (attempt 1)"].parent_id == names["mlflow_lite.query"].span_id
    # The trace is the caller's: our tags stay on our span instead of being lost.
    assert "team" not in trace.info.tags
    assert names["mlflow_lite.query"].attributes["mlflow_lite.trace_tags"] == {
        "mlflow_lite.model": "gpt-4o", "team": "search"}


@pytest.fixture
def litellm_callbacks():
    """Restore LiteLLM's callback lists after the test: ``mlflow.litellm.autolog(disable=True)``
    leaves MLflow's logger in LiteLLM's async lists, which would put every later test in live mode."""
    import litellm

    names = ("success_callback", "failure_callback", "callbacks", "_async_success_callback", "_async_failure_callback")
    saved = {name: list(getattr(litellm, name)) for name in names}
    yield
    for name, value in saved.items():
        setattr(litellm, name, value)


def test_litellm_autolog_does_not_log_twice(client, stub, openai_kw, litellm_callbacks):
    """With mlflow.litellm.autolog() on, a query or a stream is still exactly one trace."""
    import time

    experiment = f"autolog-{uuid.uuid4().hex[:8]}"
    client.set_experiment(experiment)
    exp_id = mlflow.create_experiment(experiment)
    mlflow.set_experiment(experiment_id=exp_id)  # where LiteLLM's callback would write, too
    mlflow.litellm.autolog()
    try:
        r = client.query(model="gpt-4o", prompt="autolog on", **openai_kw)
        stream = client.stream(model="gpt-4o", prompt="autolog stream", **openai_kw)
        list(stream)
        time.sleep(1)  # LiteLLM logs streams from a worker thread: give it time to misbehave
    finally:
        mlflow.litellm.autolog(disable=True)
        mlflow.set_experiment("Default")
    client.flush_traces()
    mlflow.flush_trace_async_logging()
    traces = mlflow.search_traces(locations=[exp_id], return_type="list")
    assert sorted(t.info.trace_id for t in traces) == sorted([r.trace_id, stream.response.trace_id])
    query_spans = get_trace(r.trace_id).data.spans
    # LiteLLM's own span nests inside our attempt span
    assert [s.name for s in query_spans] == ["mlflow_lite.query", "openai/gpt-4o (attempt 1)", "litellm-completion"]
    assert query_spans[2].parent_id == query_spans[1].span_id


def test_batch_after_litellm_autolog_is_disabled_is_one_trace_per_call(client, stub, openai_kw, litellm_callbacks):
    """LiteLLM keeps calling MLflow's logger for async calls after ``autolog(disable=True)``: the
    calls of ``ml.batch`` must still be one trace each, not one of ours plus one of LiteLLM's."""
    import time

    mlflow.litellm.autolog()
    client.batch([{"prompt": "while autolog is on"}], model="gpt-4o", **openai_kw)  # LiteLLM registers its async logger
    mlflow.litellm.autolog(disable=True)
    experiment = mlflow.create_experiment(f"autolog-off-{uuid.uuid4().hex[:8]}")
    client.set_experiment(mlflow.get_experiment(experiment).name)
    mlflow.set_experiment(experiment_id=experiment)  # where LiteLLM's logger would write, too
    try:
        results = client.batch([{"prompt": f"after autolog {i}"} for i in range(4)], model="gpt-4o", **openai_kw)
        time.sleep(1)  # LiteLLM logs async calls from a task of its own: give it time to misbehave
    finally:
        mlflow.set_experiment("Default")
    client.flush_traces()
    mlflow.flush_trace_async_logging()
    traces = mlflow.search_traces(locations=[experiment], return_type="list")
    assert sorted(t.info.trace_id for t in traces) == sorted(r.trace_id for r in results)
    assert {t.data.spans[0].name for t in traces} == {"mlflow_lite.query"}


def _run_python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_traces_are_flushed_at_interpreter_exit(tmp_path, store_dir):
    """The script exits right after its calls, without flushing: no trace is lost."""
    marker = uuid.uuid4().hex
    code = f"""
        import sys, mlflow_lite_plugin as ml
        for i in range(3):
            r = ml.query(model="lite/echo", prompt=f"exit flush {{i}}", tags={{"test_marker": "{marker}"}})
        print("answered", flush=True)
    """
    result = _run_python(code, {"MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "true"})  # MLflow's default
    assert result.returncode == 0, result.stderr
    assert "answered" in result.stdout
    assert len(_traces_tagged(marker)) == 3


def test_trace_writing_is_off_the_callers_path(client, stub, openai_kw, monkeypatch):
    """With the trace writer stalled, calls still return at once; trace_id resolves after."""
    import threading
    import time

    from mlflow_lite_plugin.tracing import tracer as tracing

    release = threading.Event()
    replay = tracing.Span._replay

    def stalled_replay(self):
        release.wait(30)
        replay(self)

    monkeypatch.setattr(tracing.Span, "_replay", stalled_replay)
    started = time.perf_counter()
    responses = [client.query(model="gpt-4o", prompt=f"fast {i}", **openai_kw) for i in range(3)]
    assert time.perf_counter() - started < 5
    assert not release.is_set()
    threading.Timer(0.3, release.set).start()
    assert all(r.trace_id for r in responses)  # waits for the writer, now released
    answer = get_trace(responses[-1].trace_id).data.spans[0].outputs["choices"][0]["message"]["content"]
    assert answer == "Stub answer from gpt-4o: fast 2"


@pytest.mark.slow
def test_unreachable_tracking_store_never_fails_a_call():
    code = """
        import mlflow_lite_plugin as ml
        r = ml.query(model="lite/echo", prompt="store is down")
        print("ANSWER", r.text, flush=True)
        print("TRACE", r.trace_id, flush=True)
    """
    env = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens there
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
        "MLFLOW_LITE_TRACE_FLUSH_TIMEOUT": "20",
        "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "true",
    }
    result = _run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert "ANSWER Echo: store is down" in result.stdout
    assert "WARNING" in result.stderr or "Failed" in result.stderr or "Could not" in result.stderr


def test_an_experiment_created_meanwhile_by_another_writer_is_used(monkeypatch):
    """Another thread, process or replica creates the experiment between our lookup and our
    creation: MLflow's unique-constraint error is not a tracing failure, the other's id is used."""
    from mlflow_lite_plugin.tracing.tracer import Tracer

    name = f"raced-{uuid.uuid4().hex[:8]}"
    theirs = mlflow.create_experiment(name)
    lookup = mlflow.MlflowClient.get_experiment_by_name
    first = [True]

    def stale_once(self, experiment_name):  # the lookup ran before the other writer's creation
        if first[0]:
            first[0] = False
            return None
        return lookup(self, experiment_name)

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", stale_once)
    assert Tracer(experiment=name).experiment_id() == theirs


def test_threads_asking_for_a_new_experiment_at_once_share_one(monkeypatch):
    from mlflow_lite_plugin.tracing.tracer import Tracer

    tracer = Tracer(experiment=f"fresh-{uuid.uuid4().hex[:8]}")
    created = []
    create = mlflow.MlflowClient.create_experiment

    def counted(self, *args, **kwargs):
        created.append(args)
        return create(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "create_experiment", counted)
    barrier = threading.Barrier(8)
    ids: list[str | None] = []

    def ask() -> None:
        barrier.wait()
        ids.append(tracer.experiment_id())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1 and ids[0] is not None
    assert len(created) == 1


def test_follows_mlflow_set_experiment(client, stub, openai_kw):
    """No ml.set_experiment: traces go where mlflow.set_experiment points, from the writer thread too."""
    name = f"mlflow-set-{uuid.uuid4().hex[:8]}"
    experiment = mlflow.set_experiment(name)
    try:
        r = client.query(model="gpt-4o", prompt="follow mlflow", **openai_kw)
        assert get_trace(r.trace_id).info.experiment_id == experiment.experiment_id
    finally:
        mlflow.set_experiment("Default")


def test_query_inside_a_user_span_on_a_client_with_its_own_experiment(stub, openai_kw):
    """Our root nests under the caller's span: the experiment is the caller's trace's, and the
    trace stays readable (passing an experiment to a nested span used to corrupt it)."""
    client = ml.Client(experiment=f"nested-{uuid.uuid4().hex[:8]}")
    with mlflow.start_span("outer") as outer:
        client.query(model="gpt-4o", prompt="nested", **openai_kw)
    trace = get_trace(outer.trace_id)
    assert [s.name for s in trace.data.spans][:2] == ["outer", "mlflow_lite.query"]


def test_writer_drops_traces_beyond_its_bound_instead_of_growing(stub, openai_kw, monkeypatch, caplog):
    from mlflow_lite_plugin.tracing import store

    monkeypatch.setattr(store, "MAX_PENDING_TRACES", 0)  # every trace finds the queue "full"
    client = ml.Client()
    r = client.query(model="gpt-4o", prompt="dropped trace", **openai_kw)
    assert r.text.startswith("Stub answer") and r.trace_id is None  # the call itself is unaffected
    assert client.tracer._writer.dropped == 1 and "dropped" in caplog.text


def _hold_writer(client: ml.Client, monkeypatch) -> threading.Event:
    """Keep ``client``'s writer from writing until the returned event is set."""
    gate, writer = threading.Event(), client.tracer._writer
    write = writer.write

    def held(batch):
        assert gate.wait(60)
        write(batch)

    monkeypatch.setattr(writer, "write", held)
    return gate


def _run_traces(run_id: str, experiment_id: str) -> set[str]:
    return {t.info.trace_id for t in mlflow.search_traces(locations=[experiment_id], run_id=run_id, return_type="list")}


@pytest.mark.parametrize("export", ["thread", "process"])
def test_traces_link_to_the_run_active_when_the_call_was_made(export, stub, openai_kw, monkeypatch):
    """Written after that run ended and another began, a trace still belongs to its call's run and
    that run's experiment, as MLflow's own traces do; a call outside any run links to none."""
    client = ml.Client()
    client.set_tracing(export=export)
    experiment = mlflow.create_experiment(f"run-links-{uuid.uuid4().hex[:8]}")
    gate = _hold_writer(client, monkeypatch)
    with mlflow.start_run(experiment_id=experiment) as first:
        inside = [client.query(model="gpt-4o", prompt=f"in the run {i}", **openai_kw) for i in range(2)]
    outside = client.query(model="gpt-4o", prompt="after the run", **openai_kw)
    with mlflow.start_run(experiment_id=experiment) as second:  # the latest active run as they are written
        gate.set()
        client.flush_traces()
    inside_ids = {r.trace_id for r in inside}
    assert None not in inside_ids and outside.trace_id is not None
    assert _run_traces(first.info.run_id, experiment) == inside_ids
    assert _run_traces(second.info.run_id, experiment) == set()
    assert {get_trace(i).info.experiment_id for i in inside_ids} == {experiment}
    assert get_trace(outside.trace_id).info.experiment_id != experiment
    if export == "thread":  # MLflow's own record of the run, as for any trace made in a run
        assert {get_trace(i).info.trace_metadata.get("mlflow.sourceRun") for i in inside_ids} == {first.info.run_id}
        assert "mlflow.sourceRun" not in get_trace(outside.trace_id).info.trace_metadata


def test_traces_link_to_the_active_model(client, stub, openai_kw):
    """``mlflow.set_active_model`` links traces to that LoggedModel (the flavor's predict gets the
    same from MLflow's prediction context: test_flavor)."""
    model = mlflow.set_active_model(name=f"active-{uuid.uuid4().hex[:8]}")
    try:
        r = client.query(model="gpt-4o", prompt="which model?", **openai_kw)
    finally:
        mlflow.clear_active_model()
    later = client.query(model="gpt-4o", prompt="no model now", **openai_kw)
    assert get_trace(r.trace_id).info.trace_metadata.get("mlflow.modelId") == model.model_id
    assert "mlflow.modelId" not in get_trace(later.trace_id).info.trace_metadata


@pytest.mark.parametrize("export", ["thread", "process"])
def test_mlflow_tracing_disable_is_honoured_at_the_call(export, stub, openai_kw, monkeypatch):
    client = ml.Client()
    client.set_tracing(export=export)
    gate = _hold_writer(client, monkeypatch)  # written after tracing is back on, it must not appear
    mlflow.tracing.disable()
    try:
        untraced = client.query(model="gpt-4o", prompt="while disabled", **openai_kw)
    finally:
        mlflow.tracing.enable()
        gate.set()
    traced = client.query(model="gpt-4o", prompt="enabled again", **openai_kw)
    assert untraced.text.startswith("Stub answer") and untraced.trace_id is None
    assert get_trace(traced.trace_id).data.spans[0].name == "mlflow_lite.query"


def test_mlflow_genai_evaluate_traces_each_row_once(client):
    """``mlflow.genai.evaluate`` probes ``predict_fn`` with tracing disabled, then traces it: each
    row is one trace with our spans nested in it, linked to the evaluation run; the probe leaves
    no trace behind."""
    from mlflow.genai.scorers import scorer

    @scorer
    def answered(outputs) -> bool:
        return outputs.startswith("Echo: What is")

    def predict(question: str) -> str:
        return client.query(question, model="lite/echo").text

    experiment = mlflow.set_experiment(f"genai-eval-{uuid.uuid4().hex[:8]}").experiment_id
    try:
        result = mlflow.genai.evaluate(data=[{"inputs": {"question": f"What is {i}?"}} for i in range(3)],
                                       predict_fn=predict, scorers=[answered])
    finally:
        mlflow.set_experiment("Default")
    client.flush_traces()
    assert result.metrics["answered/mean"] == 1.0
    traces = mlflow.search_traces(locations=[experiment], return_type="list")
    assert len(traces) == 3
    for trace in traces:
        assert [s.name for s in trace.data.spans] == ["predict", "mlflow_lite.query", "lite/echo (attempt 1)"]
        assert trace.info.tags.get("mlflow.eval.requestId")
    assert len(mlflow.search_traces(locations=[experiment], run_id=result.run_id, return_type="list")) == 3
