"""Spending limits: a shared ledger, reserve-then-settle, refusal before the provider is called.

    ml.set_budget(daily_limit=10.0)                  # $10/day (UTC midnight to midnight)
    ml.set_alert(threshold=0.80, email="you@company.com")
    ml.budget_status()                               # spent, reserved, remaining, limit, resets_at

How a call is accounted (the ``budget`` stage, after the caches, before the rate limit and the
provider):

1. ``before``: the call's *worst-case* cost is reserved atomically in the ledger (see
   :meth:`BudgetStage.worst_case`): the prompt (images, tool and response-format definitions
   included) plus every completion it may return (``n``, ``best_of``, ``candidate_count``...)
   of ``max_tokens`` each (the largest of ``max_tokens``/``max_completion_tokens``/...,
   else the model's ``max_output_tokens`` from LiteLLM's price map, else
   :data:`DEFAULT_MAX_OUTPUT_TOKENS`), for every answer a validation re-ask may add, each at the
   highest rate of the dearest model among the primary and its fallbacks. If spent + this
   reservation would pass a limit, the call is refused at once with :class:`BudgetExceededError`
   and the provider is never called. If only
   the reservations of calls in flight stand in the way, the call waits (up to ``max_wait``
   seconds) for them to settle, since they usually cost less than their worst case, then tries
   again; past ``max_wait`` it is refused. Check and reserve are one transaction (SQLite
   ``BEGIN IMMEDIATE``, Redis Lua script), so threads, processes and hosts sharing a ledger
   cannot overspend together.
2. ``after`` (every answer, also cache hits and partial streams): the reservation is replaced by
   the actual cost of the call (``call.spent``; $0 for a cache hit). Alerts whose threshold the
   period's spend crossed fire, once per period per threshold, across processes.
3. ``on_error``: the reservation is released; attempts that were answered (and paid) before the
   failure still count, as does the streamed part of a stream that broke; a failure before any
   answer costs $0. The trace's ``mlflow_lite.cost_usd`` is the same figure.

Periods are calendar days (and/or months) in ``timezone`` (UTC by default): a call is charged to
the period in which it was reserved. Scopes: one budget for everything (``"global"``), one per
primary model (``"model"``), or one per value of a request tag (``"tag:user"``: each user has the
limit; calls without the tag share the ``"(untagged)"`` bucket).

Models without a known price: by default a budget *refuses* them (:class:`UnpricedModelError`),
because their cost cannot be bounded nor recorded, and a limit that silently lets unbounded
spending through is not a limit. Free local runtimes (ollama, ...) and ``lite/echo`` are priced
at $0, so they are not affected; set a price with ``set_model_price`` or pass
``on_unknown_price="allow"`` to let them through (warned once per model, counted as $0, marked on
the trace).

The ledger fails closed: if it cannot be reached before a call, the call is refused with
:class:`BudgetLedgerError`. Settling after an answer never fails the call (the error is logged).
A call's reservation is a lease of ``reservation_ttl`` seconds (60 by default) that one
background thread per process renews every third of it while the call runs, however long that
is. A process that died stops renewing, so its reservations are ignored (and deleted) within
``reservation_ttl``; a settle that arrives later still records the cost.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.controls.budget.alerts import Alert, fire_crossed
from mlflow_lite_plugin.controls.budget.errors import BudgetExceededError, BudgetLedgerError, UnpricedModelError
from mlflow_lite_plugin.controls.budget.ledger import Ledger, RedisLedger, Reservation, SQLiteLedger, make_ledger
from mlflow_lite_plugin.controls.budget.periods import Period, current_period
from mlflow_lite_plugin.controls.budget.settings import BudgetSettings
from mlflow_lite_plugin.core import deadline
from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.core.model_names import litellm_module
from mlflow_lite_plugin.core.offload import offload
from mlflow_lite_plugin.core.pipeline import STAGE_ORDER, Call, Stage
from mlflow_lite_plugin.core.pricing import usd
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow_lite_plugin.core.model_names import ModelRef
    from mlflow_lite_plugin.core.pipeline import Pipeline
    from mlflow_lite_plugin.core.response import Response

_logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_TOKENS = 4096  # when neither the call nor LiteLLM's price map bounds the output

PERIODS = ("daily", "monthly")
UNTAGGED = "(untagged)"


# -- configuration --


# What to enforce and where the ledger lives: one settings class, its only validator.
Budget = BudgetSettings


# -- the pipeline stage --


def _utc_now() -> datetime:
    return datetime.now(dt_timezone.utc)


# Upper bound of the tokens a re-ask adds besides the answer it quotes and the reply
# instruction: the message's own wording and the fixed text of its errors.
REASK_PROMPT_TOKENS = 512
# Tokens a provider may wrap around each tool/function definition besides its JSON text.
DEFINITION_OVERHEAD_TOKENS = 16

# Parameters that make a provider answer, and bill, several completions (OpenAI n and best_of,
# Gemini candidate_count, Cohere num_generations); the largest given counts.
CHOICE_PARAMS = ("n", "best_of", "candidate_count", "num_generations")
# Parameters that bound each completion's tokens (OpenAI, Anthropic, Gemini, Hugging Face, Ollama).
OUTPUT_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens", "num_predict")
# Parameters whose content the provider adds to the prompt.
DEFINITION_PARAMS = ("tools", "functions", "response_format", "tool_choice")


def _param_values(call: Call, names: Sequence[str]) -> list[tuple[str, Any]]:
    """(name, value) of the given parameters, at the top level and in the dicts LiteLLM
    forwards as they are (``extra_body``, Gemini's ``generation_config``, Ollama's ``options``)."""
    params = call.request.params
    scopes = [params] + [
        params[key] for key in ("extra_body", "generation_config", "generationConfig", "options")
        if isinstance(params.get(key), dict)
    ]
    return [(name, scope[name]) for scope in scopes for name in names if scope.get(name) is not None]


def _count(value: Any) -> int | None:
    """A number >= 1 rounded up, None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
        return None
    try:
        return math.ceil(value)
    except (OverflowError, ValueError):  # infinity
        return None


