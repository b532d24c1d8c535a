"""The ordered stages every call goes through.

    few-shot -> exact cache -> semantic cache -> budget reserve -> rate limit
      -> provider -> validation/metrics -> cache store -> budget settle -> trace

(the order of every built-in stage, with its reason, is one table: :data:`STAGE_ORDER`).

Token and cost estimates are computed lazily by the stages that need them (``Call.prompt_tokens``).
The caches come first: a hit costs nothing and never reaches the provider, so it is neither
refused by an exhausted budget nor queued by a rate limit.

A stage is an object with ``order`` (where it sits) and any of these hooks:

- ``before(call)``: runs in order before the provider. Returning a :class:`Response` answers the
  call without the provider (a cache hit); raising refuses it (a budget). ``abefore`` is the
  asyncio twin, for stages that wait (rate limits); by default it calls ``before``.
- ``after(call, response)``: runs on every answer (cached ones, and the partial answer of a
  stream closed early, with ``finish_reason="cancelled"``), in *reverse* order
  (like an onion): the stage that looked first stores last, so validation sees an answer before
  the caches store it, and the ledger settles after both.
- ``on_error(call, error)``: runs when the call fails, to release what ``before`` took.
  ``call.spent`` then holds what the failed call was billed: answered attempts, and the text
  a broken stream delivered (a failure before any answer costs $0); the trace's
  ``mlflow_lite.cost_usd`` says the same.
- ``reask(call, response)``: after each provider answer; returning True asks the provider again
  (the stage has added follow-up messages to ``call.followups``): validation's ``on_fail="retry"``.
- ``on_chunk(call, chunk)``: each streamed chunk, before the caller gets it; raising
  :class:`StopStream` ends the stream there (streaming validation).
- ``reject(call, response)``: once the answer is complete and paid for, may return an error to
  raise instead of returning it (validation's ``on_fail="raise"``).

A stage also describes itself: ``describe()`` (a small JSON-able dict of its settings: run tags,
the UI, ``repr``), ``summary()`` (that dict on one line, for a run tag) and ``status()`` (its live
state: budget spend, cache hits...; None when it has none). Every built-in control is one frozen
:class:`Settings` dataclass (its only validator) that builds its stage: ``Pipeline.install(settings)``
is how a client turns a control on, replaces it, or (``enabled=False``) removes it.

New stages plug in with ``Pipeline.add(stage)`` without touching the others, and are described
like the built-ins. The provider call itself (retries, fallbacks, one span per attempt) is the
terminal, in ``providers.py``.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import logging
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from mlflow_lite_plugin.core.attachments import Image, redact
from mlflow_lite_plugin.core.errors import ArgumentError, TracedError, did_you_mean
from mlflow_lite_plugin.core.request import Request
from mlflow_lite_plugin.core.response import Response, usage_dict
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow_lite_plugin.core.model_names import ModelRef
    from mlflow_lite_plugin.core.pricing import Pricing
    from mlflow_lite_plugin.core.providers import Provider
    from mlflow_lite_plugin.tracing.tracer import NullSpan, Span

_logger = logging.getLogger(__name__)

# Where each built-in stage sits: ``before`` hooks run in this order, ``after`` hooks in reverse.
STAGE_ORDER: dict[str, int] = {
    "few_shot": 250,  # before the caches: they must key on the prompt the provider really sees
    "exact_cache": 300,  # first lookup: a hit costs nothing, so it is never refused nor queued
    "semantic_cache": 400,  # after the exact cache missed: an embedding costs more than a key
    "budget": 420,  # after the caches (a hit is free even when the budget is spent), before rate limits
    "rate_limit": 450,  # right before the provider: only calls that will be sent wait for a slot
    "validation": 600,  # its ``after`` runs before the cache stores, so an invalid answer is never cached
    "metrics": 610,  # scores the answer after validation has judged it (``response.validation`` is set)
}
DEFAULT_ORDER = 500  # a third-party stage that names no order: after the controls, before validation


class Stage:
    """Base class of a pipeline stage: override the hooks you need, and ``describe()`` /
    ``status()`` so run tags and the UI show it."""

    name = "stage"
    order = DEFAULT_ORDER
    # The run tag ``mlflow_lite.<group>`` this stage's summary goes to; stages of one control share
    # it (the exact and semantic caches: "cache"). None: the stage's name.
    group: str | None = None
    # The Settings class this stage is built from (``from_settings``), for ``Pipeline.install``.
    settings_type: ClassVar[type[Settings] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("settings_type") is not None:
            _BUILDERS[cls.settings_type] = cls  # type: ignore[index]

    @classmethod
    def from_settings(cls, settings: Any, previous: Stage | None, **context: Any) -> Stage | None:
        """The stage ``settings`` describe (None: none is needed). ``previous`` is the stage of the
        same name installed now, whose state (alerts, schedules) a rebuild may keep; ``context``
        holds what the client shares between stages (the cache statistics)."""
        raise NotImplementedError

    def before(self, call: Call) -> Response | None:
        return None

    async def abefore(self, call: Call) -> Response | None:
        return self.before(call)

    def after(self, call: Call, response: Response) -> None:
        pass

    async def aafter(self, call: Call, response: Response) -> None:
        """``after`` for asyncio. A stage whose ``after`` waits on I/O (a store, a ledger)
        overrides it, so the event loop never blocks; the default runs ``after`` in place."""
        self.after(call, response)

    def on_error(self, call: Call, error: BaseException) -> None:
        pass

    async def aon_error(self, call: Call, error: BaseException) -> None:
        """``on_error`` for asyncio (see :meth:`aafter`)."""
        self.on_error(call, error)

    def reask(self, call: Call, response: Response) -> bool:
        return False

    def on_chunk(self, call: Call, chunk: str) -> None:
        pass

    def reject(self, call: Call, response: Response) -> BaseException | None:
        return None

    # -- self-description --

    def describe(self) -> dict[str, Any]:
        """This stage's settings as a small JSON-able dict (run tags, the UI, ``repr``); empty:
        nothing to show."""
        return {}

    def summary(self) -> str:
        """``describe()`` on one line, for a run tag: ``key=value, ...``."""
        return ", ".join(f"{key}={_short(value)}" for key, value in self.describe().items())

    def status(self) -> dict[str, Any] | None:
        """Live state (spend, hits, queue...) as a JSON-able dict; None when the stage has none."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.summary()})"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


