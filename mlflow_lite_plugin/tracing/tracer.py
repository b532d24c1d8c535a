"""One MLflow trace per call, written off the caller's critical path.

Spans are recorded in memory while the call runs and replayed into MLflow (with their real start
and end times) by a background writer thread, so neither ``import mlflow`` (~1 s) nor span export
sits between the caller and its answer. ``Response.trace_id`` waits for that writer.

Two cases write spans live instead, as the call runs:
- the caller is inside an active MLflow span: our trace nests under it, like any autologged call;
- ``mlflow.litellm.autolog()`` is on: LiteLLM's own MLflow span then nests under our attempt span,
  so the call is one trace, not two.
Tracing never fails a call: a store that cannot be reached logs a warning and trace_id is None.
Credentials stay out of traces: span errors (message, stack trace with its source lines, the
``mlflow_lite.error`` attribute) and events go through the package's scrubber
(:mod:`.credentials`), which also masks the call's own key (:meth:`Span.hide`) exactly.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from mlflow_lite_plugin.security import credentials
from mlflow_lite_plugin.tracing import schema
from mlflow_lite_plugin.tracing.store import FLUSH_TIMEOUT, experiment_named, open_store, safely
from mlflow_lite_plugin.tracing.writers import CallerLinks, QueueWriter, ThreadWriter

_logger = logging.getLogger(__name__)

_NO_OP_TRACE_ID = "MLFLOW_NO_OP_SPAN_TRACE_ID"


class TraceRef:
    """The trace id of one call, filled in when the trace is written."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._trace_id: str | None = None
        self.planned_id: str | None = None  # the id it will be written under, when known in advance

    def set(self, trace_id: str | None) -> None:
        self._trace_id = None if trace_id == _NO_OP_TRACE_ID else trace_id
        self._done.set()

    def known_id(self) -> str | None:
        """The id without waiting for the write, when it is known in advance (process export):
        for answers that must not wait, like a served model's rows."""
        return self.planned_id if self.planned_id and not self._done.is_set() else self.trace_id

    @property
    def trace_id(self) -> str | None:
        if not self._done.wait(FLUSH_TIMEOUT):
            _logger.warning("The MLflow trace of this call was not written within %.0f s", FLUSH_TIMEOUT)
        return self._trace_id


