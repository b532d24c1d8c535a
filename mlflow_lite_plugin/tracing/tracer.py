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

import atexit
import functools
import logging
import os
import random
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, NamedTuple

from mlflow_lite_plugin.security import credentials

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; stores are opened unserialised there
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

# MLflow span types, as strings so this module does not import mlflow.
CHAT_MODEL = "CHAT_MODEL"
LLM = "LLM"
CHAIN = "CHAIN"

# MLflow's span attribute keys (mlflow.tracing.constant.SpanAttributeKey): the UI aggregates
# token usage and cost per trace from these.
CHAT_USAGE = "mlflow.chat.tokenUsage"
LLM_COST = "mlflow.llm.cost"
LLM_MODEL = "mlflow.llm.model"
LLM_PROVIDER = "mlflow.llm.provider"

# A call nested under the caller's span keeps its trace tags here, as a root span attribute.
NESTED_TAGS = "mlflow_lite.trace_tags"
_NO_OP_TRACE_ID = "MLFLOW_NO_OP_SPAN_TRACE_ID"
FLUSH_TIMEOUT = float(os.environ.get("MLFLOW_LITE_TRACE_FLUSH_TIMEOUT", "30"))
# Traces waiting for the writer beyond this are dropped (and counted): under a load the tracking
# store cannot absorb, tracing must not grow memory without bound or slow the calls down.
MAX_PENDING_TRACES = int(os.environ.get("MLFLOW_LITE_MAX_PENDING_TRACES", "10000"))
DRAIN_MIN = 20  # a flush finding more traces than this waiting writes them in batches
# A failed trace write (or store open) is tried this many times, RETRY_FIRST_S apart and doubling
# up to RETRY_MAX_S (~25 s in all): long enough for a store being created or a server restarting.
RETRY_ATTEMPTS = 8
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 10.0