def _choices(call: Call) -> int:
    """How many completions the provider bills for one attempt (``n=16``: 16)."""
    counts = [1]
    for name, value in _param_values(call, CHOICE_PARAMS):
        count = _count(value)
        if count is None:
            # A budget cannot bound what it cannot read: refuse before the provider is called.
            raise ArgumentError(name, f"must be a whole number of completions >= 1, got {value!r}")
        counts.append(count)
    return max(counts)


def _max_output_tokens(call: Call, model: ModelRef) -> int:
    """The most tokens one completion may have: the largest limit the call gives, else the
    model's output limit."""
    given = [count for _, value in _param_values(call, OUTPUT_PARAMS) if (count := _count(value))]
    return max(given) if given else _model_output_limit(model.name)


def _rate_conditions(call: Call) -> dict[str, Any]:
    """What decides which of a model's conditional rates can apply (``Pricing.highest_price``):
    the service tier asked for, prompt-cache writes (``cache_control`` anywhere in the request)
    and audio (``modalities``/``audio`` parameters or ``input_audio`` parts)."""
    params = call.request.params
    tier = params.get("service_tier")
    text = json.dumps([call.request.messages, params], default=str)
    return {
        "service_tier": tier if isinstance(tier, str) else None,
        "cache_writes": "cache_control" in text,
        "audio": "audio" in params or "input_audio" in text or "audio" in str(params.get("modalities", "")),
    }


def _prompt_tokens(call: Call, model: ModelRef) -> int:
    """Prompt tokens with ``model``'s tokenizer (a fallback's may count more), images included,
    plus the tool, function and response-format definitions the provider adds to the prompt."""
    tokens = call.prompt_tokens if model == call.models[0] else call.pricing.count_tokens(model, call.request.messages)
    for _, value in _param_values(call, DEFINITION_PARAMS):
        if isinstance(value, str):  # tool_choice="auto"
            continue
        if callable(getattr(value, "model_json_schema", None)):  # response_format=<a pydantic model>
            value = value.model_json_schema()
        items = len(value) if isinstance(value, (list, tuple)) else 1
        text = json.dumps(value, default=str)
        tokens += call.pricing.count_tokens(model, text) + DEFINITION_OVERHEAD_TOKENS * items
    return tokens


