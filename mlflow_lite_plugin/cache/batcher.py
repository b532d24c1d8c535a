"""Micro-batching of embeddings: the texts of concurrent callers are encoded in one call.

One encode of 16 short questions costs little more than one of a single question on a CPU (the
model's fixed cost dominates), so when lookups arrive together (threads of ``ml.batch`` or of
``mlflow models serve``, tasks of ``ml.async_batch``) they should share it, the way inference
servers batch requests. A single worker thread owns the model: a request is queued, and the
worker takes everything queued when it is free, up to ``max_batch`` texts. A caller alone pays no
wait; only while batches keep forming (the last one served several callers) does the worker hold
a batch open for ``window`` seconds to let more join. Callers wait on a future: a thread blocks,
an asyncio task awaits (the event loop runs on).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

_logger = logging.getLogger(__name__)

Encode = Callable[[list[str]], np.ndarray]

#: Texts per encode call at most (sentence-transformers' own default batch size is 32).
MAX_BATCH = 64
#: Seconds a batch stays open for more callers, only while several callers keep arriving together.
WINDOW = 0.002


class MicroBatcher:
    """Runs ``encode`` (a list of texts -> an array with one row per text) for many callers."""

    def __init__(self, encode: Encode, *, max_batch: int = MAX_BATCH, window: float = WINDOW, name: str = "embed"):
        self._encode = encode
        self.max_batch = max_batch
        self.window = window
        self.name = name
        self._queue: deque[tuple[list[str], Future[np.ndarray]]] = deque()
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None
        self._pid = os.getpid()
        self._busy = False  # the last batch served more than one caller

    def submit(self, texts: Sequence[str]) -> Future[np.ndarray]:
        """Queue ``texts``; the future's result holds their rows, in order."""
        future: Future[np.ndarray] = Future()
        with self._ready:
            self._ensure_worker()
            self._queue.append((list(texts), future))
            self._ready.notify()
        return future

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts`` (this thread waits for its batch)."""
        return self.submit(texts).result()

    async def acall(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`__call__` for asyncio: the loop runs while the batch is encoded."""
        return await asyncio.wrap_future(self.submit(texts))

    # -- the worker --

    def _ensure_worker(self) -> None:
        if os.getpid() != self._pid:  # a forked child has the queue but not the thread
            self._pid, self._worker, self._queue = os.getpid(), None, deque()
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name=f"mlflow-lite-{self.name}-batcher", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while True:
            batch = self._take()
            self._serve(batch)

    def _take(self) -> list[tuple[list[str], Future[np.ndarray]]]:
        with self._ready:
            while not self._queue:
                self._ready.wait()
            batch = [self._queue.popleft()]
            size = len(batch[0][0])
            closes = time.monotonic() + (self.window if self._busy else 0.0)
            while size < self.max_batch:
                if not self._queue:
                    left = closes - time.monotonic()
                    if left <= 0 or not self._ready.wait(left) or not self._queue:
                        break
                texts = self._queue[0][0]
                if size + len(texts) > self.max_batch:
                    break
                batch.append(self._queue.popleft())
                size += len(texts)
            self._busy = len(batch) > 1
        return batch

    def _serve(self, batch: list[tuple[list[str], Future[np.ndarray]]]) -> None:
        live = [(texts, future) for texts, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        unique = list(dict.fromkeys(text for texts, _ in live for text in texts))  # a word asked twice: once
        try:
            rows = self._encode(unique)
        except Exception as exc:  # every caller of the batch gets the error, the worker goes on
            _logger.debug("%s batch of %d texts failed: %s", self.name, len(unique), exc)
            for _, future in live:
                future.set_exception(exc)
            return
        position = {text: i for i, text in enumerate(unique)}
        for texts, future in live:
            future.set_result(rows[[position[t] for t in texts]])
