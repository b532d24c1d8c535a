"""The budget's errors: a refusal (what was spent, reserved and asked), and an unreachable ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mlflow_lite_plugin.core.errors import MlflowLiteError, TracedError
from mlflow_lite_plugin.core.pricing import usd


class BudgetExceededError(TracedError):
    """A call was refused before the provider was called: it could push spend past a limit.

    Attributes: ``spent`` and ``reserved`` (USD, in the period, ``reserved`` by calls in
    flight), ``limit``, ``requested`` (this call's worst-case cost), ``period`` ("daily" or
    "monthly"), ``period_key``, ``scope``, ``resets_at`` (aware datetime, or None when raised
    by a ledger directly) and ``waited`` (seconds spent waiting for calls in flight to settle).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        spent: float = 0.0,
        reserved: float = 0.0,
        limit: float = 0.0,
        requested: float = 0.0,
        scope: str = "global",
        period: str | None = None,
        period_key: str | None = None,
        resets_at: datetime | None = None,
        waited: float = 0.0,
    ):
        self.spent = spent
        self.reserved = reserved
        self.limit = limit
        self.requested = requested
        self.scope = scope
        self.period = period
        self.period_key = period_key
        self.resets_at = resets_at
        self.waited = waited
        super().__init__(message or self._default_message())

    def refined(self, **changes: Any) -> BudgetExceededError:
        """The same refusal with some figures changed (the wait it took, the period it is in),
        and its message written anew from them."""
        fields = {name: getattr(self, name) for name in _FIELDS}
        return BudgetExceededError(**{**fields, **changes})

    def _default_message(self) -> str:
        period = f"{self.period} budget" if self.period else f"budget {self.period_key or ''}".rstrip()
        reset = f"; it resets at {self.resets_at.isoformat()}" if self.resets_at is not None else ""
        waited = f" (after waiting {self.waited:.1f}s for them to settle)" if self.waited > 0 else ""
        return (
            f"Budget exceeded ({self.scope}): this call could cost up to {usd(self.requested)}, but the "
            f"{period} of {usd(self.limit)} has {usd(self.spent)} spent and {usd(self.reserved)} reserved "
            f"by calls in flight{waited}{reset}."
        )


_FIELDS = ("spent", "reserved", "limit", "requested", "scope", "period", "period_key", "resets_at", "waited")


class UnpricedModelError(BudgetExceededError):
    """A budget is set and the model has no known price, so its cost cannot be bounded.
    Set one with ``set_model_price`` or configure the budget with ``on_unknown_price="allow"``."""


class BudgetLedgerError(MlflowLiteError):
    """The budget ledger could not be read or written before a call: the call is refused."""
