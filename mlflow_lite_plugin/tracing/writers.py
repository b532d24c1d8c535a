"""Writers of finished traces: a bounded queue and the daemon thread that empties it.

:class:`QueueWriter` is the base of both writers: finished traces wait in it, bounded
(``MAX_PENDING_TRACES``), for a daemon thread that hands them to :meth:`QueueWriter.write` in
order; a flush waits until every submitted trace is written or given up. :class:`ThreadWriter`
(the default) replays each trace through MLflow's span API in this process; the process
exporter's writer (:mod:`.export`) subclasses the same base. Subclasses override ``write`` and,
if they need to, ``reset``, ``drain`` and ``after_flush``; they report each trace with ``done``
and each error with ``warn``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from mlflow_lite_plugin import heap
from mlflow_lite_plugin.tracing import store

if TYPE_CHECKING:
    from mlflow_lite_plugin.tracing.batch import Destinations
    from mlflow_lite_plugin.tracing.tracer import RecordedTrace, TraceRef

_logger = logging.getLogger(__name__)

DRAIN_MIN = 20  # a flush finding more traces than this waiting writes them in batches
BURST_MIN = 4  # the thread writer finding more than this waiting (a burst) writes them in batches


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
            run = fluent._get_latest_active_run()
            model_id = fluent._get_active_model_id_global() or _predicting_model_id()
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


def _predicting_model_id() -> str | None:
    """The LoggedModel of the pyfunc prediction this call is part of, if any. A prediction has
    imported MLflow's prediction context; when nothing has, none is active, and importing it (all
    of ``mlflow.pyfunc``, ~0.5 s) from a call would stall its event loop."""
    if "mlflow.pyfunc.context" not in sys.modules:
        return None
    from mlflow.tracing.utils import maybe_get_logged_model_id

    return maybe_get_logged_model_id()


class QueueWriter:
    """Finished traces wait here, bounded, for a daemon thread that writes them in order."""

    mode = ""
    # Seconds a trace may wait for others to join its batch; 0 writes each at once. Waking the
    # writer for every trace costs the serving threads GIL hand-offs.
    linger = 0.0
    max_batch = 200

    def __init__(self) -> None:
        self.reset()
        self._warned_at = 0.0
        self.dropped = 0
        # A forked child (multiprocessing's default on Linux) inherits this writer but not its
        # thread: it starts afresh, or its traces would wait forever for a thread that is not there.
        self._exit_hooked = False
        if hasattr(os, "register_at_fork"):  # POSIX only: Windows has no fork
            me = weakref.ref(self)
            os.register_at_fork(before=functools.partial(_before_fork, me),
                                after_in_child=functools.partial(_restart_after_fork, me))

    def reset(self) -> None:
        """The state of a writer that has written nothing (at creation, and in a forked child)."""
        self._pending: deque[RecordedTrace] = deque()  # after a fork, those waiting are the parent's to write
        self._cond = threading.Condition()
        self._busy = 0  # submitted, not yet written (or given up)
        self._thread: threading.Thread | None = None
        self._flushing = 0

    def submit(self, trace: RecordedTrace) -> None:
        with self._cond:
            if len(self._pending) >= store.MAX_PENDING_TRACES:
                self.dropped += 1
                trace.ref.set(None)
                limit = store.MAX_PENDING_TRACES
                self.warn(RuntimeError(f"{self.dropped} trace(s) dropped: more than {limit} waiting"))
                return
            self._pending.append(trace)
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlflow-lite-traces", daemon=True)
                self._thread.start()
                atexit.register(self.flush)
            if not self.linger or len(self._pending) in (1, self.max_batch):
                self._cond.notify_all()  # lingering: only to start a batch, or to cut a full one

    def flush(self, timeout: float = store.FLUSH_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        self.drain()
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            while self._busy and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            self._flushing -= 1
            if self._busy:
                _logger.warning("%d MLflow trace(s) were not written within %.0f s", self._busy, timeout)
        self.after_flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                if self.linger and len(self._pending) < self.max_batch and not self._flushing:
                    self._cond.wait(self.linger)
                traces = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_batch))]
            self.write(traces)

    # -- for subclasses --

    def write(self, traces: list[RecordedTrace]) -> None:
        """Write ``traces`` (from the writer thread), calling :meth:`done` for each."""
        raise NotImplementedError

    def drain(self, at_least: int = DRAIN_MIN) -> None:
        """At the start of a flush: a chance to write a backlog (more than ``at_least`` waiting)
        faster than one by one."""

    def after_flush(self) -> None:
        """After a flush: anything buffered downstream of this writer."""

    def done(self, ref: TraceRef, trace_id: str | None) -> None:
        """A trace is written (``trace_id``) or given up (None)."""
        ref.set(trace_id)
        with self._cond:
            self._busy -= 1
            if self._flushing:
                self._cond.notify_all()

    def warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:  # once a minute, not once per call
            self._warned_at = now
            _logger.warning("Could not write an MLflow trace (calls are not affected): %s", exc)


def _before_fork(writer: weakref.ref[QueueWriter]) -> None:
    """multiprocessing ends its workers with os._exit, which skips atexit: have its workers flush
    in multiprocessing's own exit hook. (A new worker clears those hooks, then runs its after-fork
    callbacks, which are registered here, in the parent, when multiprocessing is in use.)"""
    alive, mp_util = writer(), sys.modules.get("multiprocessing.util")
    if alive is not None and mp_util is not None and not alive._exit_hooked:
        mp_util.register_after_fork(alive, _flush_at_worker_exit)
        alive._exit_hooked = True


def _restart_after_fork(writer: weakref.ref[QueueWriter]) -> None:
    alive = writer()
    if alive is not None:
        alive.reset()


def _flush_at_worker_exit(writer: QueueWriter) -> None:
    from multiprocessing import util

    util.Finalize(None, writer.flush, exitpriority=0)


class ThreadWriter(QueueWriter):
    """Replays each trace through MLflow's span API, in this process, one at a time.

    When more than ``BURST_MIN`` traces are waiting as it takes the next (a burst of calls), or
    more than ``DRAIN_MIN`` at a flush (the end of a long ``ml.batch``, interpreter exit), the
    backlog is written with MLflow's multi-trace
    ``log_spans``, the process exporter's path (:func:`.batch.write_now`), at about a tenth of the
    CPU per trace: they are written in seconds, without slowing the calls and without being
    dropped at the flush timeout, but without trace metadata (``mlflow.user``,
    ``mlflow.source.*``, ``mlflow.modelId``).
    """

    mode = "thread"
    max_batch = 1  # what waits stays in the queue, where a flush can drain it
    _unflushed = False  # written to MLflow since its export queue was last flushed
    _destination: Destinations | None = None  # created when first needed

    def drain(self, at_least: int = DRAIN_MIN) -> None:
        with self._cond:
            if len(self._pending) <= at_least:
                return
            backlog = list(self._pending)
            self._pending.clear()
        # The batch path loads with its first backlog, off the package's import (a cold-start cost).
        from mlflow_lite_plugin.tracing.batch import write_now

        for trace, trace_id in write_now(backlog, self.warn):
            self.done(trace.ref, trace_id)

    def write(self, traces: list[RecordedTrace]) -> None:
        # A burst of calls (async_batch, a busy server) outpaces one-by-one writing: its backlog
        # goes in batches at a tenth of the CPU, which this process's calls would otherwise lose
        # to the writer (the GIL). A call now and then keeps MLflow's full per-trace export.
        self.drain(BURST_MIN)
        import mlflow

        heap.freeze_loaded("mlflow")

        # MLflow's export would create a fresh store's schema unserialised (and drop the trace if
        # another process is creating it too): open the store first, safely, once.
        store.open_store_with_retries(mlflow.get_tracking_uri(), self.warn)
        for trace in traces:
            trace_id = None
            try:
                trace.experiment_id = self._experiment_id(trace)
                trace_id = trace.replay()
            except Exception as exc:
                self.warn(exc)
            finally:
                # MLflow registers exit hooks when it (re)creates its tracer provider; exit hooks
                # run last-registered-first, so re-register ours to flush before MLflow shuts down.
                atexit.unregister(self.flush)
                atexit.register(self.flush)
                self._unflushed = True
                self.done(trace.ref, trace_id)

    def _experiment_id(self, trace: RecordedTrace) -> str | None:
        """Where ``trace`` goes; None leaves it to MLflow (which honours ``set_destination``)."""
        own = trace.chosen_experiment_id()
        if own or not CallerLinks.here().run_id:
            return own
        # A run began after the call: MLflow would file the trace in that run's experiment.
        if self._destination is None:
            from mlflow_lite_plugin.tracing.batch import Destinations  # as in drain: off the import path

            self._destination = Destinations()
        return self._destination(trace)[1]

    def after_flush(self) -> None:
        mlflow = sys.modules.get("mlflow")
        if self._unflushed and mlflow is not None and hasattr(mlflow, "flush_trace_async_logging"):
            self._unflushed = False
            store.safely(mlflow.flush_trace_async_logging)  # MLflow's own export queue