def retry_delay(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th failed try (from 1), jittered so that several
    writers that failed together do not retry together."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


# -- the tracking store, opened once per process --

_opened_stores: set[str] = set()
_opening = threading.Lock()


def open_store(uri: str) -> None:
    """Open the tracking store of ``uri`` once in this process, before any trace is written to it.

    MLflow creates a fresh sqlite store's schema when a process first opens it; two processes doing
    it at once fail, and can leave it half-migrated for good ("table _alembic_tmp_experiments
    already exists"). A served model's exporter children, its trace writer and its experiment
    lookups open a sqlite store here, under a file lock next to the database, so one of them creates
    the schema and the others wait and find it. Raises what MLflow raises (the callers retry).
    """
    if uri in _opened_stores:
        return
    with _opening:
        if uri in _opened_stores:
            return
        import mlflow

        with _store_lock(uri):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)  # creates the schema if missing
        _opened_stores.add(uri)


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on ``<database>.lock`` for a sqlite file store; nothing for other stores
    (a tracking server or a database server creates its schema on its own)."""
    path = _sqlite_file(uri)
    fd = None
    if path is not None and fcntl is not None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)  # as MLflow does before it opens the store
            fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only directory: opening the store will say what is wrong
            fd = None
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sqlite_file(uri: str) -> str | None:
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url  # an MLflow dependency

    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def open_store_with_retries(uri: str, warn: Any) -> None:
    """:func:`open_store`, tried again with backoff while it fails (another process, not ours,
    may be creating the schema); the last error goes to ``warn``."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            open_store(uri)
            return
        except Exception as exc:
            if attempt == RETRY_ATTEMPTS:
                warn(exc)
                return
            _logger.info("Could not open the tracking store %s (attempt %d of %d): %s", uri, attempt,
                         RETRY_ATTEMPTS, exc)
            time.sleep(retry_delay(attempt))


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
        trace: _Trace,
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
            _safely(self._live.set_attributes, attributes)

    def hide(self, values: Iterable[str]) -> None:
        """Mask these values (the call's own API key) wherever they would appear in this trace's
        errors, whatever they look like."""
        self._trace.secrets.update(v for v in values if isinstance(v, str))

    def add_event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        # Events are few (first token, stage errors) and may quote an error: scrubbed.
        event = (name, time.time_ns(), credentials.scrub_data(dict(attributes or {}), self._trace.secrets))
        self.events.append(event)
        if self._live is not None:
            _safely(self._live_event, event)

    def log_feedback(
        self,
        name: str,
        value: Any,
        *,
        rationale: str | None = None,
        error: str | None = None,
        source_type: str = "CODE",
        source_id: str = "mlflow_lite",
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
            _safely(self._close_live)
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
            attributes = {**attributes, NESTED_TAGS: dict(self._trace.tags)}
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
            _safely(self._trace.links.apply, self._live.trace_id)
        if is_root and self._trace.live:  # replayed traces get their id once fully written
            self._trace.ref.set(getattr(self._live, "trace_id", None))

    def _live_event(self, event: tuple[str, int, dict[str, Any]]) -> None:
        from mlflow.entities import SpanEvent

        name, timestamp, attributes = event
        self._live.add_event(SpanEvent(name=name, timestamp=timestamp, attributes=attributes))

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
            _safely(self._log_feedback)
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

    live.add_event(SpanEvent(name="exception", attributes={
        "exception.message": record["message"], "exception.type": record["type"],
        "exception.stacktrace": record["stacktrace"]}))
    live.set_status(SpanStatus(SpanStatusCode.ERROR, f"{record['type']}: {record['message']}"))


class CallerLinks(NamedTuple):
    """What MLflow links a trace to, as seen from the thread that made the call."""

    run_id: str | None = None
    run_experiment_id: str | None = None
    model_id: str | None = None  # mlflow.set_active_model, or the pyfunc model being predicted

    @classmethod
    def here(cls) -> CallerLinks:
        fluent = sys.modules.get("mlflow.tracking.fluent")
        if fluent is None:
            return cls()  # mlflow not imported yet: no run, no active model, no pyfunc predict
        try:  # MLflow's own rules (tracing/processor/base_mlflow.py): latest run of any thread
            from mlflow.tracing.utils import maybe_get_logged_model_id

            run = fluent._get_latest_active_run()
            model_id = fluent._get_active_model_id_global() or maybe_get_logged_model_id()
        except Exception as exc:  # private helpers: a future MLflow may move them
            _logger.debug("Could not read the active run and model: %s", exc)
            return cls()
        if run is None:
            return cls(model_id=model_id)
        return cls(run.info.run_id, run.info.experiment_id, model_id)

    def apply(self, trace_id: str) -> None:
        """Set the run and model of MLflow's in-memory trace ``trace_id`` (before it is exported)
        to the caller's, replacing what MLflow saw from the writer thread."""
        from mlflow.tracing.constant import TraceMetadataKey
        from mlflow.tracing.trace_manager import InMemoryTraceManager

        with InMemoryTraceManager.get_instance().get_trace(trace_id) as trace:
            if trace is None:
                return
            metadata = trace.info.trace_metadata
            for key, value in ((TraceMetadataKey.SOURCE_RUN, self.run_id), (TraceMetadataKey.MODEL_ID, self.model_id)):
                if value:
                    metadata[key] = value
                else:
                    metadata.pop(key, None)


class _Trace:
    def __init__(self, tracer: Tracer, live: bool, parent_live: Any, tags: dict[str, str]):
        self.tracer = tracer
        self.live = live
        self.parent_live = parent_live
        self.tags = tags
        self.ref = TraceRef()
        self.experiment_id: str | None = tracer._experiment_id() if live else None
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
        return self.tracer._experiment_id() or self.links.run_experiment_id

    def finish(self) -> None:
        if not self.live:
            self.tracer._writer.submit(self)


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
    writes them in batches (``trace_export.py``): for servers, where the thread's CPU would be
    taken from the requests.
    """

    def __init__(self, enabled: bool = True, experiment: str | None = None, export: str | None = None):
        self.enabled = enabled
        self.experiment = experiment
        self._experiment_ids: dict[tuple[str, str], str] = {}
        self._writer: _QueueWriter = _writer(export_mode(export))

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
        trace = _Trace(self, live, parent, tags)
        trace.root = Span(trace, name, span_type, inputs, attributes)
        return trace.root

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Write every pending trace (also run at interpreter exit)."""
        self._writer.flush(timeout)

    def _experiment_id(self) -> str | None:
        """The id of ``experiment`` (created if missing), or None for MLflow's active experiment."""
        if not self.experiment:
            return None
        import mlflow

        key = (mlflow.get_tracking_uri(), self.experiment)
        if key not in self._experiment_ids:
            open_store(key[0])  # not first on a fresh store next to an exporter creating its schema
            client = mlflow.MlflowClient()
            found = client.get_experiment_by_name(self.experiment)
            self._experiment_ids[key] = found.experiment_id if found else client.create_experiment(self.experiment)
        return self._experiment_ids[key]


def _writer(mode: str) -> _QueueWriter:
    if mode == "process":
        from mlflow_lite_plugin.tracing.export import ProcessWriter

        return ProcessWriter()
    return _ThreadWriter()


class _QueueWriter:
    """Finished traces wait here, bounded, for a daemon thread that writes them in order."""

    mode = ""
    # Seconds a trace may wait for others to join its batch; 0 writes each at once. Waking the
    # writer for every trace costs the serving threads GIL hand-offs.
    linger = 0.0
    max_batch = 200

    def __init__(self) -> None:
        self._start()
        self._warned_at = 0.0
        self.dropped = 0
        # A forked child (multiprocessing's default on Linux) inherits this writer but not its
        # thread: it starts afresh, or its traces would wait forever for a thread that is not there.
        self._exit_hooked = False
        if hasattr(os, "register_at_fork"):  # POSIX only: Windows has no fork
            me = weakref.ref(self)
            os.register_at_fork(before=functools.partial(_before_fork, me),
                                after_in_child=functools.partial(_restart_after_fork, me))

    def _start(self) -> None:
        self._pending: deque[_Trace] = deque()  # after a fork, those waiting are the parent's to write
        self._cond = threading.Condition()
        self._busy = 0  # submitted, not yet written (or given up)
        self._thread: threading.Thread | None = None
        self._flushing = 0

    def submit(self, trace: _Trace) -> None:
        with self._cond:
            if len(self._pending) >= MAX_PENDING_TRACES:
                self.dropped += 1
                trace.ref.set(None)
                self._warn(RuntimeError(f"{self.dropped} trace(s) dropped: more than {MAX_PENDING_TRACES} waiting"))
                return
            self._pending.append(trace)
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlflow-lite-traces", daemon=True)
                self._thread.start()
                atexit.register(self.flush)
            if not self.linger or len(self._pending) in (1, self.max_batch):
                self._cond.notify_all()  # lingering: only to start a batch, or to cut a full one

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        self._drain()
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            while self._busy and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            self._flushing -= 1
            if self._busy:
                _logger.warning("%d MLflow trace(s) were not written within %.0f s", self._busy, timeout)
        self._flushed()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                if self.linger and len(self._pending) < self.max_batch and not self._flushing:
                    self._cond.wait(self.linger)
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_batch))]
            self._write(batch)

    def _write(self, batch: list[_Trace]) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        """At the start of a flush: a chance to write a backlog faster than one by one."""

    def _flushed(self) -> None:
        """After a flush: anything buffered downstream of this writer."""

    def _done(self, ref: TraceRef, trace_id: str | None) -> None:
        ref.set(trace_id)
        with self._cond:
            self._busy -= 1
            if self._flushing:
                self._cond.notify_all()

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:  # once a minute, not once per call
            self._warned_at = now
            _logger.warning("Could not write an MLflow trace (calls are not affected): %s", exc)


