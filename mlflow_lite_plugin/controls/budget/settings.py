"""The budget's settings: ``set_budget``'s keywords, validated once, saved with a flavor model."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mlflow_lite_plugin.core.errors import ArgumentError, check_number
from mlflow_lite_plugin.core.pipeline import Settings

# Seconds a call waits for the reservations of calls in flight to settle before it is refused:
# long enough for a few LLM answers to come back, short enough not to hang a served request.
DEFAULT_MAX_WAIT = 30.0
LEDGER_BACKENDS = ("sqlite", "redis")


@dataclass(frozen=True)
class BudgetSettings(Settings):
    """What to enforce: USD limits per calendar day and/or month, in ``timezone``, per ``scope``,
    and where the ledger lives (``backend`` "sqlite" at ``path``, or "redis" at ``url``).

    ``scope``: "global" (one budget), "model" (one per primary model) or "tag:<name>" (one per
    value of request tag ``<name>``, e.g. ``tags={"user": "alice"}``).
    ``on_unknown_price``: "refuse" (default) or "allow" (counted as $0, warned).
    ``max_wait``: seconds a call may wait for calls in flight to settle when only their
    reservations stand in the way (0: refuse at once; None: wait as long as they take).
    ``enabled=False`` removes the budget (no limit is needed then).
    """

    stage = "budget"
    daily_limit: float | None = None
    monthly_limit: float | None = None
    timezone: str = "UTC"
    scope: str = "global"
    on_unknown_price: str = "refuse"
    max_wait: float | None = DEFAULT_MAX_WAIT
    backend: str = "sqlite"
    path: str | None = None
    url: str | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.path is not None:  # a PathLike is kept as text: the settings are saved as YAML
            if not isinstance(self.path, (str, os.PathLike)):
                raise ArgumentError("path", f"must be a file path, got {self.path!r}")
            object.__setattr__(self, "path", os.fspath(self.path))
        if not self.enabled:
            return
        for name in ("daily_limit", "monthly_limit"):
            check_number(name, getattr(self, name), unit="USD")
        check_number("max_wait", self.max_wait, allow_zero=True, unit="seconds")
        if self.daily_limit is None and self.monthly_limit is None:
            raise ArgumentError("daily_limit", "give daily_limit= and/or monthly_limit= (USD)")
        if not isinstance(self.timezone, str):
            raise ArgumentError("timezone", f"must be an IANA time zone name such as 'UTC', got {self.timezone!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ArgumentError(
                "timezone", f"unknown time zone {self.timezone!r} (use an IANA name such as 'Europe/Paris')"
            ) from exc
        if not isinstance(self.scope, str) or not (
            self.scope in ("global", "model") or re.fullmatch(r"tag:\S+", self.scope)
        ):
            raise ArgumentError("scope", f"must be 'global', 'model' or 'tag:<name>', got {self.scope!r}")
        if self.on_unknown_price not in ("refuse", "allow"):
            raise ArgumentError("on_unknown_price", f"must be 'refuse' or 'allow', got {self.on_unknown_price!r}")
        if self.backend not in LEDGER_BACKENDS:
            raise ArgumentError("backend", f"must be 'sqlite' or 'redis', got {self.backend!r}")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def limits(self) -> list[tuple[str, float]]:
        """(period, limit) pairs, daily first."""
        pairs = [("daily", self.daily_limit), ("monthly", self.monthly_limit)]
        return [(period, float(limit)) for period, limit in pairs if limit is not None]
