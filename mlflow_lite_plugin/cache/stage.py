"""The cache stages of the pipeline: lookups before the provider, stores after validation.

Each cache is a control: :class:`CacheSettings` (``set_cache``'s keywords) builds the
:class:`ExactCacheStage`, :class:`SemanticCacheSettings` (``set_semantic_cache``'s) the
:class:`SemanticCacheStage`. The semantic cache's own settings (threshold, ttl, model...) live in
its :class:`~mlflow_lite_plugin.cache.semantic.SemanticCache` only; the stage adds the call rules.
"""

from __future__ import annotations

import functools
import logging
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.cache.backends import BackendSkipped, CacheBackend, RedisBackend, make_backend
from mlflow_lite_plugin.cache.keys import exact_key, scope_key
from mlflow_lite_plugin.cache.singleflight import Lease, SingleFlight
from mlflow_lite_plugin.cache.stats import CacheStats
from mlflow_lite_plugin.controls.validation.stage import check_answer
from mlflow_lite_plugin.core import offload
from mlflow_lite_plugin.core.attachments import has_images
from mlflow_lite_plugin.core.errors import ArgumentError, check_number
from mlflow_lite_plugin.core.pipeline import STAGE_ORDER, Call, Settings, Stage
from mlflow_lite_plugin.core.response import Response, usage_dict
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow_lite_plugin.cache.semantic import Probe, SemanticCache

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSettings(Settings):
    """The exact cache (``set_cache``'s keywords): ``ttl`` seconds (None: no expiry), the
    ``backend`` ("memory", "sqlite" at ``path``, "redis" at ``url``), LRU-bounded by
    ``max_entries``; calls above ``max_temperature`` bypass it (None: every temperature)."""

    stage = "exact_cache"
    enabled: bool = True
    ttl: float | None = None
    backend: str = "memory"
    url: str | None = None
    path: str | None = None
    max_entries: int = 10_000
    max_temperature: float | None = None

    def __post_init__(self) -> None:
        _check_rules(self.ttl, self.max_entries, self.max_temperature)
        if self.path is not None:  # a PathLike is kept as text: the settings are saved as YAML
            object.__setattr__(self, "path", str(self.path))