class Span:
    """A span of one call. Records everything; forwards to a live MLflow span when there is one."""

    def __init__(
        self,
        trace: RecordedTrace,
        name: str,
        span_type: str,
        inputs: Any = None,
        attributes: dict[str, Any] | None = None,
        parent: Span | None = None,
    ):
        self._trace = trace
        self.name = name
        self.span_type = span_type
        self.inputs = inputs
        self.attributes: dict[str, Any] = dict(attributes or {})
        self.parent = parent
        self.children: list[Span] = []
        self.events: list[tuple[str, int, dict[str, Any]]] = []
        self.start_ns = time.time_ns()
        self.end_ns: int | None = None
        self.outputs: Any = None
        self.error: BaseException | None = None
        # The error's traceback as it was when the span ended: the exception object's own grows
        # with the caller's frames (and their source lines) as it propagates.
        self._error_summary: traceback.TracebackException | None = None
        self._live: Any = None
        if trace.live:
            self._open_live()

    @property
    def trace_ref(self) -> TraceRef:
        return self._trace.ref

    def child(
        self, name: str, span_type: str, inputs: Any = None, attributes: dict[str, Any] | None = None
    ) -> Span:
        span = Span(self._trace, name, span_type, inputs, attributes, parent=self)
        self.children.append(span)
        return span

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.attributes.update(attributes)
        if self._live is not None:
            safely(self._live.set_attributes, attributes)

    def hide(self, values: Iterable[str]) -> None:
        """Mask these values (the call's own API key) wherever they would appear in this trace's
        errors, whatever they look like."""
        self._trace.secrets.update(v for v in values if isinstance(v, str))

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        # Events are few (first token, stage errors) and may quote an error: scrubbed.
        event = (name, time.time_ns(), credentials.scrub_data(dict(attributes or {}), self._trace.secrets))
        self.events.append(event)
        if self._live is not None:
            safely(self._live_event, event)

    def log_feedback(
        self,
        name: str,
        value: Any,
        *,
        rationale: str | None = None,
        error: str | None = None,
        source_type: str = "CODE",
        source_id: str = schema.CODE_SOURCE,
    ) -> None:
        """Attach an MLflow feedback assessment to this call's trace (written with the trace)."""
        self._trace.feedback.append(
            {"name": name, "value": value, "rationale": rationale, "error": error,
             "source_type": source_type, "source_id": source_id}
        )

    def end(self, outputs: Any = None, error: BaseException | None = None) -> None:
        if self.end_ns is not None:
            return
        self.end_ns = time.time_ns()
        self.outputs = outputs
        self.error = error
        if error is not None:
            # Lines are read when written, off the caller's path; the frames are fixed now.
            self._error_summary = traceback.TracebackException.from_exception(error, lookup_lines=False)
            # An errored span's attributes quote the error (``mlflow_lite.error``).
            self.attributes = credentials.scrub_data(self.attributes, self._trace.known_secrets())
        if self._live is not None:
            safely(self._close_live)
        if self.parent is None:
            self._trace.finish()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make this span MLflow's current span (live mode only), so autologged spans nest in it."""
        if self._live is None:
            yield
            return
        from mlflow.tracing.provider import detach_span_from_context, set_span_in_context

        token = set_span_in_context(self._live)
        try:
            yield
        finally:
            detach_span_from_context(token)

    # -- writing to MLflow (live as it happens, or replayed by the writer thread) --

    def _open_live(self) -> None:
        import mlflow

        parent_live = self.parent._live if self.parent is not None else self._trace.parent_live
        is_root = self.parent is None
        attributes = self.attributes
        if is_root and parent_live is not None and self._trace.tags:
            # Trace tags belong to the caller's trace; keep ours (routing, A/B, template) on our span.
            attributes = {**attributes, schema.NESTED_TAGS: dict(self._trace.tags)}
        try:
            self._live = mlflow.start_span_no_context(
                name=self.name,
                span_type=self.span_type,
                parent_span=parent_live,
                inputs=self.inputs,
                attributes=attributes,
                tags=self._trace.tags if is_root and parent_live is None else None,
                experiment_id=self._trace.experiment_id if is_root and parent_live is None else None,
                start_time_ns=self.start_ns,
            )
        except Exception as exc:  # tracing must never fail the call
            _logger.warning("Could not start MLflow span %r: %s", self.name, exc)
            self._live = None
        if is_root and not self._trace.live and self._live is not None:
            safely(self._trace.links.apply, self._live.trace_id)
        if is_root and self._trace.live:  # replayed traces get their id once fully written
            self._trace.ref.set(getattr(self._live, "trace_id", None))

    def _live_event(self, event: tuple[str, int, dict[str, Any]]) -> None:
        from mlflow.entities import SpanEvent

        name, timestamp, attributes = event
        # MLflow's SpanEvent leaves its base's from_proto abstract to mypy; it is a plain dataclass
        self._live.add_event(SpanEvent(name=name, timestamp=timestamp, attributes=attributes))  # type: ignore[abstract]

    def error_record(self) -> dict[str, str] | None:
        """The span's error as MLflow's exception event holds it, scrubbed (:func:`exception_record`)."""
        if self.error is None:
            return None
        return exception_record(self.error, self._trace.secrets, self._error_summary)

    def _close_live(self) -> None:
        record = self.error_record()
        if record is not None:
            self._live.set_attributes(self.attributes)  # live spans got them unscrubbed
            record_exception(self._live, record)
        if self.parent is None and self._trace.feedback:
            safely(self._log_feedback)
        self._live.end(outputs=self.outputs, end_time_ns=self.end_ns)

    def _log_feedback(self) -> None:
        """Log feedback while the trace is still open: MLflow then keeps it in the in-memory trace
        and writes it with the trace, instead of racing the trace export."""
        import mlflow
        from mlflow.entities import AssessmentError, AssessmentSource
        from mlflow.tracing.provider import detach_span_from_context, set_span_in_context

        token = set_span_in_context(self._live)
        try:
            for item in self._trace.feedback:
                error = item["error"]
                mlflow.log_feedback(
                    trace_id=self._live.trace_id,
                    name=item["name"],
                    value=item["value"],
                    rationale=item["rationale"],
                    error=AssessmentError(error_code="METRIC_ERROR", error_message=error) if error else None,
                    source=AssessmentSource(source_type=item["source_type"], source_id=item["source_id"]),
                )
        finally:
            detach_span_from_context(token)

    def _replay(self) -> None:
        self._open_live()
        if self._live is None:
            return
        for event in self.events:
            self._live_event(event)
        for child in self.children:
            child._replay()
        self._close_live()


