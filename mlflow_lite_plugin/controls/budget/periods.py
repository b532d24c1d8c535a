"""Budget periods: the calendar day or month a call's spend is booked in, in the budget's zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from zoneinfo import ZoneInfo

from mlflow_lite_plugin.core.errors import ArgumentError


@dataclass(frozen=True)
class Period:
    """One calendar period in a time zone: its ledger key, start and end (aware datetimes)."""

    name: str  # "daily" or "monthly"
    key: str  # "daily:2024-05-01@UTC"
    start: datetime
    end: datetime


def current_period(name: str, now: datetime, zone: ZoneInfo) -> Period:
    """The ``name`` ("daily"/"monthly") period containing ``now`` in ``zone``."""
    if now.tzinfo is None:
        raise ArgumentError("clock", "must return timezone-aware datetimes (e.g. datetime.now(timezone.utc))")
    local = now.astimezone(zone)
    if name == "daily":
        start = datetime(local.year, local.month, local.day)
        end = start + timedelta(days=1)
        label = f"{start:%Y-%m-%d}"
    elif name == "monthly":
        start = datetime(local.year, local.month, 1)
        end = datetime(local.year + 1, 1, 1) if local.month == 12 else datetime(local.year, local.month + 1, 1)
        label = f"{start:%Y-%m}"
    else:
        raise ArgumentError("period", f"must be 'daily' or 'monthly', got {name!r}")
    # Wall-clock midnight in the zone; normalised through UTC so a DST gap cannot shift it.
    start_at = start.replace(tzinfo=zone).astimezone(dt_timezone.utc).astimezone(zone)
    end_at = end.replace(tzinfo=zone).astimezone(dt_timezone.utc).astimezone(zone)
    return Period(name, f"{name}:{label}@{zone.key}", start_at, end_at)
