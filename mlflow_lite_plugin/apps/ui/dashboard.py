"""Cost dashboard endpoint: spend by day, model and tag from the experiment's traces, the budget,
what the cache saved, and every installed control (``controls``: each stage's ``describe()`` and
``status()``, built-in or added with ``add_stage``).

Figures are summed over our query/stream spans (``mlflow_lite.cost_usd``, ``.total_tokens``,
``.cached``, ``.cost_saved_usd``), so chains count every step. Spend is ``mlflow_lite.cost_usd``,
the figure the budget's ledger is charged: what the provider billed, also for a call that failed
after paying (answered attempts, the text a broken stream delivered), $0 for one that failed
before any answer. Days are UTC. At most ``MAX_TRACES`` traces are read per request;
``truncated`` says when the window holds more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from mlflow_lite_plugin.apps.ui.state import UIState, ui_state
from mlflow_lite_plugin.apps.ui.traces import calls, user_tags
from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow.entities import Trace

    from mlflow_lite_plugin.client import Client

router = APIRouter(prefix="/api")

MAX_TRACES = 5000
_PAGE = 500


@router.get("/dashboard")
def dashboard(days: int = Query(30, ge=1, le=366), ui: UIState = Depends(ui_state)) -> Response:
    """Spend of the last ``days`` days (today included)."""
    ui.client.flush_traces()
    first_day = datetime.now(timezone.utc).date() - timedelta(days=days - 1)
    traces, truncated = _read(ui.experiment_id(), first_day)
    return ui.respond(
        {
            **aggregate(traces, first_day, days),
            "truncated": truncated,
            "budget": _budget(ui.client),
            "cache": _cache(ui.client),
            "controls": ui.client.pipeline.described(),
        }
    )


def _read(experiment_id: str, first_day: date) -> tuple[list[Trace], bool]:
    """The traces since ``first_day`` (UTC), newest first, at most MAX_TRACES."""
    import mlflow

    since_ms = int(datetime.combine(first_day, datetime.min.time(), timezone.utc).timestamp() * 1000)
    store = mlflow.MlflowClient()
    traces: list[Trace] = []
    token = None
    while len(traces) < MAX_TRACES:
        page = store.search_traces(
            locations=[experiment_id],
            filter_string=f"trace.timestamp_ms >= {since_ms}",
            max_results=min(_PAGE, MAX_TRACES - len(traces)),
            order_by=["timestamp_ms DESC"],
            page_token=token,
        )
        traces.extend(page)
        token = page.token
        if not token:
            return traces, False
    return traces, True


@dataclass
class Figures:
    """Spend, calls and tokens of a group of answered calls."""

    cost: float = 0.0
    calls: int = 0
    tokens: int = 0

    def add(self, cost: float, tokens: int, answered: bool = True) -> None:
        self.cost += cost
        self.calls += answered
        self.tokens += tokens


def aggregate(traces: Iterable[Trace], first_day: date, days: int) -> dict[str, Any]:
    """Totals, and spend per day (every day of the window, zero included), model and tag, of the
    answered calls; a call that failed is counted in ``errors``, and what it was billed in spend."""
    by_day = {(first_day + timedelta(days=i)).isoformat(): Figures() for i in range(days)}
    by_model: dict[str, Figures] = defaultdict(Figures)
    by_tag: dict[str, Figures] = defaultdict(Figures)
    overall = Figures()
    extra = {"errors": 0, "unpriced_calls": 0, "cache_hits": 0, "cost_saved": 0.0}
    for trace in traces:
        day = datetime.fromtimestamp(trace.info.request_time / 1000, timezone.utc).date().isoformat()
        tags = [f"{k}={v}" for k, v in user_tags(trace.info.tags).items()]
        for span in calls(trace):
            attributes = span.attributes
            cost = attributes.get(schema.COST_USD)
            # Only a call that returned an answer has its model set (the failed do not).
            answered = schema.MODEL in attributes
            if not answered:
                extra["errors"] += 1
                if not isinstance(cost, (int, float)) or not cost:  # nothing billed
                    continue
            elif not isinstance(cost, (int, float)):
                extra["unpriced_calls"] += 1
                cost = 0.0
            if attributes.get(schema.CACHED) not in (None, "none"):
                extra["cache_hits"] += 1
                extra["cost_saved"] += attributes.get(schema.COST_SAVED_USD) or 0.0
            model = attributes.get(schema.MODEL) or attributes.get(schema.REQUESTED_MODEL) or "?"
            groups = [overall, by_model[model], *(by_tag[t] for t in tags)]
            if day in by_day:
                groups.append(by_day[day])
            for group in groups:
                group.add(float(cost), attributes.get(schema.TOTAL_TOKENS) or 0, answered)
    return {
        "days": days,
        "first_day": first_day.isoformat(),
        "totals": {**asdict(overall), **extra},
        "by_day": [{"day": day, **asdict(figures)} for day, figures in by_day.items()],
        "by_model": _ranked(by_model),
        "by_tag": _ranked(by_tag),
    }


def _ranked(groups: dict[str, Figures]) -> list[dict[str, Any]]:
    """Groups by spend, then calls, highest first."""
    rows = [{"name": name, **asdict(figures)} for name, figures in groups.items()]
    return sorted(rows, key=lambda r: (-r["cost"], -r["calls"], r["name"]))


def _budget(client: Client) -> dict[str, Any] | None:
    """The budget status of the server's client; None when no budget is set."""
    try:
        return client.budget_status()
    except ArgumentError:
        return None


def _cache(client: Client) -> dict[str, Any]:
    """Cache statistics of this server process (hits since it started, cost saved)."""
    enabled = [stage.name for stage in client.pipeline.stages if stage.group == "cache"]
    return {"enabled": enabled, **client.cache_stats()}