def exception_record(
    error: BaseException, known: Iterable[str] = (), summary: traceback.TracebackException | None = None
) -> dict[str, str]:
    """``error`` as MLflow's exception event holds it (type, message, stack trace with its source
    lines), every secret scrubbed; ``summary``: its traceback as captured earlier."""
    known = [*known, *credentials.secret_env_values()]
    summary = summary or traceback.TracebackException.from_exception(error)
    return {
        "type": type(error).__name__,
        "message": credentials.scrub(str(error), known),
        "stacktrace": credentials.scrub("".join(summary.format()).strip(), known),
    }


def record_exception(live: Any, record: dict[str, str]) -> None:
    """MLflow's ``span.record_exception`` for a scrubbed :func:`exception_record` (MLflow's own
    formats the exception's unscrubbed traceback)."""
    from mlflow.entities import SpanEvent, SpanStatus, SpanStatusCode

    live.add_event(SpanEvent(name="exception", attributes={  # type: ignore[abstract]  # as in _live_event
        "exception.message": record["message"], "exception.type": record["type"],
        "exception.stacktrace": record["stacktrace"]}))
    live.set_status(SpanStatus(SpanStatusCode.ERROR, f"{record['type']}: {record['message']}"))


class RecordedTrace:
    """One call's trace as recorded in memory: its spans, tags, feedback and where it goes."""

    def __init__(self, tracer: Tracer, live: bool, parent_live: Any, tags: dict[str, str]):
        self.tracer = tracer
        self.live = live
        self.parent_live = parent_live
        self.tags = tags
        self.ref = TraceRef()
        self.experiment_id: str | None = tracer.experiment_id() if live else None
        # A live trace is MLflow's own; a replayed one is written from another thread or process,
        # where the caller's active run and prediction context are not visible: read them now.
        self.links = CallerLinks() if live else CallerLinks.here()
        self.root: Span | None = None
        self.feedback: list[dict[str, Any]] = []
        self.secrets: set[str] = set()  # values to mask exactly (Span.hide)
        self.key: str | None = None  # chosen by a writer that picks the trace id itself

    def known_secrets(self) -> list[str]:
        """What the trace must never show whatever it looks like: the call's own secrets, and the
        process's credential environment variables."""
        return [*self.secrets, *credentials.secret_env_values()]

    def chosen_experiment_id(self) -> str | None:
        """The client's own experiment, else the experiment of the caller's run, else None."""
        return self.tracer.experiment_id() or self.links.run_experiment_id

    def finish(self) -> None:
        if not self.live:
            self.tracer._writer.submit(self)

    def replay(self) -> str | None:
        """Write the recorded spans through MLflow's span API, with their real times (the thread
        writer); the id MLflow gave the trace."""
        assert self.root is not None
        self.root._replay()
        return getattr(self.root._live, "trace_id", None)


class NullSpan:
    """Stands in for a span when tracing is off."""

    trace_ref = None

    def child(self, *args: Any, **kwargs: Any) -> NullSpan:
        return self

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        pass

    def hide(self, values: Iterable[str]) -> None:
        pass

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        pass

    def log_feedback(self, name: str, value: Any, **details: Any) -> None:
        pass

    def end(self, outputs: Any = None, error: BaseException | None = None) -> None:
        pass

    @contextmanager
    def active(self) -> Iterator[None]:
        yield


