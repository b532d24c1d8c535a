"""Size limits and the deadline of a served ``mlflow_lite`` model's requests.

MLflow's scoring server reads and parses the whole body before the model sees it, and has no
body-size setting of its own; the model checks the parsed input before any stage runs:

- ``max_request_bytes``: the UTF-8 size of every value of the input, checked only under
  ``mlflow models serve`` (a Spark UDF hands the model whole partitions) -> HTTP 413;
- ``max_row_chars``: the characters of one row's prompt variables, checked on every ``predict``
  -> HTTP 400;
- ``timeout``: seconds a ``predict`` may take. Served, the deadline is also never later than the
  scoring server's own ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` (after which it has answered 504):
  rows not answered by then fail with :class:`~mlflow_lite_plugin.core.deadline.DeadlineExceededError`
  and no provider call is started for them.

Each is a saved setting (``save_model(..., serving={...})``) and an environment variable of the
serving host, which wins: ``MLFLOW_LITE_MAX_REQUEST_BYTES``, ``MLFLOW_LITE_MAX_ROW_CHARS``,
``MLFLOW_LITE_REQUEST_TIMEOUT``. A hard cap on the bytes read from the socket belongs in the proxy
in front of the server (nginx ``client_max_body_size``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

DEFAULT_MAX_REQUEST_BYTES = 5_000_000
DEFAULT_MAX_ROW_CHARS = 200_000  # about 50k tokens: beyond what most models take in one prompt
SCORING_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
SCORING_TIMEOUT_DEFAULT = 60.0  # MLflow's default for it
_ENV = {
    "max_request_bytes": "MLFLOW_LITE_MAX_REQUEST_BYTES",
    "max_row_chars": "MLFLOW_LITE_MAX_ROW_CHARS",
    "timeout": "MLFLOW_LITE_REQUEST_TIMEOUT",
}


class InputTooLargeError(MlflowException):
    """An input over a size limit; ``limit`` names it and ``value`` is the input's size. Answered
    with ``status`` by MLflow's scoring server (it asks the exception for its HTTP status)."""

    def __init__(self, message: str, *, limit: str, value: int, status: int):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.limit = limit
        self.value = value
        self.status = status

    def get_http_status_code(self) -> int:
        return self.status


@dataclass(frozen=True)
class ServingLimits:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_row_chars: int = DEFAULT_MAX_ROW_CHARS
    timeout: float | None = None  # seconds; None: only the scoring server's timeout, when served

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None, environ: Mapping[str, str]) -> ServingLimits:
        """The saved ``serving`` settings, each overridden by its environment variable."""
        settings = dict(settings or {})
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            raise _invalid(f"serving: unknown setting(s) {', '.join(unknown)}; known: {', '.join(_ENV)}")
        values: dict[str, Any] = {}
        for name, env in _ENV.items():
            if env in environ:
                values[name] = _number(env, environ[env], integer=name != "timeout")
            elif settings.get(name) is not None:
                values[name] = _number(f"serving.{name}", settings[name], integer=name != "timeout")
        return cls(**values)

    def seconds(self, served: bool, environ: Mapping[str, str]) -> float | None:
        """How long a ``predict`` may take: the configured timeout and, served, the scoring
        server's request timeout, whichever is shorter (None: no deadline)."""
        candidates = [self.timeout] if self.timeout is not None else []
        if served:
            raw = environ.get(SCORING_TIMEOUT_ENV)
            candidates.append(_number(SCORING_TIMEOUT_ENV, raw, integer=False) if raw else SCORING_TIMEOUT_DEFAULT)
        return min(candidates) if candidates else None

    def check_request(self, frame: pd.DataFrame) -> None:
        """413 if the input's values add up to more than ``max_request_bytes``."""
        size = 0
        for name in frame.columns:
            for value in frame[name].tolist():
                size += _utf8_size(value)
            if size > self.max_request_bytes:  # stop counting: it is too large already
                raise InputTooLargeError(
                    f"the request's input is over the limit max_request_bytes={self.max_request_bytes} "
                    f"(at least {size} bytes; set by the model's serving settings or {_ENV['max_request_bytes']})",
                    limit="max_request_bytes", value=size, status=413,
                )

    def check_row(self, index: int, values: Mapping[str, Any]) -> None:
        """400 if a row's prompt variables hold more than ``max_row_chars`` characters."""
        size = sum(len(v) if isinstance(v, str) else len(str(v)) for v in values.values())
        if size > self.max_row_chars:
            raise InputTooLargeError(
                f"row {index}: {size} characters is over the per-row limit max_row_chars={self.max_row_chars} "
                f"(set by the model's serving settings or {_ENV['max_row_chars']})",
                limit="max_row_chars", value=size, status=400,
            )


def saved_settings(serving: Any) -> dict[str, Any]:
    """The ``serving`` settings to write into ``mlflow_lite.yaml``, checked as a load would."""
    if not isinstance(serving, Mapping):
        raise _invalid(f"serving must be a dict of settings, got {type(serving).__name__}")
    ServingLimits.from_settings(serving, {})
    return {k: v for k, v in serving.items() if v is not None}


def _utf8_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    return len(str(value))


def _number(name: str, value: Any, *, integer: bool) -> Any:
    """A positive int (or a positive number of seconds), from a setting or an env var string."""
    kind = "a positive integer" if integer else "a positive number of seconds"
    try:
        if isinstance(value, bool):
            raise ValueError
        number = (int(value) if integer else float(value)) if isinstance(value, str) else value
        if not isinstance(number, (int, float)) or (integer and not isinstance(number, int)):
            raise ValueError
        if not math.isfinite(number) or number <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise _invalid(f"{name} must be {kind}, got {value!r}") from None
    return number


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
