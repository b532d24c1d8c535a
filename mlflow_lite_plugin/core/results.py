"""What the checks of one call found: metric and validation results, and a violation while streaming.

They are data the response carries, so they live in core; the controls that compute them (metrics,
validation) import them from here, and ``ml.MetricResult``/``ml.ValidationResult`` are these classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow_lite_plugin.core.errors import MlflowLiteError
from mlflow_lite_plugin.core.jsonsafe import json_safe


@dataclass(frozen=True)
class MetricResult:
    """One metric on one answer: ``value`` (None when the metric failed), why, or its error."""

    value: bool | int | float | str | None
    rationale: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ValidationResult:
    passed: bool
    errors: list[str]  # human readable, each prefixed with its rule
    failed_rules: list[str]  # the rule behind each error, parallel to errors
    value: Any = None  # the parsed document (format json/yaml, or schema)
    attempts: int = 1  # set by the pipeline when it re-asks the model

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "errors": list(self.errors),
            "failed_rules": list(self.failed_rules),
            "value": json_safe(self.value),
            "attempts": self.attempts,
        }


class StreamViolation(MlflowLiteError):
    """A violation already certain while streaming."""

    def __init__(self, rule: str, message: str, read: int, path: str | None = None):
        super().__init__(f"{rule}: {message} (after {read} characters)")
        self.rule = rule
        self.message = message
        self.read = read  # characters of the answer received so far, the violating chunk included
        self.path = path  # JSON path of the violation, when it comes from JSON
