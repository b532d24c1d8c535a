"""Writing traces to MLflow from a separate process, in batches.

Writing one trace with MLflow's per-trace export costs 20-30 ms of CPU against a sqlite store
(``start_trace`` and ``log_spans`` each open an ORM session). In a server that answers from the
cache in ~2 ms that writer thread takes most of the process's GIL. This exporter moves the work out
of the process and batches it: the caller's process only turns each finished trace into one JSON
line on a pipe; a child process (``python -m mlflow_lite_plugin.tracing.export``, at a lower CPU
priority so it never slows the requests it traces) writes up to ``MAX_BATCH`` traces with one
``log_spans`` call, MLflow's multi-trace ingestion path (the one its OTLP endpoint ``/v1/traces``
uses), about 10x less CPU per trace. It acknowledges each trace on its stdout, which is when
``Response.trace_id`` resolves. It opens each store once, under a lock (``tracing.open_store``):
several exporters, or an exporter and its server, must not create a fresh store's schema at once.
A batch that fails is tried again with backoff (``RETRY_ATTEMPTS``), while newer batches go on;
one that still fails, or that cannot succeed (a store without ``log_spans``), is dropped with a
warning that counts it.

Traces written this way carry the same spans, attributes, events, tags, request/response previews,
token usage, cost and feedback, and are linked to the caller's run. Trace metadata is not set
(MLflow has no batch call for it): MLflow's client metadata (``mlflow.user``, ``mlflow.source.*``)
and the LoggedModel link (``mlflow.modelId``). The in-process thread writer uses the same batch path
(:func:`write_now`) when a flush finds a backlog. The child exits when this process closes the pipe (at its exit),
after writing what it was given, even if that process was killed; it runs in its own session, so
signals sent to the server's process group do not reach it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import random
import secrets
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from mlflow_lite_plugin.tracing.tracer import FLUSH_TIMEOUT, MAX_PENDING_TRACES, RETRY_ATTEMPTS, TraceRef, _QueueWriter, open_store, retry_delay

if TYPE_CHECKING:
    from mlflow_lite_plugin.tracing.tracer import Span, _Trace

_logger = logging.getLogger(__name__)

MAX_BATCH = 200
LINKS_PER_CALL = 100  # MLflow's limit for link_traces_to_run
LINGER_S = 0.05  # wait this long for a batch to fill once a trace arrives
NICE = 19  # the child yields the CPU to the serving process


# -- the caller's side: one JSON line per trace --


def trace_record(trace: _Trace, tracking_uri: str, experiment_id: str) -> dict[str, Any]:
    """A finished trace as plain data, with its span ids (its trace id, ``key``, is chosen on
    submit): everything the child needs."""
    assert trace.root is not None and trace.key is not None
    spans: list[dict[str, Any]] = []

    def add(span: Span, parent_id: str | None) -> None:
        span_id = secrets.token_hex(8)
        spans.append({
            "span_id": span_id, "parent_id": parent_id, "name": span.name, "type": span.span_type,
            "start_ns": span.start_ns, "end_ns": span.end_ns or time.time_ns(),
            "inputs": span.inputs, "outputs": span.outputs, "attributes": span.attributes,
            "events": span.events, "error": span.error_record(),
        })
        for child in span.children:
            add(child, span_id)

    add(trace.root, None)
    return {"key": trace.key, "tracking_uri": tracking_uri, "experiment_id": experiment_id,
            "tags": trace.tags, "feedback": trace.feedback, "spans": spans, "run_id": trace.links.run_id}


def _sampling_ratio() -> float:
    try:
        return float(os.environ.get("MLFLOW_TRACE_SAMPLING_RATIO", "1"))
    except ValueError:
        return 1.0


class Destinations:
    """(tracking URI, experiment id) of a trace, as MLflow would pick them in this process now."""

    def __init__(self) -> None:
        self._experiments: dict[tuple[Any, ...], str] = {}

    def __call__(self, trace: _Trace) -> tuple[str, str]:
        import mlflow
        from mlflow.tracking import fluent

        uri = mlflow.get_tracking_uri()
        own = trace.chosen_experiment_id()
        if own is not None:
            return uri, own
        # Resolving the active experiment costs ~1 ms (MLflow probes for Databricks each time):
        # cache it on everything it depends on.
        key = (uri, fluent._active_experiment_id, os.environ.get("MLFLOW_EXPERIMENT_ID"),
               os.environ.get("MLFLOW_EXPERIMENT_NAME"))
        if key not in self._experiments:
            self._experiments[key] = fluent._get_experiment_id() or "0"
        return uri, self._experiments[key]


def write_now(traces: list[_Trace], warn: Callable[[Exception], None]) -> list[tuple[_Trace, str | None]]:
    """Write ``traces`` in this process, in batches (the thread writer's fast path for a backlog);
    (trace, its id or None) each."""
    destination = Destinations()
    records: dict[str, tuple[dict[str, Any], _Trace]] = {}
    written: list[tuple[_Trace, str | None]] = []
    for trace in traces:
        try:
            trace.key = trace.key or secrets.token_hex(16)
            records[trace.key] = (trace_record(trace, *destination(trace)), trace)
        except Exception as exc:
            warn(exc)
            written.append((trace, None))
    items = list(records.values())
    retries = Retries()
    deadline = time.monotonic() + FLUSH_TIMEOUT
    for start in range(0, len(items), MAX_BATCH):
        pending, attempt = [record for record, _ in items[start:start + MAX_BATCH]], 0
        while pending:
            attempt += 1
            acks, failures = write_batch(pending)
            pending, wait = [], 0.0
            for failure in failures:
                delay = retries.failed(failure, attempt, deadline)
                if delay is None:
                    acks += [(record["key"], None) for record in failure.records]
                else:
                    pending += failure.records
                    wait = max(wait, delay)
            written += [(records[key][1], trace_id) for key, trace_id in acks]
            time.sleep(wait)
    return written


class ProcessWriter(_QueueWriter):
    """Sends finished traces to the exporter child; a trace is done when the child acknowledges it."""

    mode = "process"
    linger = 0.1
    max_batch = MAX_BATCH

    def __init__(self) -> None:
        super().__init__()
        self._destination = Destinations()

    def _start(self) -> None:
        super()._start()
        self._child: _Child | None = None  # after a fork, the parent's exporter is not ours

    def submit(self, trace: _Trace) -> None:
        # MLflow's sampler never sees these traces: apply its ratio here.
        if random.random() >= _sampling_ratio():
            trace.ref.set(None)
            return
        trace.key = secrets.token_hex(16)  # the OTel trace id, in hex
        trace.ref.planned_id = mlflow_trace_id(trace.key)
        super().submit(trace)

    def _write(self, batch: list[_Trace]) -> None:
        from mlflow.tracing.utils import TraceJSONEncoder  # inputs and outputs serialise as MLflow would

        items = []
        for trace in batch:
            try:
                record = trace_record(trace, *self._destination(trace))
                items.append((record["key"], json.dumps(record, cls=TraceJSONEncoder, ensure_ascii=False), trace.ref))
            except Exception as exc:
                self._warn(exc)
                self._done(trace.ref, None)
        try:
            if self._child is None or not self._child.alive():
                self._child = _Child(self._done, self._warn)
        except Exception as exc:
            self._warn(exc)
            for _, _, ref in items:
                self._done(ref, None)
            return
        self._child.send(items)


class _Child:
    """One exporter child process and the traces it has not acknowledged yet."""

    def __init__(self, done: Callable[[TraceRef, str | None], None], warn: Callable[[Exception], None]) -> None:
        self._done = done
        self._warn = warn
        self._waiting: dict[str, TraceRef] = {}
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None,  # its warnings go where ours go
            # Its own session: a SIGTERM or Ctrl-C sent to the server's process group must not
            # kill it while it holds traces; it exits when our end of the pipe closes.
            start_new_session=True,
        )
        threading.Thread(target=self._read_acks, name="mlflow-lite-trace-acks", daemon=True).start()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def send(self, items: list[tuple[str, str, TraceRef]]) -> None:
        """(key, JSON line, ref) of each trace."""
        with self._lock:
            self._waiting.update((key, ref) for key, _, ref in items)
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write("".join(line + "\n" for _, line, _ in items).encode())
            self._proc.stdin.flush()
        except Exception as exc:  # not sent (or the child died): what it did not acknowledge is lost
            self._warn(exc)
            with self._lock:
                lost = [ref for key, _, _ in items if (ref := self._waiting.pop(key, None))]
            for ref in lost:
                self._done(ref, None)

    def _read_acks(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                ack = json.loads(line)
                with self._lock:
                    ref = self._waiting.pop(ack["key"])
            except (ValueError, KeyError):
                _logger.warning("Unexpected output of the trace exporter: %r", line[:200])
                continue
            self._done(ref, ack.get("trace_id"))
        code = self._proc.wait()
        with self._lock:
            lost, self._waiting = list(self._waiting.values()), {}
        if lost:
            self._warn(RuntimeError(f"the trace exporter exited with {code}; {len(lost)} trace(s) lost"))
        for ref in lost:
            self._done(ref, None)


# -- the child's side --


def main() -> None:
    try:
        os.nice(NICE)
    except (AttributeError, OSError):  # no os.nice on Windows; a sandbox may refuse it
        pass
    logging.basicConfig(level=logging.WARNING, format="mlflow-lite trace exporter: %(levelname)s %(message)s")
    out = sys.stdout
    sys.stdout = sys.stderr  # our stdout is the acknowledgement channel: nothing else may print there
    _Exporter(out).run(_Reader(sys.stdin.buffer))


class _Reader:
    """Batches of trace records from the pipe: up to ``MAX_BATCH``, waiting ``LINGER_S`` to fill."""

    def __init__(self, stream: Any) -> None:
        # Bounded: if writing falls behind, the pipe fills and the parent's bounded queue drops traces.
        self._lines: queue.Queue[bytes | None] = queue.Queue(maxsize=4 * MAX_BATCH)
        self.ended = False  # the parent closed the pipe, and all it sent was taken
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def batch(self, timeout: float | None) -> list[dict[str, Any]]:
        """The next batch; empty when none began within ``timeout`` seconds (None: no limit)."""
        if self.ended:
            time.sleep(timeout or 0.0)
            return []
        try:
            first = self._lines.get(timeout=timeout)
        except queue.Empty:
            return []
        lines: list[bytes] = []
        deadline = time.monotonic() + LINGER_S
        line: bytes | None = first
        while line is not None:
            lines.append(line)
            if len(lines) == MAX_BATCH:
                break
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
        self.ended = line is None
        records = []
        for raw in lines:
            try:
                records.append(json.loads(raw))
            except ValueError:
                _logger.warning("Dropped a malformed trace record")
        return records


class _Exporter:
    """The child's loop: writes each batch, tries failed ones again later, acknowledges every trace
    (with its id, or null once it is given up)."""

    def __init__(self, out: Any) -> None:
        self._out: Any = out
        self._retries = Retries()
        self._waiting: list[tuple[float, int, list[dict[str, Any]]]] = []  # (when, attempts made, records)

    def run(self, reader: _Reader) -> None:
        while not (reader.ended and not self._waiting):
            wait = None if not self._waiting else max(0.0, min(when for when, _, _ in self._waiting) - time.monotonic())
            batch = reader.batch(wait)
            if batch:
                self._attempt(batch, 1)
            now = time.monotonic()
            due = [item for item in self._waiting if item[0] <= now]
            self._waiting = [item for item in self._waiting if item[0] > now]
            for _, attempts, records in due:
                self._attempt(records, attempts + 1)

    def _attempt(self, records: list[dict[str, Any]], attempt: int) -> None:
        acks, failures = write_batch(records)
        for failure in failures:
            delay = self._retries.failed(failure, attempt)
            if delay is None:
                acks += [(record["key"], None) for record in failure.records]
            else:
                self._waiting.append((time.monotonic() + delay, attempt, failure.records))
        acks += self._bound()
        self._ack(acks)

    def _bound(self) -> list[tuple[str, None]]:
        """Drop the oldest waiting traces beyond MLFLOW_LITE_MAX_PENDING_TRACES."""
        dropped: list[tuple[str, None]] = []
        while sum(len(records) for _, _, records in self._waiting) > MAX_PENDING_TRACES:
            _, _, records = self._waiting.pop(0)
            self._retries.dropped += len(records)
            _logger.warning("Dropped %d trace(s): more than %d waiting to be tried again "
                            "(MLFLOW_LITE_MAX_PENDING_TRACES; %d dropped in all)",
                            len(records), MAX_PENDING_TRACES, self._retries.dropped)
            dropped += [(record["key"], None) for record in records]
        return dropped

    def _ack(self, acks: list[tuple[str, str | None]]) -> None:
        if self._out is None or not acks:
            return
        try:
            self._out.write("".join(json.dumps({"key": key, "trace_id": trace_id}) + "\n" for key, trace_id in acks))
            self._out.flush()
        except (BrokenPipeError, ValueError):  # the parent is gone: keep writing what it gave us
            self._out = None


class Failure(NamedTuple):
    """Records of one store that were not written, and why."""

    uri: str
    records: list[dict[str, Any]]
    error: Exception


class PermanentError(RuntimeError):
    """A write that trying again cannot fix."""


# MLflow error codes of requests that are wrong, not unlucky (a 4xx other than 429).
_PERMANENT_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED",
                              "UNAUTHENTICATED", "BAD_REQUEST", "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED"})


class Retries:
    """Decides, for each failed write, whether to try again, and counts what is given up."""

    def __init__(self) -> None:
        self.dropped = 0

    def failed(self, failure: Failure, attempt: int, deadline: float = float("inf")) -> float | None:
        """After the ``attempt``-th failure of ``failure.records``: seconds to wait before the next
        try, or None if they are given up (a permanent error, or attempts or ``deadline`` used up),
        which is logged and counted."""
        n, error = len(failure.records), failure.error
        permanent = isinstance(error, PermanentError) or getattr(error, "error_code", None) in _PERMANENT_CODES
        delay = retry_delay(attempt)
        if permanent or attempt >= RETRY_ATTEMPTS or time.monotonic() + delay > deadline:
            self.dropped += n
            _logger.warning("Could not write %d trace(s) to %s, dropped after %d attempt(s) (%d dropped in all): %s",
                            n, failure.uri, attempt, self.dropped, error)
            return None
        _logger.warning("Could not write %d trace(s) to %s (attempt %d of %d), trying again in %.1f s: %s",
                        n, failure.uri, attempt, RETRY_ATTEMPTS, delay, error)
        return delay


def write_batch(records: list[dict[str, Any]]) -> tuple[list[tuple[str, str | None]], list[Failure]]:
    """Write the records (one ``log_spans`` per store and experiment): (key, trace id) of each
    trace written, and the groups that failed."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["tracking_uri"], record["experiment_id"]), []).append(record)
    acks: list[tuple[str, str | None]] = []
    failures: list[Failure] = []
    for (uri, experiment_id), group in groups.items():
        try:
            acks += _write_group(uri, experiment_id, group)
        except Exception as exc:
            failures.append(Failure(uri, group, exc))
    return acks, failures


def _write_group(uri: str, experiment_id: str, records: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    from mlflow.entities import Span
    from mlflow.tracing.client import TracingClient

    open_store(uri)
    client = TracingClient(uri)
    spans = [Span.from_dict(d) for record in records for d in mlflow_span_dicts(record)]
    try:
        client.log_spans(experiment_id, spans)
    except NotImplementedError:
        raise PermanentError(
            f"the tracking store of {uri} does not take span batches (log_spans); "
            "use MLFLOW_LITE_TRACE_EXPORT=thread"
        ) from None
    _link_runs(uri, records)
    acks = []
    for record in records:
        trace_id = mlflow_trace_id(record["key"])
        if record["feedback"]:
            try:
                _log_feedback(client, trace_id, record["feedback"])
            except Exception as exc:
                _logger.warning("Could not log feedback of trace %s: %s", trace_id, exc)
        acks.append((record["key"], trace_id))
    return acks


def _link_runs(uri: str, records: list[dict[str, Any]]) -> None:
    """Link each trace to the run active when its call was made (the thread writer records it as
    the trace's ``mlflow.sourceRun``): one call per run and ``LINKS_PER_CALL`` traces."""
    by_run: dict[str, list[str]] = {}
    for record in records:
        if record.get("run_id"):
            by_run.setdefault(record["run_id"], []).append(mlflow_trace_id(record["key"]))
    if not by_run:
        return
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for run_id, trace_ids in by_run.items():
        for start in range(0, len(trace_ids), LINKS_PER_CALL):
            chunk = trace_ids[start:start + LINKS_PER_CALL]
            try:
                client.link_traces_to_run(chunk, run_id)
            except Exception as exc:  # the traces are written; only the link is missing
                _logger.warning("Could not link %d trace(s) to run %s: %s", len(chunk), run_id, exc)


def mlflow_span_dicts(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's spans in MLflow's ``Span.to_dict`` format (OTel ids, JSON attribute values)."""
    from mlflow.tracing.constant import SpanAttributeKey, TraceTagKey
    from mlflow.tracing.utils import dump_span_attribute_value as dump

    trace_id = mlflow_trace_id(record["key"])
    otel_trace_id = _b64(record["key"])
    dicts = []
    for span in record["spans"]:
        attributes = {key: dump(value) for key, value in span["attributes"].items()}
        attributes[SpanAttributeKey.REQUEST_ID] = dump(trace_id)
        attributes[SpanAttributeKey.SPAN_TYPE] = dump(span["type"])
        if span["inputs"] is not None:
            attributes[SpanAttributeKey.INPUTS] = dump(span["inputs"])
        if span["outputs"] is not None:
            attributes[SpanAttributeKey.OUTPUTS] = dump(span["outputs"])
        events = [{"name": name, "time_unix_nano": ts, "attributes": attrs} for name, ts, attrs in span["events"]]
        status = {"code": "STATUS_CODE_OK", "message": ""}
        if span["error"] is not None:
            error = span["error"]
            events.append({"name": "exception", "time_unix_nano": span["end_ns"], "attributes": {
                "exception.message": error["message"], "exception.type": error["type"],
                "exception.stacktrace": error["stacktrace"]}})
            status = {"code": "STATUS_CODE_ERROR", "message": f"{error['type']}: {error['message']}"}
        if span["parent_id"] is None:  # trace tags travel as root attributes, as over OTLP
            tags = {TraceTagKey.TRACE_NAME: span["name"], **record["tags"]}
            attributes.update({SpanAttributeKey.TRACE_TAG_PREFIX + k: str(v) for k, v in tags.items()})
        dicts.append({
            "trace_id": otel_trace_id, "span_id": _b64(span["span_id"]),
            "parent_span_id": _b64(span["parent_id"]) if span["parent_id"] else None,
            "name": span["name"], "start_time_unix_nano": span["start_ns"], "end_time_unix_nano": span["end_ns"],
            "events": events, "status": status, "attributes": attributes,
        })
    return dicts


def mlflow_trace_id(key: str) -> str:
    """MLflow's id of the trace whose OTel trace id is ``key`` (32 hex digits)."""
    return "tr-" + key


def _b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def _log_feedback(client: Any, trace_id: str, feedback: list[dict[str, Any]]) -> None:
    from mlflow.entities import AssessmentError, AssessmentSource, Feedback

    for item in feedback:
        error = item["error"]
        client.log_assessment(trace_id, Feedback(
            name=item["name"], value=item["value"], rationale=item["rationale"],
            error=AssessmentError(error_code="METRIC_ERROR", error_message=error) if error else None,
            source=AssessmentSource(source_type=item["source_type"], source_id=item["source_id"]),
        ))


if __name__ == "__main__":
    main()
