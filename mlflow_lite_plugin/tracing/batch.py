"""Writing finished traces with MLflow's multi-trace ``log_spans``, in batches.

Writing one trace with MLflow's per-trace export costs 20-30 ms of CPU against a sqlite store
(``start_trace`` and ``log_spans`` each open an ORM session); one ``log_spans`` call for up to
``MAX_BATCH`` traces, MLflow's multi-trace ingestion path (the one its OTLP endpoint
``/v1/traces`` uses), costs about 10x less per trace. Two writers use it: the exporter child
(:mod:`.export`), and the in-process thread writer (:mod:`.writers`) when a flush finds a
backlog (:func:`write_now`). A trace becomes a plain record (:func:`trace_record`, JSON-ready for
the pipe to the child), records are grouped per store and experiment, and a group that fails is
tried again with backoff (:class:`Retries`) or given up with a warning that counts it.

Traces written this way carry the same spans, attributes, events, tags, request/response previews,
token usage, cost and feedback, and are linked to the caller's run. Trace metadata is not set
(MLflow has no batch call for it): MLflow's client metadata (``mlflow.user``, ``mlflow.source.*``)
and the LoggedModel link (``mlflow.modelId``).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from mlflow_lite_plugin.tracing.store import FLUSH_TIMEOUT, RETRY_ATTEMPTS, open_store, retry_delay

if TYPE_CHECKING:
    from mlflow_lite_plugin.tracing.tracer import RecordedTrace, Span

_logger = logging.getLogger(__name__)

MAX_BATCH = 200
LINKS_PER_CALL = 100  # MLflow's limit for link_traces_to_run


def trace_record(trace: RecordedTrace, tracking_uri: str, experiment_id: str) -> dict[str, Any]:
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


class Destinations:
    """(tracking URI, experiment id) of a trace, as MLflow would pick them in this process now."""

    def __init__(self) -> None:
        self._experiments: dict[tuple[Any, ...], str] = {}

    def __call__(self, trace: RecordedTrace) -> tuple[str, str]:
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


def write_now(traces: list[RecordedTrace], warn: Callable[[Exception], None]) -> list[tuple[RecordedTrace, str | None]]:
    """Write ``traces`` in this process, in batches (the thread writer's fast path for a backlog);
    (trace, its id or None) each."""
    destination = Destinations()
    records: dict[str, tuple[dict[str, Any], RecordedTrace]] = {}
    written: list[tuple[RecordedTrace, str | None]] = []
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
    acks: list[tuple[str, str | None]] = []
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


