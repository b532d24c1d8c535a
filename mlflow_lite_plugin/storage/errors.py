"""The one error a storage outage raises, whatever the backend."""

from __future__ import annotations

from mlflow_lite_plugin.core.errors import MlflowLiteError


class StorageError(MlflowLiteError):
    """A storage backend could not be reached or failed (a locked or broken SQLite file, a Redis
    that refuses or times out). ``backend`` is "sqlite" or "redis"; the backend's own exception
    is the ``__cause__`` and its message is part of this one."""

    def __init__(self, backend: str, message: str):
        super().__init__(message)
        self.backend = backend


class BackendSkipped(StorageError):
    """The backend's circuit is open: the operation was not attempted."""

    def __init__(self, backend: str, retry_in: float):
        super().__init__(backend, f"{backend} storage skipped after repeated failures (next try in {retry_in:.1f} s)")
        self.retry_in = retry_in