SettingsT = TypeVar("SettingsT", bound="Settings")


@dataclass(frozen=True)
class Settings:
    """Base of a control's settings: a frozen dataclass whose ``__post_init__`` is the control's
    only validator (raising :class:`ArgumentError`). ``to_dict()`` holds the fields that differ
    from their defaults (what a flavor model saves); ``from_dict`` rebuilds the settings, naming a
    misspelt key. The stage class naming it as its ``settings_type`` builds the stage; a field
    ``enabled=False`` removes that stage instead (unless ``remove_when_disabled`` is False: a
    stage that keeps what it learned while off)."""

    stage: ClassVar[str]  # the name of the stage these settings build
    remove_when_disabled: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.init and getattr(self, f.name) != _default(f)
        }

    @classmethod
    def from_dict(cls: type[SettingsT], data: Mapping[str, Any], *, argument: str | None = None) -> SettingsT:
        """``cls(**data)``, with an unknown key refused by name (``argument``: where the dict came
        from, for the error)."""
        where = argument or cls.stage
        if not isinstance(data, Mapping):
            raise ArgumentError(where, f"must be a dict of settings, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        for key in data:
            if key not in known:
                hint = did_you_mean(key, known)
                raise ArgumentError(f"{where}.{key}", f"unknown setting.{hint} Known: {', '.join(known)}")
        return cls(**data)


_BUILDERS: dict[type[Settings], type[Stage]] = {}  # filled by Stage.__init_subclass__


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


class StopStream(Exception):
    """Raised by ``Stage.on_chunk`` to end a stream at this chunk; ``attributes`` go on the trace."""

    def __init__(self, reason: str, attributes: dict[str, Any] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.attributes = attributes or {}


@dataclass
class Call:
    """One call in flight: the request, its resolved models, its root span, scratch for stages."""

    request: Request
    models: list[ModelRef]
    span: Span | NullSpan
    pricing: Pricing
    started: float = field(default_factory=time.perf_counter)
    state: dict[str, Any] = field(default_factory=dict)  # per-stage scratch, keyed by stage name
    parts: list[str] = field(default_factory=list)  # streamed text so far
    first_token_at: float | None = None
    attempt_costs: list[float | None] = field(default_factory=list)  # USD of each answered attempt
    followups: list[dict[str, Any]] = field(default_factory=list)  # messages added to re-ask the model
    reasks: int = 0

    @property
    def messages(self) -> list[dict[str, Any]]:
        """What the provider is sent: the request's messages, then any re-ask follow-ups."""
        return self.request.messages + self.followups if self.followups else self.request.messages

    @functools.cached_property
    def prompt_tokens(self) -> int:
        """Estimated prompt tokens (computed on first use: only stages that need it pay for it)."""
        return self.pricing.count_tokens(self.models[0], self.request.messages)

    @property
    def spent(self) -> float:
        """USD of every answered attempt of this call so far (unknown prices count as 0)."""
        return sum(cost or 0.0 for cost in self.attempt_costs)


def replay_chunks(text: str) -> Iterator[str]:
    """Stream a finished answer (a cache hit) as word chunks."""
    words = text.split(" ")
    for i, word in enumerate(words):
        yield word if i == len(words) - 1 else word + " "


class Pipeline:
    def __init__(self, provider: Provider, stages: list[Stage] | None = None):
        self.provider = provider
        self.stages: list[Stage] = []
        for stage in stages or []:
            self.add(stage)

    def add(self, stage: Stage) -> None:
        """Insert a stage at its ``order`` (replacing a stage of the same name)."""
        self.remove(stage.name)
        bisect.insort(self.stages, stage, key=lambda s: s.order)

    def remove(self, name: str) -> None:
        self.stages = [s for s in self.stages if s.name != name]

    def get(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def install(self, settings: Settings, **context: Any) -> Stage | None:
        """Turn a control on (or replace it) with the stage ``settings`` build, or remove it
        (``enabled=False``); returns the installed stage."""
        if not getattr(settings, "enabled", True) and settings.remove_when_disabled:
            self.remove(settings.stage)
            return None
        builder = _BUILDERS.get(type(settings))
        if builder is None:
            raise ArgumentError("settings", f"no stage is built from {type(settings).__name__} (none names it)")
        stage = builder.from_settings(settings, self.get(settings.stage), **context)
        if stage is None:
            self.remove(settings.stage)
        else:
            self.add(stage)
        return stage

    def described(self) -> list[dict[str, Any]]:
        """Every stage that describes itself or has a status, in order: ``name``, ``group``,
        ``order``, ``settings`` (``describe()``), ``summary`` and ``status``."""
        rows = []
        for stage in self.stages:
            settings = stage.describe()
            try:
                status = stage.status()
            except Exception as exc:  # a status that needs more (a per-model budget's model) or broke
                _logger.debug("no status for stage %r: %s", stage.name, exc)
                status = None
            if settings or status is not None:
                rows.append(
                    {
                        "name": stage.name, "group": stage.group or stage.name, "order": stage.order,
                        "settings": settings, "summary": stage.summary(), "status": status,
                    }
                )
        return rows

    # -- the three ways to run a call --

    def run(self, call: Call) -> Response:
        try:
            response = self._before(call) or self._answer(call)
            self._after(call, response)
        except BaseException as error:
            self._fail(call, error)
            raise
        return self._finish(call, response)

    async def arun(self, call: Call) -> Response:
        try:
            response = None
            for stage in self.stages:
                response = await stage.abefore(call)
                if response is not None:
                    break
            response = response or await self._aanswer(call)
            for stage in reversed(self.stages):
                await stage.aafter(call, response)
        except BaseException as error:
            call.state["failed"] = error
            for stage in self.stages:
                try:
                    await stage.aon_error(call, error)
                except Exception as cleanup_error:
                    self._cleanup_failed(call, stage, cleanup_error)
            self._failed(call, error)
            raise
        return self._finish(call, response)

    def stream(self, call: Call) -> Generator[str, None, Response]:
        relaying = False  # the provider is streaming: text it delivered is billed if it breaks
        try:
            response = self._before(call)
            if response is not None:
                call.state["replayed"] = True  # a cache hit: its text costs nothing
                source = self._replay(call, response)
            else:
                source = self.provider.stream(call)
            relaying = True
            response = yield from self._relay(call, source)
            relaying = False
            if response is not None:
                self._after(call, response)
        except GeneratorExit:
            self.close_stream(call)
            raise
        except BaseException as error:
            if relaying:
                call.attempt_costs.append(self._streamed(call)[1])
            self._fail(call, error)
            raise
        if response is None:  # a stage stopped the stream
            partial = self.close_stream(call)
            assert partial is not None  # None only for a failed stream, which raised above
            if "rejection" in call.state:
                raise call.state["rejection"]
            return partial
        return self._finish(call, response)

    # -- shared steps --

    def _answer(self, call: Call) -> Response:
        response = self.provider.complete(call)
        while self._reask(call, response):
            response = self.provider.complete(call)
        return response

    async def _aanswer(self, call: Call) -> Response:
        response = await self.provider.acomplete(call)
        while self._reask(call, response):
            response = await self.provider.acomplete(call)
        return response

    def _reask(self, call: Call, response: Response) -> bool:
        for stage in self.stages:
            if stage.reask(call, response):
                call.reasks += 1
                return True
        return False

    def _replay(self, call: Call, response: Response) -> Generator[str, None, Response]:
        """A cache hit, streamed as word chunks."""
        for chunk in replay_chunks(response.text):
            if call.first_token_at is None:
                call.first_token_at = time.perf_counter()
            call.parts.append(chunk)
            yield chunk
        return response

    def _relay(self, call: Call, source: Generator[str, None, Response]) -> Generator[str, None, Response | None]:
        """Pass chunks through every stage's ``on_chunk``; None when a stage stopped the stream."""
        while True:
            try:
                chunk = next(source)
            except StopIteration as done:
                return done.value
            try:
                for stage in self.stages:
                    stage.on_chunk(call, chunk)
            except StopStream as stop:
                source.close()  # closes the provider's connection, ends its span
                call.span.add_event("stream_stopped", {"reason": stop.reason, **stop.attributes})
                call.span.set_attributes(stop.attributes)
                return None
            yield chunk

    def _before(self, call: Call) -> Response | None:
        for stage in self.stages:
            response = stage.before(call)
            if response is not None:
                return response
        return None

    def _after(self, call: Call, response: Response) -> None:
        for stage in reversed(self.stages):
            stage.after(call, response)

    def _fail(self, call: Call, error: BaseException) -> None:
        call.state["failed"] = error  # a stream closed after this has nothing left to record
        for stage in self.stages:
            try:
                stage.on_error(call, error)
            except Exception as cleanup_error:
                self._cleanup_failed(call, stage, cleanup_error)
        self._failed(call, error)

    @staticmethod
    def _cleanup_failed(call: Call, stage: Stage, cleanup_error: Exception) -> None:
        """A cleanup bug must not hide the real error: it goes on the trace."""
        call.span.add_event("stage_error", {"stage": stage.name, "error": repr(cleanup_error)})

    def _failed(self, call: Call, error: BaseException) -> None:
        """Record ``error`` (after every stage's ``on_error``) and end the trace."""
        billed = _billed(call)
        if isinstance(error, TracedError):
            error._trace = call.span.trace_ref
            error.cost = billed
        call.span.set_attributes({schema.ERROR: f"{type(error).__name__}: {error}", schema.COST_USD: billed})
        call.span.end(error=error)

    def _finish(self, call: Call, response: Response, stopped_early: bool = False) -> Response:
        """Close the trace; raise instead of returning if a stage rejects the (paid) answer."""
        response.latency = time.perf_counter() - call.started
        if call.first_token_at is not None:
            response.time_to_first_token = call.first_token_at - call.started
        response._trace = call.span.trace_ref
        call.span.set_attributes(
            {
                schema.MODEL: response.model,
                schema.PROVIDER: response.provider,
                schema.PROMPT_TOKENS: response.prompt_tokens,
                schema.COMPLETION_TOKENS: response.completion_tokens,
                schema.TOTAL_TOKENS: response.total_tokens,
                schema.COST_USD: response.cost,
                schema.LATENCY_S: round(response.latency, 6),
                schema.TIME_TO_FIRST_TOKEN_S: response.time_to_first_token,
                schema.CACHED: response.cached or "none",
                schema.STOPPED_EARLY: stopped_early,
            }
        )
        rejection = next((e for e in (s.reject(call, response) for s in self.stages) if e is not None), None)
        if rejection is not None:
            if isinstance(rejection, TracedError):
                rejection._trace = call.span.trace_ref
                rejection.cost = response.cost  # the rejected answer was paid for
            call.span.set_attributes({schema.ERROR: f"{type(rejection).__name__}: {rejection}"})
        call.span.end(outputs=chat_outputs(response), error=rejection)
        if rejection is not None:
            raise rejection
        return response

    def close_stream(self, call: Call) -> Response | None:
        """Finish the trace of a stream stopped early (once): by the caller, or by a stage.
        Returns what it got; a rejection is kept in ``call.state["rejection"]``, never raised.
        None for a stream that failed: its trace is finished and its cost recorded already."""
        if "failed" in call.state:
            return None
        if "partial" not in call.state:
            partial = call.state["partial"] = self._partial_response(call)
            call.attempt_costs.append(partial.cost)
            try:
                self._after(call, partial)  # ledgers settle what was streamed; caches skip it
            except Exception as error:  # closing a stream must not raise
                call.span.add_event("stage_error", {"error": repr(error)})
            try:
                self._finish(call, partial, stopped_early=True)
            except Exception as rejection:
                call.state["rejection"] = rejection
        return call.state["partial"]

    @staticmethod
    def _streamed(call: Call) -> tuple[dict[str, int], float | None]:
        """Usage and USD of the text streamed so far (counted locally: the provider sends its
        usage only at the end). A stream that delivered no text, or replayed a cache hit, was
        billed nothing."""
        if not call.parts or "replayed" in call.state:
            return usage_dict(0, 0), 0.0
        model = call.state.get("answering_model", call.models[0])
        completion_tokens = call.pricing.count_tokens(model, "".join(call.parts))
        cost = call.pricing.cost(model, call.prompt_tokens, completion_tokens)
        return usage_dict(call.prompt_tokens, completion_tokens), cost

    def _partial_response(self, call: Call) -> Response:
        """The text so far, with tokens and cost counted locally."""
        model = call.state.get("answering_model", call.models[0])
        usage, cost = self._streamed(call)
        return Response(
            text="".join(call.parts),
            model=model.name,
            usage=usage,
            cost=cost,
            latency=0.0,
            finish_reason="cancelled",
            provider=model.provider,
            requested_model=call.request.model,
        )


def _billed(call: Call) -> float | None:
    """What a call was billed (``call.spent``), None if an answered attempt has no known price."""
    return None if any(cost is None for cost in call.attempt_costs) else call.spent


def chat_inputs(messages: list[dict[str, Any]], model: str, images: Sequence[Image] = ()) -> dict[str, Any]:
    """Span inputs in OpenAI chat format, which MLflow's UI renders as a conversation; images are
    recorded as references (name, size, hash), not their data."""
    return {"model": model, "messages": redact(messages, images)}


def chat_outputs(response: Response) -> dict[str, Any]:
    return {
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.text},
                "finish_reason": response.finish_reason,
            }
        ],
        "usage": response.usage,
    }
