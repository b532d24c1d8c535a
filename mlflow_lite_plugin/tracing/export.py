"""Writing traces to MLflow from a separate process, in batches.

In a server that answers from the cache in ~2 ms, the in-process writer thread's 20-30 ms of CPU
per trace takes most of the process's GIL. This exporter moves the work out of the process: the
caller's process only turns each finished trace into one JSON line on a pipe
(:func:`.batch.trace_record`); a child process (``python -m mlflow_lite_plugin.tracing.export``,
at a lower CPU priority so it never slows the requests it traces) writes them with
:mod:`.batch`, up to ``MAX_BATCH`` traces per ``log_spans`` call. It acknowledges each trace on
its stdout, which is when ``Response.trace_id`` resolves. It opens each store once, under a lock
(:func:`.store.open_store`): several exporters, or an exporter and its server, must not create a
fresh store's schema at once. A batch that fails is tried again with backoff (``RETRY_ATTEMPTS``),
while newer batches go on; one that still fails, or that cannot succeed (a store without
``log_spans``), is dropped with a warning that counts it.

Traces written this way lack MLflow's trace metadata (see :mod:`.batch`). The child exits when
this process closes the pipe (at its exit), after writing what it was given, even if that process
was killed; it runs in its own session, so signals sent to the server's process group do not
reach it.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.tracing import store
from mlflow_lite_plugin.tracing.batch import (
    MAX_BATCH,
    Destinations,
    Retries,
    mlflow_trace_id,
    trace_record,
    write_batch,
)
from mlflow_lite_plugin.tracing.writers import QueueWriter

if TYPE_CHECKING:
    from mlflow_lite_plugin.tracing.tracer import RecordedTrace, TraceRef

_logger = logging.getLogger(__name__)

LINGER_S = 0.05  # wait this long for a batch to fill once a trace arrives
NICE = 19  # the child yields the CPU to the serving process


# -- the caller's side: one JSON line per trace --


def _sampling_ratio() -> float:
    try:
        return float(os.environ.get("MLFLOW_TRACE_SAMPLING_RATIO", "1"))
    except ValueError:
        return 1.0


class ProcessWriter(QueueWriter):
    """Sends finished traces to the exporter child; a trace is done when the child acknowledges it."""

    mode = "process"
    linger = 0.1
    max_batch = MAX_BATCH

    def __init__(self) -> None:
        super().__init__()
        self._destination = Destinations()

    def reset(self) -> None:
        super().reset()
        self._child: _Child | None = None  # after a fork, the parent's exporter is not ours

    def submit(self, trace: RecordedTrace) -> None:
        # MLflow's sampler never sees these traces: apply its ratio here.
        if random.random() >= _sampling_ratio():
            trace.ref.set(None)
            return
        trace.key = secrets.token_hex(16)  # the OTel trace id, in hex
        trace.ref.planned_id = mlflow_trace_id(trace.key)
        super().submit(trace)

    def write(self, traces: list[RecordedTrace]) -> None:
        from mlflow.tracing.utils import TraceJSONEncoder  # inputs and outputs serialise as MLflow would

        items = []
        for trace in traces:
            try:
                record = trace_record(trace, *self._destination(trace))
                items.append((record["key"], json.dumps(record, cls=TraceJSONEncoder, ensure_ascii=False), trace.ref))
            except Exception as exc:
                self.warn(exc)
                self.done(trace.ref, None)
        try:
            if self._child is None or not self._child.alive():
                self._child = _Child(self.done, self.warn)
        except Exception as exc:
            self.warn(exc)
            for _, _, ref in items:
                self.done(ref, None)
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
    with contextlib.suppress(AttributeError, OSError):  # no os.nice on Windows; a sandbox may refuse it
        os.nice(NICE)
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
        while sum(len(records) for _, _, records in self._waiting) > store.MAX_PENDING_TRACES:
            _, _, records = self._waiting.pop(0)
            self._retries.dropped += len(records)
            _logger.warning("Dropped %d trace(s): more than %d waiting to be tried again "
                            "(MLFLOW_LITE_MAX_PENDING_TRACES; %d dropped in all)",
                            len(records), store.MAX_PENDING_TRACES, self._retries.dropped)
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


if __name__ == "__main__":
    main()
