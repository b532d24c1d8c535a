"""Values made JSON-safe for artifacts, traces and reports (one rule, shared by every writer)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON: mappings get string keys, sequences and sets become lists, NaN and
    infinity become None (JSON has neither; ``JSON.stringify`` and pandas write null too) and any
    other object its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