def _reask_tokens(call: Call, model: ModelRef, out: int) -> int:
    """The most a re-ask adds to the prompt: the quoted answer, the reply instruction (a JSON
    Schema is spelled out in it) and the errors, each of which may quote the answer and the
    schema (up to the validator's listed-error cap for schema errors)."""
    validator = call.request.validator
    if validator is None:
        return 0
    from mlflow_lite_plugin.controls.validation.rules import MAX_SCHEMA_ERRORS, ValidationResult

    instruction = call.pricing.count_tokens(model, validator.repair_prompt(ValidationResult(False, [], [])))
    quoting = MAX_SCHEMA_ERRORS if "schema" in validator.describe() else 1
    return out + instruction + REASK_PROMPT_TOKENS + quoting * (out + instruction)


_output_limits: dict[str, int] = {}


def _model_output_limit(name: str) -> int:
    """``max_output_tokens`` of a model in LiteLLM's (local) price map."""
    if name not in _output_limits:
        limit = None
        try:
            info = litellm_module().get_model_info(model=name)
            limit = info.get("max_output_tokens") or info.get("max_tokens")
        except Exception:
            pass
        known = isinstance(limit, (int, float)) and limit > 0
        _output_limits[name] = int(limit) if known and limit is not None else DEFAULT_MAX_OUTPUT_TOKENS
    return _output_limits[name]


@dataclass
class _Held:
    reservation: Reservation
    scope: str
    periods: list[tuple[Period, float]]  # (period, limit)


