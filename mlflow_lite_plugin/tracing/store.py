"""The tracking store as trace writers see it: opened once per process, tried again with backoff,
and the limits of how long and how much writing may wait. A tracing error never fails a call
(:func:`safely`)."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; stores are opened unserialised there
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

FLUSH_TIMEOUT = float(os.environ.get("MLFLOW_LITE_TRACE_FLUSH_TIMEOUT", "30"))
# Traces waiting for the writer beyond this are dropped (and counted): under a load the tracking
# store cannot absorb, tracing must not grow memory without bound or slow the calls down.
MAX_PENDING_TRACES = int(os.environ.get("MLFLOW_LITE_MAX_PENDING_TRACES", "10000"))
# A failed trace write (or store open) is tried this many times, RETRY_FIRST_S apart and doubling
# up to RETRY_MAX_S (~25 s in all): long enough for a store being created or a server restarting.
RETRY_ATTEMPTS = 8
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 10.0


def retry_delay(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th failed try (from 1), jittered so that several
    writers that failed together do not retry together."""
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def safely(fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)``, an error logged instead of raised: tracing never fails the call it traces."""
    try:
        fn(*args)
    except Exception as exc:
        _logger.warning("MLflow tracing error (the call is not affected): %s", exc)


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


def experiment_named(name: str) -> str:
    """The id of the experiment ``name`` in the current tracking store, created if missing.

    Another thread, process or replica may create it between the lookup and the creation (MLflow
    then raises a unique-constraint error): the one it created is found and used.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        created = client.get_experiment_by_name(name)
        if created is None:  # it was not that: the creation failed for another reason
            raise
        return str(created.experiment_id)


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


def open_store_with_retries(uri: str, warn: Callable[[Exception], None]) -> None:
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