def _live_context() -> tuple[bool, Any]:
    """(write live?, parent span): live when the caller has an active span or LiteLLM autolog is on."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not hasattr(mlflow, "get_current_active_span"):
        return False, None  # mlflow not imported yet: nobody can have opened a span
    parent = mlflow.get_current_active_span()
    if parent is not None:
        return True, parent
    return any(map(_is_mlflow_callback, _litellm_callbacks())), None


def _disabled_in_mlflow() -> bool:
    """``mlflow.tracing.disable()`` is in effect. Checked at the call: a trace written later would
    escape it (``mlflow.genai.evaluate`` disables tracing to probe whether a function traces)."""
    provider = sys.modules.get("mlflow.tracing.provider")
    if provider is None:
        return False  # nobody has disabled it
    try:
        return not provider.is_tracing_enabled()
    except Exception:
        return False


def _is_mlflow_callback(callback: Any) -> bool:
    return callback == "mlflow" or type(callback).__name__ == "MlflowLogger"


def _litellm_callbacks() -> list[Any]:
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return []
    # LiteLLM's async lists too: mlflow.litellm.autolog(disable=True) leaves its logger there, and
    # LiteLLM still calls it for async calls (ml.batch), which then log a second, separate trace.
    names = ("success_callback", "failure_callback", "callbacks", "_async_success_callback", "_async_failure_callback")
    return [cb for name in names for cb in getattr(litellm, name, None) or []]


def autolog_logs_streams_separately() -> bool:
    """True when ``mlflow.litellm.autolog()`` is LiteLLM's only logger.

    LiteLLM logs a finished stream from a worker thread that does not see the active span, so
    autolog would write a second trace for every stream; then our stream calls pass LiteLLM's
    ``no-log`` flag, which is safe because no other callback would miss the call.
    """
    callbacks = _litellm_callbacks()
    return bool(callbacks) and all(map(_is_mlflow_callback, callbacks))


EXPORT_MODES = ("thread", "process")


def export_mode(value: str | None) -> str:
    """``thread`` (the default) or ``process``, from the argument or MLFLOW_LITE_TRACE_EXPORT."""
    mode = value if value is not None else os.environ.get("MLFLOW_LITE_TRACE_EXPORT", "thread")
    if mode not in EXPORT_MODES:
        source = "export" if value is not None else "MLFLOW_LITE_TRACE_EXPORT"
        raise ValueError(f"{source} must be one of {', '.join(EXPORT_MODES)}, got {mode!r}")
    return mode


class Tracer:
    """Owns tracing settings of a client: on/off, the experiment traces go to, how they are written.

    ``export="thread"`` replays each trace into MLflow from a background thread of this process,
    with MLflow's full trace metadata. ``export="process"`` hands traces to a child process that
    writes them in batches (:mod:`.export`): for servers, where the thread's CPU would be
    taken from the requests.
    """

    def __init__(self, enabled: bool = True, experiment: str | None = None, export: str | None = None):
        self.enabled = enabled
        self.experiment = experiment
        self._experiment_ids: dict[tuple[str, str], str] = {}
        self._naming = threading.Lock()
        self._writer: QueueWriter = _writer(export_mode(export))

    @property
    def export(self) -> str:
        return self._writer.mode

    @export.setter
    def export(self, value: str) -> None:
        mode = export_mode(value)
        if mode != self._writer.mode:
            self._writer.flush()
            self._writer = _writer(mode)

    def start(
        self, name: str, span_type: str, inputs: Any, attributes: dict[str, Any], tags: dict[str, str]
    ) -> Span | NullSpan:
        if not self.enabled:
            return NullSpan()
        try:
            live, parent = _live_context()
        except Exception:
            live, parent = False, None
        if not live and _disabled_in_mlflow():
            return NullSpan()
        trace = RecordedTrace(self, live, parent, tags)
        trace.root = Span(trace, name, span_type, inputs, attributes)
        return trace.root

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Write every pending trace (also run at interpreter exit)."""
        self._writer.flush(timeout)

    def experiment_id(self) -> str | None:
        """The id of ``experiment`` (created if missing), or None for MLflow's active experiment."""
        if not self.experiment:
            return None
        import mlflow

        key = (mlflow.get_tracking_uri(), self.experiment)
        found = self._experiment_ids.get(key)
        if found is None:
            with self._naming:  # the calls' threads and the writer's ask at once on a fresh store
                found = self._experiment_ids.get(key)
                if found is None:
                    open_store(key[0])  # not first on a fresh store next to an exporter creating its schema
                    found = self._experiment_ids[key] = experiment_named(self.experiment)
        return found


def _writer(mode: str) -> QueueWriter:
    if mode == "process":
        # Loaded when asked for, not with the package: the exporter's pipe and child-process code
        # would add to every import's cold start (export imports nothing of this module).
        from mlflow_lite_plugin.tracing.export import ProcessWriter

        return ProcessWriter()
    return ThreadWriter()