class BudgetStage(Stage):
    """Refuses calls that could pass the budget; records what calls cost in a shared ledger.

    ``clock`` returns the current aware datetime (injectable for tests). ``alerts`` are
    :class:`~mlflow_lite_plugin.controls.budget.alerts.Alert` configs, one per threshold.
    """

    name = "budget"
    order = STAGE_ORDER[name]
    settings_type = BudgetSettings

    def __init__(
        self,
        budget: Budget,
        ledger: Ledger | None = None,
        *,
        alerts: Sequence[Alert] = (),
        clock: Callable[[], datetime] | None = None,
    ):
        if not isinstance(budget, Budget):
            raise ArgumentError("budget", f"must be an ml Budget, got {type(budget).__name__}")
        self.budget = budget
        self.ledger: Ledger = ledger if ledger is not None else SQLiteLedger()
        self.alerts: list[Alert] = []
        for alert in alerts:
            self.add_alert(alert)
        self.clock = clock or _utc_now
        self._unpriced_warned: set[str] = set()

    @classmethod
    def from_settings(
        cls,
        settings: BudgetSettings,
        previous: Stage | None,
        *,
        clock: Callable[[], datetime] | None = None,
        **context: Any,
    ) -> BudgetStage:
        """A new budget keeps the alerts of the one it replaces."""
        alerts = previous.alerts if isinstance(previous, BudgetStage) else ()
        ledger = make_ledger(settings.backend, path=settings.path, url=settings.url)
        return cls(settings, ledger, alerts=alerts, clock=clock)

    def describe(self) -> dict[str, Any]:
        """Limits, scope, time zone and alert thresholds; never where the ledger lives (a Redis
        URL can carry a password)."""
        limits = {f"{period}_limit": limit for period, limit in self.budget.limits()}
        return {**limits, "scope": self.budget.scope, "timezone": self.budget.timezone,
                "alerts": [a.threshold for a in self.alerts]}

    def summary(self) -> str:
        """E.g. ``daily=10.0 USD, scope=global``."""
        limits = [f"{period}={limit} USD" for period, limit in self.budget.limits()]
        return ", ".join([*limits, f"scope={self.budget.scope}"])

    # -- configuration --

    def add_alert(self, alert: Alert) -> None:
        """Add an alert (replacing one with the same threshold)."""
        if not isinstance(alert, Alert):
            raise ArgumentError("alert", f"must be an Alert, got {type(alert).__name__}")
        others = [a for a in self.alerts if a.threshold != alert.threshold]
        self.alerts = sorted([*others, alert], key=lambda a: a.threshold)

    def remove_alerts(self) -> None:
        self.alerts = []

    # -- scopes and periods --

    def scope_key(self, call: Call | None = None, *, model: str | None = None, tag: str | None = None) -> str:
        """The ledger scope of a call (or of ``model``/``tag`` value, for status)."""
        scope = self.budget.scope
        if scope == "global":
            return "global"
        if scope == "model":
            name = call.models[0].name if call is not None else model
            if not name:
                raise ArgumentError("model", "this budget is per model: say which model (provider-qualified name)")
            return f"model:{name}"
        tag_name = scope.partition(":")[2]
        value = call.request.tags.get(tag_name) if call is not None else tag
        return f"tag:{tag_name}={value or UNTAGGED}"

    def periods(self, now: datetime | None = None) -> list[tuple[Period, float]]:
        now = now or self.clock()
        zone = self.budget.zone
        return [(current_period(name, now, zone), limit) for name, limit in self.budget.limits()]

    # -- worst case --

    def worst_case(self, call: Call) -> tuple[float, list[str]]:
        """The most this call can cost (USD), and the models among its candidates with no price.

        Each answer (the first, then each re-ask after a failed validation) may come from any
        model of the chain: the bound adds up, answer by answer, the dearest model's bill, at its
        highest rates (``Pricing.highest_price``), for every completion it may return
        (``n``...), each of the most tokens allowed, after a prompt of the messages, images and
        definitions, grown by the re-asks before it. Raises :class:`ArgumentError` for a
        completion count it cannot read."""
        choices = _choices(call)
        bounds: list[tuple[int, int, int, Any]] = []  # (prompt, output, re-ask growth, price)
        unpriced = []
        conditions = _rate_conditions(call)
        for model in call.models:
            if call.pricing.price(model) is None:
                unpriced.append(model.name)
                continue
            out = _max_output_tokens(call, model)
            reask = _reask_tokens(call, model, out) if call.request.max_answers > 1 else 0
            prompt = _prompt_tokens(call, model)
            largest = prompt + (call.request.max_answers - 1) * reask + out  # for long-context tiers
            price = call.pricing.highest_price(model, tokens=largest, **conditions)
            bounds.append((prompt, out, reask, price))
        total = 0.0
        for k in range(call.request.max_answers):
            total += max(
                (price.cost(prompt + k * reask, choices * out) for prompt, out, reask, price in bounds), default=0.0
            )
        return total, unpriced

    # -- hooks --

    def before(self, call: Call) -> Response | None:
        scope, amount, periods = self._request(call)
        buckets = [(scope, p.key, limit) for p, limit in periods]
        try:
            max_wait = deadline.bound(self.budget.max_wait)  # never past the request's deadline
            reservation = self.ledger.reserve_many(buckets, amount, max_wait=max_wait, lease=True)
        except BudgetExceededError as refused:
            raise self._refuse(call, refused, periods) from None
        except Exception as exc:
            raise self._unreachable(call, exc) from exc
        self._hold(call, reservation, scope, periods)
        return None

    # before's asyncio twin, step for step (boilerplate of one shape: only the tokenizers' first
    # load and the ledger call await)
    async def abefore(self, call: Call) -> Response | None:
        await call.pricing.aload_tokenizers(call.models)
        scope, amount, periods = self._request(call)
        buckets = [(scope, p.key, limit) for p, limit in periods]
        try:
            max_wait = deadline.bound(self.budget.max_wait)
            reservation = await self.ledger.areserve_many(buckets, amount, max_wait=max_wait, lease=True)
        except BudgetExceededError as refused:
            raise self._refuse(call, refused, periods) from None
        except Exception as exc:
            raise self._unreachable(call, exc) from exc
        self._hold(call, reservation, scope, periods)
        return None

    def _request(self, call: Call) -> tuple[str, float, list[tuple[Period, float]]]:
        """The call's scope, worst-case cost and (period, limit) buckets, longest period first:
        when several limits are reached, the refusal names the one that resets last (waiting for
        the daily reset does not help if the month is spent)."""
        scope = self.scope_key(call)
        amount, unpriced = self.worst_case(call)
        if unpriced:
            self._unpriced(call, scope, unpriced)
        return scope, amount, sorted(self.periods(), key=lambda item: item[0].end, reverse=True)

    def _hold(self, call: Call, reservation: Reservation, scope: str, periods: list[tuple[Period, float]]) -> None:
        call.state[self.name] = _Held(reservation, scope, periods)
        call.span.set_attributes(
            {schema.BUDGET_SCOPE: scope, schema.BUDGET_RESERVED_USD: reservation.amount}
        )
        if reservation.waited:
            call.span.add_event("budget_wait", {"seconds": round(reservation.waited, 4)})
            call.span.set_attributes({schema.BUDGET_WAIT_S: round(reservation.waited, 4)})

    @staticmethod
    def _unreachable(call: Call, exc: Exception) -> BudgetLedgerError:
        call.span.add_event("budget_unavailable", {"error": repr(exc)})
        return BudgetLedgerError(f"The budget ledger could not be reached, so the call was refused: {exc}")

    # call.spent: the answered attempts, and on an error the text a broken stream delivered (the
    # pipeline adds it before these hooks run); the trace records the same figure.

    def after(self, call: Call, response: Response) -> None:
        self._settle(call)

    async def aafter(self, call: Call, response: Response) -> None:
        await self._asettle(call)

    def on_error(self, call: Call, error: BaseException) -> None:
        self._settle(call)

    async def aon_error(self, call: Call, error: BaseException) -> None:
        await self._asettle(call)

    # -- internals --

    def _unpriced(self, call: Call, scope: str, models: list[str]) -> None:
        if self.budget.on_unknown_price == "refuse":
            period, limit = self.periods()[0]
            error = UnpricedModelError(
                f"Budget refused the call: no known price for {', '.join(map(repr, models))}, so its cost "
                f"cannot be bounded by the {period.name} budget of {usd(limit)}. Set one with "
                f"set_model_price({models[0]!r}, input_per_million=..., output_per_million=...) or set the "
                f"budget with on_unknown_price='allow'.",
                limit=limit,
                scope=scope,
                period=period.name,
                period_key=period.key,
                resets_at=period.end,
            )
            call.span.add_event("budget_refused", {"reason": "unknown_price", "models": ", ".join(models)})
            call.span.set_attributes({schema.BUDGET_REFUSED: True})
            raise error
        for name in models:
            if name not in self._unpriced_warned:
                self._unpriced_warned.add(name)
                _logger.warning(
                    "Budget: no known price for model %r; its calls are allowed and counted as $0. "
                    "Set a price with set_model_price(...) to enforce the budget on it.",
                    name,
                )
        call.span.add_event("budget_unpriced_model", {"models": ", ".join(models), "counted_usd": 0.0})

    def _refuse(
        self, call: Call, refused: BudgetExceededError, periods: list[tuple[Period, float]]
    ) -> BudgetExceededError:
        period = next((p for p, _ in periods if p.key == refused.period_key), periods[0][0])
        error = refused.refined(period=period.name, period_key=period.key, resets_at=period.end)
        call.span.add_event(
            "budget_exceeded",
            {
                "scope": error.scope,
                "period": period.name,
                "spent_usd": error.spent,
                "reserved_usd": error.reserved,
                "limit_usd": error.limit,
                "requested_usd": error.requested,
                "resets_at": period.end.isoformat(),
                "waited_s": round(error.waited, 4),
                "message": str(error),
            },
        )
        call.span.set_attributes({schema.BUDGET_REFUSED: True, schema.BUDGET_SCOPE: error.scope})
        self._fire(call, error.scope, period, error.limit, error.spent, refused=True)
        return error

    def _settle(self, call: Call) -> None:
        held: _Held | None = call.state.pop(self.name, None)
        if held is None:  # refused, or already settled (a closed stream)
            return
        try:
            totals = self.ledger.settle(held.reservation, max(0.0, call.spent))
        except Exception as exc:  # the call is answered (and paid): never fail it here
            self._settle_failed(call, exc)
            return
        self._settled(call, held, totals)

    async def _asettle(self, call: Call) -> None:
        held: _Held | None = call.state.pop(self.name, None)
        if held is None:
            return
        try:
            totals = await self.ledger.asettle(held.reservation, max(0.0, call.spent))
        except Exception as exc:
            self._settle_failed(call, exc)
            return
        if self.alerts:  # an alert that fires writes its mark to the ledger: off the event loop
            await offload(self._settled, call, held, totals)
        else:
            self._settled(call, held, totals)

    @staticmethod
    def _settle_failed(call: Call, exc: Exception) -> None:
        _logger.error("Budget: could not record $%s spent by a call: %s", call.spent, exc)
        call.span.add_event("budget_settle_failed", {"error": repr(exc), "spent_usd": call.spent})

    def _settled(self, call: Call, held: _Held, totals: list[float]) -> None:
        """Put the new spend on the trace; fire the alerts it crossed."""
        actual = max(0.0, call.spent)
        attributes: dict[str, Any] = {schema.BUDGET_CHARGED_USD: actual}
        for (period, limit), total in zip(held.periods, totals, strict=True):
            attributes[schema.budget_spent_attribute(period.name)] = total
            attributes[schema.budget_limit_attribute(period.name)] = limit
            self._fire(call, held.scope, period, limit, total)
        call.span.set_attributes(attributes)

    def _fire(self, call: Call, scope: str, period: Period, limit: float, spent: float, refused: bool = False) -> None:
        if not self.alerts:
            return
        try:
            fire_crossed(
                self.alerts,
                self.ledger,
                scope=scope,
                period=period,
                limit=limit,
                spent=spent,
                span=call.span,
                refused=refused,
            )
        except Exception as exc:  # alerts never fail or block a call
            _logger.error("Budget alert check failed: %s", exc)

    # -- status --

    def status(
        self, *, model: str | None = None, tag: str | None = None, now: datetime | None = None
    ) -> dict[str, Any]:
        """Spend of the current period(s) for a scope: the binding period (least remaining) at the
        top level, every configured period under ``"periods"``. ``remaining`` = limit - spent -
        reserved (reserved: calls in flight), never below 0. Times are ISO 8601 in the budget's
        time zone."""
        scope = self.scope_key(model=model, tag=tag)
        periods: dict[str, dict[str, Any]] = {}
        for period, limit in self.periods(now):
            spent = self.ledger.spent(scope, period.key)
            reserved = self.ledger.reserved(scope, period.key)
            periods[period.name] = {
                "spent": spent,
                "reserved": reserved,
                "remaining": max(0.0, limit - spent - reserved),
                "limit": limit,
                "period": period.name,
                "period_start": period.start.isoformat(),
                "resets_at": period.end.isoformat(),
            }
        binding = min(periods.values(), key=lambda p: p["remaining"])
        return {
            **binding,
            "scope": scope,
            "timezone": self.budget.timezone,
            "alerts": [a.threshold for a in self.alerts],
            "periods": periods,
        }


