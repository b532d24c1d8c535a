"""Traces written by the exporter child process (``set_tracing(export="process")``) are the same
traces as the in-process writer's, and the child is robust: sampling, crashes, signals, exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import mlflow
import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError

from tests.helpers import assert_process_exits, get_trace, running_mlflow_server

# Differ between two runs of the same call (ids, clocks), or only say how the trace was written.
_VOLATILE_ATTRIBUTES = ("mlflow.traceRequestId", "mlflow.spanStartTimeNs", "mlflow.spanLogLevel",
                        "mlflow_lite.latency_s", "mlflow_lite.time_to_first_token_s")


@pytest.fixture
def pair():
    """(thread client, process client) with the same settings."""
    thread, process = ml.Client(), ml.Client()
    process.set_tracing(export="process")
    assert (thread.tracer.export, process.tracer.export) == ("thread", "process")
    yield thread, process
    thread.flush_traces()
    process.flush_traces()


def _view(trace) -> dict:
    """What a user sees of a trace, without ids and timings."""
    spans = trace.data.spans
    index = {s.span_id: i for i, s in enumerate(spans)}

    def attributes(span):
        return {k: _unstamped(v) for k, v in span.attributes.items()
                if k not in _VOLATILE_ATTRIBUTES and not k.startswith("mlflow.traceTag.")}

    def events(span):
        return [(e.name, {k: v for k, v in e.attributes.items() if k != "exception.stacktrace"}) for e in span.events]

    info = trace.info
    return {
        "spans": [(s.name, s.span_type, index.get(s.parent_id), s.status.status_code, attributes(s),
                   s.inputs, _unstamped(s.outputs), events(s)) for s in spans],
        "tags": {k: v for k, v in info.tags.items() if not k.startswith("mlflow.") or k == "mlflow.traceName"},
        "previews": (info.request_preview, info.response_preview),
        "token_usage": info.token_usage,
        "state": info.state,
        "assessments": sorted((a.name, json.dumps(a.value), a.source.source_type, a.rationale)
                              for a in info.assessments),
    }


def _unstamped(value):
    """A provider response without its id and clock (new for every answer: two calls can straddle
    a second boundary)."""
    return {k: v for k, v in value.items() if k not in ("id", "created")} if isinstance(value, dict) else value


def _same_trace(thread_trace_id: str | None, process_trace_id: str | None) -> dict:
    assert thread_trace_id and process_trace_id and thread_trace_id != process_trace_id
    thread, process = _view(get_trace(thread_trace_id)), _view(get_trace(process_trace_id))
    assert process == thread
    return process


def test_a_query_is_traced_the_same_by_both_writers(pair, stub, openai_kw):
    results = [c.query(model="gpt-4o", prompt="same trace?", system="Be brief.", tags={"team": "search"},
                       **openai_kw) for c in pair]
    view = _same_trace(*(r.trace_id for r in results))
    # and that trace is a full one: root + attempt, usage and cost aggregated by MLflow, tags
    assert [s[0] for s in view["spans"]] == ["mlflow_lite.query", "openai/gpt-4o (attempt 1)"]
    assert view["spans"][1][2] == 0  # the attempt is the root's child
    assert view["token_usage"]["total_tokens"] == results[1].total_tokens > 0
    assert view["tags"]["team"] == "search" and view["tags"]["mlflow_lite.model"] == "gpt-4o"
    assert view["previews"][1] == results[1].text
    assert view["spans"][1][4]["mlflow.llm.cost"]["total_cost"] == pytest.approx(results[1].cost)
    assert str(view["state"]).endswith("OK")


def test_a_failed_call_is_traced_the_same_with_its_exception(pair, stub, openai_kw):
    trace_ids = []
    for client in pair:
        stub.inject(status=500, times=1)
        with pytest.raises(MlflowLiteError) as error:
            client.query(model="gpt-4o", prompt="fail me", num_retries=0, **openai_kw)
        trace_ids.append(error.value.trace_id)
    view = _same_trace(*trace_ids)
    assert str(view["state"]).endswith("ERROR")
    root_events = view["spans"][0][7]
    assert any(name == "exception" and "500" in attrs["exception.message"] for name, attrs in root_events)


def test_cache_hits_streams_and_metric_feedback_are_traced_the_same(pair, stub, openai_kw):
    hits, streams = [], []
    prompt = f"cache me {uuid.uuid4().hex}"
    for client in pair:
        client.set_cache(enabled=True, ttl=3600)
        client.add_metric("words", lambda text: len(text.split()))
        client.query(model="gpt-4o", prompt=prompt, **openai_kw)
        hits.append(client.query(model="gpt-4o", prompt=prompt, **openai_kw))
        with client.stream(model="gpt-4o", prompt="stream me", **openai_kw) as stream:
            "".join(stream)
        streams.append(stream.response)
    assert [h.cached for h in hits] == ["exact", "exact"]
    hit = _same_trace(*(h.trace_id for h in hits))
    assert [e[0] for e in hit["spans"][0][7]] == ["cache_hit"]
    assert [a[0] for a in hit["assessments"]] == ["words"]  # MLflow feedback, CODE source
    assert hit["assessments"][0][2] == "CODE"
    _same_trace(*(s.trace_id for s in streams))


def test_experiment_choice_is_honoured(stub, openai_kw):
    name = f"export-{uuid.uuid4().hex[:8]}"
    client = ml.Client(experiment=name)
    client.set_tracing(export="process")
    r = client.query(model="gpt-4o", prompt="where?", **openai_kw)
    assert get_trace(r.trace_id).info.experiment_id == mlflow.get_experiment_by_name(name).experiment_id


def test_sampling_ratio_is_applied_before_anything_is_sent(stub, openai_kw, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACE_SAMPLING_RATIO", "0")
    client = ml.Client()
    client.set_tracing(export="process")
    r = client.query(model="gpt-4o", prompt="not sampled", **openai_kw)
    assert r.text and r.trace_id is None
    assert client.tracer._writer._child is None  # no exporter started for nothing


def test_a_dead_exporter_loses_only_what_it_had_and_is_replaced(stub, openai_kw, caplog):
    client = ml.Client()
    client.set_tracing(export="process")
    first = client.query(model="gpt-4o", prompt="before the crash", **openai_kw)
    assert get_trace(first.trace_id)
    child = client.tracer._writer._child._proc
    os.kill(child.pid, signal.SIGSTOP)  # holds the next trace without acknowledging it
    try:
        lost = client.query(model="gpt-4o", prompt="during the crash", **openai_kw)
        deadline = time.monotonic() + 10
        while not client.tracer._writer._child._waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.tracer._writer._child._waiting, "the trace never reached the exporter"
    finally:
        os.kill(child.pid, signal.SIGKILL)
    assert lost.text and lost.trace_id is None  # the call was answered; its trace is gone
    assert "trace exporter exited" in caplog.text
    after = client.query(model="gpt-4o", prompt="after the crash", **openai_kw)
    assert get_trace(after.trace_id)
    assert client.tracer._writer._child._proc.pid != child.pid


def test_the_exporter_writes_what_it_was_given_when_its_process_is_killed(stub, openai_kw):
    """SIGKILL the calling process while its traces sit unacknowledged in the pipe: the exporter,
    in its own session, still writes them all, then exits."""
    marker = uuid.uuid4().hex
    script = textwrap.dedent(f"""
        import sys, time
        import mlflow_lite_plugin as ml
        ml.set_tracing(export="process")
        kw = dict(model="gpt-4o", api_base={openai_kw['api_base']!r}, api_key={openai_kw['api_key']!r})
        ml.query("start the exporter", **kw).trace_id
        writer = ml.get_default_client().tracer._writer
        print(writer._child._proc.pid, flush=True)
        sys.stdin.readline()  # the test stops the exporter here
        for i in range(10):
            ml.query("killed {{}}".format(i), tags={{"test_marker": "{marker}"}}, **kw)
        while len(writer._child._waiting) < 10:  # all ten sent, none acknowledged
            time.sleep(0.01)
        print("sent", flush=True)
        time.sleep(600)
    """)
    caller = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        exporter = int(caller.stdout.readline())
        assert os.getsid(exporter) != os.getsid(caller.pid)  # out of reach of the caller's group
        os.kill(exporter, signal.SIGSTOP)
        caller.stdin.write("go\n")
        caller.stdin.flush()
        assert caller.stdout.readline().strip() == "sent"
        os.killpg(caller.pid, signal.SIGKILL)  # no atexit flush, no goodbye
        caller.wait(10)
    finally:
        if caller.poll() is None:
            caller.kill()
        os.kill(exporter, signal.SIGCONT)
    assert_process_exits(exporter, "the exporter did not exit after its caller died")
    assert len(_traces_tagged(marker)) == 10


def test_traces_are_written_at_exit_and_the_exporter_exits_with_the_process(stub, openai_kw, store_dir):
    """A short-lived process exits right after its calls: its traces are still all written,
    and its exporter does not outlive it."""
    marker = uuid.uuid4().hex
    script = textwrap.dedent(f"""
        import mlflow_lite_plugin as ml
        ml.set_tracing(export="process")
        for i in range(25):
            ml.query("exit flush {{}}".format(i), model="gpt-4o", api_base={openai_kw['api_base']!r},
                     api_key={openai_kw['api_key']!r}, tags={{"test_marker": "{marker}"}})
        import time
        writer = ml.get_default_client().tracer._writer
        while writer._child is None:  # started by the writer thread with the first batch
            time.sleep(0.01)
        print(writer._child._proc.pid)
    """)
    env = dict(os.environ, MLFLOW_ENABLE_ASYNC_TRACE_LOGGING="true")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_process_exits(int(done.stdout.split()[-1]), "the trace exporter outlived its process")
    assert len(_traces_tagged(marker)) == 25


def _traces_tagged(marker: str) -> list:
    return mlflow.search_traces(filter_string=f"tags.test_marker = '{marker}'", return_type="list", max_results=1000)


def test_bad_export_values_are_refused_by_name(monkeypatch):
    with pytest.raises(ArgumentError, match="export"):
        ml.Client().set_tracing(export="carrier-pigeon")
    monkeypatch.setenv("MLFLOW_LITE_TRACE_EXPORT", "nope")
    with pytest.raises(ValueError, match="MLFLOW_LITE_TRACE_EXPORT"):
        ml.Client()


def test_a_flush_writes_a_backlog_in_batches_in_the_thread_writer():
    """The end of a long batch job: the in-process writer is behind, and a flush (or the exit)
    writes what waits with the batch path instead of one trace at a time past the timeout."""
    import threading

    client = ml.Client()
    writer = client.tracer._writer
    release, original = threading.Event(), writer.write
    writer.write = lambda batch: (release.wait(60), original(batch))  # the writer is stuck on one
    marker = uuid.uuid4().hex
    n = 130  # more than MLflow links to a run in one call
    with mlflow.start_run() as run:
        responses = [client.query(f"backlog {i}", model="lite/echo", tags={"test_marker": marker}) for i in range(n)]
    deadline = time.monotonic() + 10
    while len(writer._pending) != n - 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # one taken by the stuck writer, the rest waiting
    writer.drain()
    drained = [r for r in responses if r._trace._done.is_set()]
    assert len(drained) == n - 1 and all(r.trace_id for r in drained)
    release.set()
    client.flush_traces()
    traces = {t.info.trace_id: t for t in _traces_tagged(marker)}
    assert set(traces) == {r.trace_id for r in responses}
    for r in responses:
        trace = traces[r.trace_id]
        assert trace.data.spans[0].name == "mlflow_lite.query"
        assert trace.data.spans[0].outputs["choices"][0]["message"]["content"] == r.text
    # the one the thread wrote carries MLflow's client metadata, the drained ones do not
    assert sum("mlflow.user" in traces[r.trace_id].info.trace_metadata for r in responses) == 1
    # all are linked to the run they were made in, though written after it ended
    in_run = mlflow.search_traces(run_id=run.info.run_id, max_results=2 * n, return_type="list")
    assert {t.info.trace_id for t in in_run} == set(traces)


def test_the_thread_writer_writes_a_burst_in_batches_without_a_flush():
    """A burst of calls outpaces one-by-one writing: the writer itself takes the backlog in
    batches (a tenth of the CPU), so it does not compete with the calls for the GIL."""
    import threading

    client = ml.Client()
    writer = client.tracer._writer
    release, original = threading.Event(), writer.write
    writer.write = lambda batch: (release.wait(60), original(batch))  # busy on one while the burst arrives
    marker = uuid.uuid4().hex
    n = 40
    responses = [client.query(f"burst {i}", model="lite/echo", tags={"test_marker": marker}) for i in range(n)]
    release.set()
    deadline = time.monotonic() + 30
    while not all(r._trace._done.is_set() for r in responses) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(r._trace._done.is_set() and r.trace_id for r in responses)  # no flush was asked for
    client.flush_traces()
    traces = {t.info.trace_id: t for t in _traces_tagged(marker)}
    assert set(traces) == {r.trace_id for r in responses}
    # only the trace the writer was busy with went through MLflow's one-by-one export
    assert sum("mlflow.user" in t.info.trace_metadata for t in traces.values()) == 1


def test_the_exporter_writes_to_a_tracking_server_over_http(stub, openai_kw, tmp_path, monkeypatch):
    """Replicas trace to a shared ``mlflow server``: the batches go over its REST API (OTLP
    ingestion), with tags, previews, usage and metric feedback."""
    with running_mlflow_server(tmp_path, dict(os.environ)) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.tracing.reset()  # MLflow's tracer keeps the URI it started with
        try:
            client = ml.Client()
            client.set_tracing(export="process")
            client.add_metric("words", lambda text: len(text.split()))
            responses = [client.query(model="gpt-4o", prompt=f"over http {i}", tags={"team": "ops"}, **openai_kw)
                         for i in range(3)]
            client.flush_traces()
            for r in responses:
                trace = mlflow.MlflowClient(url).get_trace(r.trace_id)
                assert trace.info.tags["team"] == "ops" and trace.info.response_preview == r.text
                assert trace.info.token_usage["total_tokens"] == r.total_tokens
                assert [a.name for a in trace.info.assessments] == ["words"]
                assert [s.name for s in trace.data.spans] == ["mlflow_lite.query", "openai/gpt-4o (attempt 1)"]
        finally:
            monkeypatch.undo()
            mlflow.tracing.reset()


def _ask_in_a_forked_worker(job: tuple[str, str, str]) -> str:
    export, marker, prompt = job
    client = ml.get_default_client()
    assert client.tracer.export == export
    return client.query(prompt, model="lite/echo", tags={"test_marker": marker}).text  # no wait for the trace


@pytest.mark.parametrize("export", ["thread", "process"])
def test_forked_workers_write_their_traces(export, default_client):
    """multiprocessing forks (Linux's default) a process whose default client has already traced:
    each worker writes its own traces, before it exits, without waiting on the parent's writer."""
    import multiprocessing

    default_client.set_tracing(export=export)
    marker = uuid.uuid4().hex
    assert default_client.query("in the parent", model="lite/echo", tags={"test_marker": marker}).trace_id
    jobs = [(export, marker, f"in a worker {i}") for i in range(6)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        answers = pool.map(_ask_in_a_forked_worker, jobs)
        pool.close()
        pool.join()
    assert answers == [f"Echo: in a worker {i}" for i in range(6)]
    assert len(_traces_tagged(marker)) == 7