@dataclass(frozen=True)
class SemanticCacheSettings(Settings):
    """The semantic cache (``set_semantic_cache``'s keywords, but ``cache=``): ``threshold`` (None:
    the tuned default), embedding ``model``, ``ttl``, ``max_entries``, ``verify`` and
    ``max_query_chars`` (None: the default) and ``encoder`` (what runs the model: "auto", "torch",
    "onnx") make its :class:`SemanticCache`; ``max_temperature`` is the stage's rule, as for the
    exact cache."""

    stage = "semantic_cache"
    enabled: bool = True
    threshold: float | None = None
    model: str | None = None
    ttl: float | None = None
    max_entries: int = 100_000
    max_temperature: float | None = None
    verify: bool = True
    max_query_chars: int | None = None
    encoder: str = "auto"

    def __post_init__(self) -> None:
        _check_rules(self.ttl, self.max_entries, self.max_temperature)
        from mlflow_lite_plugin.cache import encoders  # numpy: not at package import

        missing = encoders.unavailable(encoders.check_encoder(self.encoder))
        if missing is not None:  # cheap to know now (installed packages), not at the first call
            raise ArgumentError("encoder", missing)
        threshold = self.threshold
        if threshold is not None and not (
            isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold <= 1
        ):
            raise ArgumentError("threshold", f"must be a cosine similarity in (0, 1], got {threshold!r}")
        chars = self.max_query_chars
        if chars is not None and (not isinstance(chars, int) or isinstance(chars, bool) or chars < 1):
            raise ArgumentError("max_query_chars", f"must be a positive number of characters, got {chars!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise ArgumentError("model", f"must be a sentence-transformers model name or path, got {self.model!r}")
        if not isinstance(self.verify, bool):
            raise ArgumentError("verify", f"must be True or False, got {self.verify!r}")

    def cache_options(self) -> dict[str, Any]:
        """The keywords of the :class:`SemanticCache` these settings make, or override in a saved
        one (``SemanticCache.load``): those given, the cache's defaults being the same."""
        return {k: v for k, v in self.to_dict().items() if k not in ("enabled", "max_temperature")}


def _check_rules(ttl: Any, max_entries: Any, max_temperature: Any) -> None:
    """The rules both caches share."""
    check_number("ttl", ttl, unit="seconds")
    if not isinstance(max_entries, int) or isinstance(max_entries, bool):
        raise ArgumentError("max_entries", f"must be a positive int, got {max_entries!r}")
    check_number("max_entries", max_entries)
    check_number("max_temperature", max_temperature, allow_zero=True)


def to_entry(response: Response) -> dict[str, Any]:
    """What a cache keeps of an answer (JSON-safe)."""
    return {
        "text": response.text,
        "model": response.model,
        "provider": response.provider,
        "usage": response.usage,
        "cost": response.cost,
        "finish_reason": response.finish_reason,
        "created_at": time.time(),
    }


def from_entry(entry: dict[str, Any], kind: str, call: Call) -> Response:
    """A cache hit: no provider call, so no tokens and no cost."""
    return Response(
        text=entry["text"],
        model=entry.get("model") or call.models[0].name,
        usage=usage_dict(0, 0),
        cost=0.0,
        latency=0.0,
        finish_reason=entry.get("finish_reason"),
        cached=kind,
        provider=entry.get("provider"),
        requested_model=call.request.model,
    )


def storable(response: Response) -> bool:
    """Only complete, valid provider answers are cached: never errors, partial streams or
    answers that failed validation."""
    validation = getattr(response, "validation", None)
    return (
        response.cached is None
        and response.finish_reason != "cancelled"
        and (validation is None or bool(getattr(validation, "passed", True)))
    )


class CacheStage(Stage):
    """Shared rules of the exact and semantic caches: which calls may use a cache, hit accounting."""

    kind = "cache"
    group = "cache"  # both caches share the run tag ``mlflow_lite.cache``

    def __init__(self, *, max_temperature: float | None, stats: CacheStats):
        self.max_temperature = max_temperature
        self.stats = stats

    def rules(self) -> dict[str, Any]:
        """What ``describe()`` shows of this cache besides its kind (None values left out)."""
        return {}

    def describe(self) -> dict[str, Any]:
        described = {"kind": self.kind, **self.rules(), "max_temperature": self.max_temperature}
        return {k: v for k, v in described.items() if v is not None}

    def summary(self) -> str:
        """E.g. ``exact(memory, ttl=3600)``: backend URLs and paths are left out (a Redis URL can
        carry a password)."""
        described = self.describe()
        kind = described.pop("kind")
        parts = [str(described.pop("backend"))] if "backend" in described else []
        parts += [f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in described.items()]
        return f"{kind}({', '.join(parts)})"

    def status(self) -> dict[str, Any]:
        """Hits, misses, hit rate and cost saved by this cache in this process."""
        return self.stats.snapshot()["by_kind"].get(self.kind, _NO_LOOKUPS)

    def applies(self, call: Call) -> bool:
        if not call.request.use_cache:
            return False
        temperature = call.request.params.get("temperature")
        if self.max_temperature is None or temperature is None:
            return True
        # A temperature that is no number (only provider_params lets one through) cannot be held
        # to the policy: such a call bypasses the cache, and the provider answers for it.
        number = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
        return number and temperature <= self.max_temperature

    def usable(self, call: Call, entry: dict[str, Any]) -> bool:
        """A cached answer must also pass this call's validation rules (they are not in the key)."""
        if call.request.validator is None:
            return True
        result = call.state["cached_validation"] = check_answer(call, entry["text"], call.models[0])
        if not result.passed:
            call.span.add_event("cache_entry_invalid", {"kind": self.kind, "errors": result.errors})
        return result.passed

    def hit(self, call: Call, entry: dict[str, Any], **details: Any) -> Response:
        saved = entry.get("cost")
        self.stats.lookup(self.kind, True, saved)
        call.span.add_event("cache_hit", {"kind": self.kind, "saved_cost_usd": saved, **details})
        call.span.set_attributes({schema.COST_SAVED_USD: saved})
        response = from_entry(entry, self.kind, call)
        response.validation = call.state.pop("cached_validation", None)
        return response

    def miss(self, call: Call) -> None:
        self.stats.lookup(self.kind, False)

    def after(self, call: Call, response: Response) -> None:
        if self.applies(call):
            self.stats.answered(call, response)
            if storable(response):
                self.store(call, response)

    async def aafter(self, call: Call, response: Response) -> None:
        if self.applies(call):
            self.stats.answered(call, response)
            if storable(response):
                await self.astore(call, response)

    def store(self, call: Call, response: Response) -> None:
        raise NotImplementedError

    async def astore(self, call: Call, response: Response) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        """Delete every cached answer."""
        raise NotImplementedError

    def remember(self, call: Call, response: Response) -> None:
        """Store ``response`` as the answer to ``call`` without a lookup (warming the cache)."""
        raise NotImplementedError

    def guarded(self, action: str, fn: Any, *args: Any, call: Call | None = None) -> Any:
        """Run a backend operation; an outage is logged and counts as a miss, never a failed call.
        A backend skipped by its circuit breaker is not logged again, only put on ``call``'s trace."""
        try:
            return fn(*args)
        except Exception as exc:
            return self._went_without(action, exc, call)

    async def aguarded(self, action: str, fn: Any, *args: Any, call: Call | None = None) -> Any:
        """:meth:`guarded` for a coroutine function."""
        try:
            return await fn(*args)
        except Exception as exc:
            return self._went_without(action, exc, call)

    def _went_without(self, action: str, exc: Exception, call: Call | None) -> None:
        if isinstance(exc, BackendSkipped):
            _logger.debug("%s cache %s skipped: %s", self.kind, action, exc)
            if call is not None:
                call.span.set_attributes({schema.CACHE_BACKEND_SKIPPED: exc.backend})
                details = {"kind": self.kind, "action": action, "backend": exc.backend}
                call.span.add_event("cache_backend_skipped", {**details, "retry_in_s": round(exc.retry_in, 3)})
        else:
            _logger.warning("%s cache %s failed (the call goes on without it): %s", self.kind, action, exc)


class ExactCacheStage(CacheStage):
    """Same model, messages, output-changing parameters and namespace: the same answer."""

    name = "exact_cache"
    kind = "exact"
    order = STAGE_ORDER[name]
    settings_type = CacheSettings

    def __init__(
        self,
        backend: CacheBackend,
        single_flight: SingleFlight | None = None,
        *,
        ttl: float | None = None,
        **rules: Any,
    ):
        super().__init__(**rules)
        self.ttl = ttl
        self.backend = backend
        # Identical misses in flight at once make one provider call (singleflight.py); across
        # processes too when they share a Redis cache.
        if single_flight is None and isinstance(backend, RedisBackend):
            single_flight = SingleFlight(backend)
        self.flights = single_flight or SingleFlight()

    @classmethod
    def from_settings(cls, settings: CacheSettings, previous: Stage | None, **context: Any) -> ExactCacheStage:
        store = make_backend(settings.backend, url=settings.url, path=settings.path, max_entries=settings.max_entries)
        return cls(store, ttl=settings.ttl, max_temperature=settings.max_temperature, stats=context["stats"])

    def rules(self) -> dict[str, Any]:
        return {"backend": type(self.backend).__name__.removesuffix("Backend").lower(), "ttl": self.ttl}

    def before(self, call: Call) -> Response | None:
        if not self.applies(call):
            return None
        key = call.state["exact_key"] = exact_key(call)
        read = functools.partial(self.guarded, "lookup", self.backend.get, key, call=call)
        response, joins = self._looked_up(call, key, read())
        if not joins:
            return response
        return self._joined(call, key, *self.flights.join(key, read))

    async def abefore(self, call: Call) -> Response | None:
        if not self.applies(call):
            return None
        key = call.state["exact_key"] = exact_key(call)
        read = functools.partial(self.aguarded, "lookup", self.backend.aget, key, call=call)
        response, joins = self._looked_up(call, key, await read())
        if not joins:
            return response
        return self._joined(call, key, *await self.flights.ajoin(key, read))

    def _looked_up(self, call: Call, key: str, entry: dict[str, Any] | None) -> tuple[Response | None, bool]:
        """``(hit, False)``; ``(None, True)``: a miss that joins a flight; ``(None, False)``: a
        miss that does not (a stream)."""
        if entry is not None and self.usable(call, entry):
            return self.hit(call, entry, key=key[:16]), False
        if call.request.stream:  # a stream wants its first tokens now, not after another call
            self.miss(call)
            return None, False
        return None, True

    def _joined(self, call: Call, key: str, entry: dict[str, Any] | None, lease: Lease | None) -> Response | None:
        if lease is not None:
            call.state["flight"] = lease  # released in after/on_error, once this call has ended
        if entry is not None and self.usable(call, entry):
            return self.hit(call, entry, key=key[:16], coalesced=True)
        self.miss(call)
        return None

    def after(self, call: Call, response: Response) -> None:
        try:
            super().after(call, response)
            entry = self._semantic_entry(call, response)
            if entry is not None:
                self.guarded("store", self.backend.set, call.state["exact_key"], entry, self.ttl, call=call)
        finally:
            self._land(call)

    async def aafter(self, call: Call, response: Response) -> None:
        try:
            await super().aafter(call, response)
            entry = self._semantic_entry(call, response)
            if entry is not None:
                await self.aguarded("store", self.backend.aset, call.state["exact_key"], entry, self.ttl, call=call)
        finally:
            await self._aland(call)

    def _semantic_entry(self, call: Call, response: Response) -> dict[str, Any] | None:
        """A semantic hit is the answer to this exact question too: kept here, the next identical
        question skips the embedding."""
        entry = call.state.get("semantic_entry")
        if response.cached == "semantic" and entry and "exact_key" in call.state and self.applies(call):
            return entry
        return None

    def on_error(self, call: Call, error: BaseException) -> None:
        self._land(call)

    async def aon_error(self, call: Call, error: BaseException) -> None:
        await self._aland(call)

    # Ending this call's flight, if it led one (after its answer is stored, or on an error): its
    # waiters read the cache (or call themselves).

    def _land(self, call: Call) -> None:
        lease = call.state.pop("flight", None)
        if lease is not None:
            self.flights.release(lease)

    async def _aland(self, call: Call) -> None:
        lease = call.state.pop("flight", None)
        if lease is not None:
            await self.flights.arelease(lease)

    def store(self, call: Call, response: Response) -> None:
        if "exact_key" in call.state:  # the lookup ran (a stage before it may have answered)
            self.guarded("store", self.backend.set, call.state["exact_key"], to_entry(response), self.ttl, call=call)

    async def astore(self, call: Call, response: Response) -> None:
        if "exact_key" in call.state:
            entry = to_entry(response)
            await self.aguarded("store", self.backend.aset, call.state["exact_key"], entry, self.ttl, call=call)

    def remember(self, call: Call, response: Response) -> None:
        self.backend.set(exact_key(call), to_entry(response), self.ttl)

    def clear(self) -> None:
        self.backend.clear()


class SemanticCacheStage(CacheStage):
    """Same scope (model, system prompt and earlier messages, output-changing parameters,
    namespace) and a last user message that means the same: the same answer. Runs after the
    exact cache missed."""

    name = "semantic_cache"
    kind = "semantic"
    order = STAGE_ORDER[name]
    settings_type = SemanticCacheSettings

    def __init__(self, cache: SemanticCache, **rules: Any):
        super().__init__(**rules)
        self.cache = cache  # the one owner of the threshold, ttl, model...: the stage keeps none
        offload.warm_up()  # async lookups run in its threads: started now, not in the first call

    @classmethod
    def from_settings(
        cls, settings: SemanticCacheSettings, previous: Stage | None, **context: Any
    ) -> SemanticCacheStage:
        """``context["cache"]``: a loaded cache to use as it is (its own settings apply)."""
        cache = context.get("cache")
        if cache is None:
            from mlflow_lite_plugin.cache.semantic import SemanticCache  # numpy, faiss: on first use

            cache = SemanticCache(**settings.cache_options())
        return cls(cache, max_temperature=settings.max_temperature, stats=context["stats"])

    def rules(self) -> dict[str, Any]:
        return {"threshold": self.cache.threshold, "ttl": self.cache.ttl}

    def before(self, call: Call) -> Response | None:
        asked = self._question(call)
        if asked is None:
            return None
        return self._found(call, asked, self.guarded("lookup", self.cache.probe, *asked, call=call))

    async def abefore(self, call: Call) -> Response | None:
        asked = self._question(call)
        if asked is None:
            return None
        return self._found(call, asked, await self.aguarded("lookup", self.cache.aprobe, *asked, call=call))

    def _question(self, call: Call) -> tuple[str, str] | None:
        """``(scope, question)`` to look up, or None when this call may not use the cache."""
        query = call.request.prompt_text
        if not self.applies(call) or not query.strip() or _asks_about_images(call):
            return None
        if not self.cache.fits(query):
            # Not looked up, not stored: normalising, embedding and verifying a long text would
            # cost more than the call (and the model only embeds its first 256 word pieces).
            limit = self.cache.max_query_chars
            call.span.set_attributes({schema.CACHE_SEMANTIC_SKIPPED: "query_too_long"})
            details = {"reason": "query_too_long", "query_chars": len(query), "max_query_chars": limit}
            call.span.add_event("semantic_cache_skipped", details)
            return None
        return scope_key(call), query

    def _found(self, call: Call, asked: tuple[str, str], probe: Probe | None) -> Response | None:
        if probe is not None:  # its key and vector: a miss is stored without normalising or embedding again
            call.state["semantic"] = (*asked, probe)
        hit = probe.hit if probe is not None else None
        if hit is None or not self.usable(call, hit.value):
            self.miss(call)
            return None
        call.state["semantic_entry"] = hit.value  # the original answer, with its cost and usage
        return self.hit(call, hit.value, similarity=round(hit.score, 4), matched_query=hit.query, reason=hit.reason)

    def store(self, call: Call, response: Response) -> None:
        if "semantic" in call.state:
            self.guarded("store", self._storing(self.cache.store, call, response))

    async def astore(self, call: Call, response: Response) -> None:
        if "semantic" in call.state:
            await self.aguarded("store", self._storing(self.cache.astore, call, response))

    @staticmethod
    def _storing(store: Any, call: Call, response: Response) -> Any:
        scope, query, probe = call.state["semantic"]
        return functools.partial(store, scope, query, to_entry(response), key=probe.key, vector=probe.vector)

    def clear(self) -> None:
        self.cache.clear()

    def remember(self, call: Call, response: Response) -> None:
        if not self.cache.store(scope_key(call), call.request.prompt_text, to_entry(response)):
            limit = self.cache.max_query_chars
            _logger.info("not added to the semantic cache: the question is longer than %d characters", limit)


_NO_LOOKUPS = {"hits": 0, "misses": 0, "hit_rate": 0.0, "cost_saved": 0.0}


def _asks_about_images(call: Call) -> bool:
    """Only the text is embedded, so "describe this image" would match any other image."""
    last: Mapping[str, Any] = next((m for m in reversed(call.request.messages) if m.get("role") == "user"), {})
    return has_images(last.get("content"))
