"""One bounded pool of worker threads where async calls run their blocking work.

A stage's async hook must never block the event loop: work that has no async client (SQLite, an
embedding, a FAISS search, a user's metric) runs here. The pool is the package's own, not the
loop's default executor: that one has ``min(32, cpus + 4)`` threads (6 on a 2-core host), which
would cap how many semantic lookups can wait on one batched embedding at once. Workers mostly
wait (on the embedding batcher, on SQLite's lock), so 32 threads cost little. The caller's
context variables (the request deadline, the active span) go with the work.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Worker threads; enough for every call of an ``async_batch`` at its default concurrency (16)
#: and the benchmarks' 32 to wait at once.
MAX_WORKERS = 32

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = _started_pool()
    return _pool


def _started_pool() -> ThreadPoolExecutor:
    """A pool whose workers all run already. ThreadPoolExecutor starts a thread inside
    ``submit`` when none is idle, and ``Thread.start`` waits for the new thread to get the GIL:
    on the event loop, under load, that stalled every task for tens of milliseconds."""
    pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="mlflow-lite-offload")
    everyone = threading.Barrier(MAX_WORKERS + 1)
    for _ in range(MAX_WORKERS):  # each waits for all: no worker is idle at the next submit
        pool.submit(everyone.wait, 10)
    everyone.wait(10)
    return pool


def warm_up() -> None:
    """Start the worker threads now (a control that offloads calls this when it is turned on, so
    the first async call does not pay for it)."""
    _executor()


async def offload(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` in a worker thread, with this task's context; the loop runs on."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_executor(), call)


def _after_fork() -> None:  # a forked child has none of its parent's threads
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork)