# -- helpers for Client wiring --


def set_budget(
    pipeline: Pipeline, *args: Any, clock: Callable[[], datetime] | None = None, **settings: Any
) -> BudgetStage | None:
    """Install (or replace, keeping its alerts; or remove with ``enabled=False``) the budget stage;
    ``args``/``settings`` are :class:`BudgetSettings`'."""
    stage = pipeline.install(BudgetSettings(*args, **settings), clock=clock)
    return stage if isinstance(stage, BudgetStage) else None


def budget_stage(pipeline: Pipeline) -> BudgetStage:
    stage = pipeline.get(BudgetStage.name)
    if not isinstance(stage, BudgetStage):
        raise ArgumentError("budget", "no budget is set: call set_budget(daily_limit=...) first")
    return stage


def set_alert(pipeline: Pipeline, threshold: float = 0.8, **options: Any) -> Alert:
    """Add an alert (replacing one at the same threshold) to the pipeline's budget."""
    alert = Alert(threshold, **options)
    budget_stage(pipeline).add_alert(alert)
    return alert


def budget_status(pipeline: Pipeline, *, model: str | None = None, tag: str | None = None) -> dict[str, Any]:
    return budget_stage(pipeline).status(model=model, tag=tag)


__all__ = [
    "Budget",
    "BudgetExceededError",
    "BudgetLedgerError",
    "BudgetStage",
    "Period",
    "RedisLedger",
    "Reservation",
    "SQLiteLedger",
    "UnpricedModelError",
    "budget_status",
    "current_period",
    "make_ledger",
    "set_alert",
    "set_budget",
]