def _before_fork(writer: weakref.ref[_QueueWriter]) -> None:
    """multiprocessing ends its workers with os._exit, which skips atexit: have its workers flush
    in multiprocessing's own exit hook. (A new worker clears those hooks, then runs its after-fork
    callbacks, which are registered here, in the parent, when multiprocessing is in use.)"""
    alive, mp_util = writer(), sys.modules.get("multiprocessing.util")
    if alive is not None and mp_util is not None and not alive._exit_hooked:
        mp_util.register_after_fork(alive, _flush_at_worker_exit)
        alive._exit_hooked = True


def _restart_after_fork(writer: weakref.ref[_QueueWriter]) -> None:
    alive = writer()
    if alive is not None:
        alive._start()


def _flush_at_worker_exit(writer: _QueueWriter) -> None:
    from multiprocessing import util

    util.Finalize(None, writer.flush, exitpriority=0)


class _ThreadWriter(_QueueWriter):
    """Replays each trace through MLflow's span API, in this process, one at a time.

    A flush that finds more than ``DRAIN_MIN`` traces waiting (the end of a long ``ml.batch``, or
    interpreter exit) writes them itself with MLflow's multi-trace ``log_spans``, the process
    exporter's path, at about a tenth of the CPU per trace: they are written in seconds instead
    of being dropped at the flush timeout, without trace metadata (``mlflow.user``,
    ``mlflow.source.*``, ``mlflow.modelId``).
    """

    mode = "thread"
    max_batch = 1  # what waits stays in the queue, where a flush can drain it
    _unflushed = False  # written to MLflow since its export queue was last flushed
    _destination: Any = None  # trace_export.Destinations, when needed

    def _drain(self) -> None:
        with self._cond:
            if len(self._pending) <= DRAIN_MIN:
                return
            batch = list(self._pending)
            self._pending.clear()
        from mlflow_lite_plugin.tracing.export import write_now

        for trace, trace_id in write_now(batch, self._warn):
            self._done(trace.ref, trace_id)

    def _write(self, batch: list[_Trace]) -> None:
        import mlflow

        # MLflow's export would create a fresh store's schema unserialised (and drop the trace if
        # another process is creating it too): open the store first, safely, once.
        open_store_with_retries(mlflow.get_tracking_uri(), self._warn)
        for trace in batch:
            trace_id = None
            try:
                trace.experiment_id = self._experiment_id(trace)
                assert trace.root is not None
                trace.root._replay()
                trace_id = getattr(trace.root._live, "trace_id", None)
            except Exception as exc:
                self._warn(exc)
            finally:
                # MLflow registers exit hooks when it (re)creates its tracer provider; exit hooks
                # run last-registered-first, so re-register ours to flush before MLflow shuts down.
                atexit.unregister(self.flush)
                atexit.register(self.flush)
                self._unflushed = True
                self._done(trace.ref, trace_id)

    def _experiment_id(self, trace: _Trace) -> str | None:
        """Where ``trace`` goes; None leaves it to MLflow (which honours ``set_destination``)."""
        own = trace.chosen_experiment_id()
        if own or not CallerLinks.here().run_id:
            return own
        # A run began after the call: MLflow would file the trace in that run's experiment.
        from mlflow_lite_plugin.tracing.export import Destinations

        if self._destination is None:
            self._destination = Destinations()
        return self._destination(trace)[1]

    def _flushed(self) -> None:
        mlflow = sys.modules.get("mlflow")
        if self._unflushed and mlflow is not None and hasattr(mlflow, "flush_trace_async_logging"):
            self._unflushed = False
            _safely(mlflow.flush_trace_async_logging)  # MLflow's own export queue


def _safely(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        _logger.warning("MLflow tracing error (the call is not affected): %s", exc)
