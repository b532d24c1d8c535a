"""The Client owns settings and runs calls through the pipeline; the one-liners use a default one."""

from __future__ import annotations

import functools
import inspect
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from mlflow_lite_plugin.cache.stage import CacheSettings, CacheStage, SemanticCacheSettings, SemanticCacheStage
from mlflow_lite_plugin.cache.stats import CacheStats
from mlflow_lite_plugin.controls.budget import stage as budget_module
from mlflow_lite_plugin.controls.budget.settings import DEFAULT_MAX_WAIT, BudgetSettings
from mlflow_lite_plugin.controls.metrics import Metrics, MetricsStage
from mlflow_lite_plugin.controls.ratelimit import RateLimitSettings
from mlflow_lite_plugin.controls.validation.stage import ValidationStage, parse_rules
from mlflow_lite_plugin.core.batch import BatchItem, check_concurrency, gather_bounded, item_kwargs, run_sync
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError
from mlflow_lite_plugin.core.model_names import ModelResolver
from mlflow_lite_plugin.core.pipeline import Call, Pipeline, Settings, Stage, chat_inputs
from mlflow_lite_plugin.core.pricing import Pricing
from mlflow_lite_plugin.core.providers import Provider
from mlflow_lite_plugin.core.request import build_request
from mlflow_lite_plugin.core.response import Response, Stream, usage_dict
from mlflow_lite_plugin.tracing import schema
from mlflow_lite_plugin.tracing import tracer as tracing_module

if TYPE_CHECKING:
    from mlflow_lite_plugin.cache.semantic import SemanticCache
    from mlflow_lite_plugin.controls.routing import Router

P = ParamSpec("P")
R = TypeVar("R")


class Client:
    """A configuration of models, controls and tracing. ``ml.query`` & co. use a default Client;
    create your own to run several configurations side by side.

    ``model`` is the default model; any other keyword (``temperature``, ``api_base``,
    ``timeout``, ``num_retries``, ``fallbacks``...) becomes a default of every call.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        tracing: bool = True,
        experiment: str | None = None,
        aliases: Mapping[str, str] | None = None,
        **defaults: Any,
    ):
        self.model = model
        self.defaults = defaults
        self.models = ModelResolver(aliases)
        self.pricing = Pricing()
        self.tracer = tracing_module.Tracer(enabled=tracing, experiment=experiment)
        self.metrics = Metrics()
        self.router: Router | None = None
        self.pipeline = Pipeline(Provider(), [ValidationStage(), MetricsStage(self.metrics)])
        self._cache_stats = CacheStats()

    # -- calls --

    def query(
        self,
        prompt: str | None = None,
        *,
        model: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        **kwargs: Any,
    ) -> Response:
        """Ask a model; returns a :class:`Response` (text, usage, cost, latency, trace_id)."""
        return self.pipeline.run(self._call("query", prompt, model, messages, system, kwargs))

    async def aquery(
        self,
        prompt: str | None = None,
        *,
        model: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        **kwargs: Any,
    ) -> Response:
        """``query`` for asyncio."""
        return await self.pipeline.arun(self._call("query", prompt, model, messages, system, kwargs))

    def stream(
        self,
        prompt: str | None = None,
        *,
        model: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        **kwargs: Any,
    ) -> Stream:
        """Stream the answer as ``str`` chunks; ``.response`` holds the full Response afterwards."""
        call = self._call("stream", prompt, model, messages, system, kwargs, stream=True)
        return Stream(self.pipeline.stream(call), on_close=lambda: self.pipeline.close_stream(call))

    def stream_validated(
        self,
        prompt: str | None = None,
        *,
        model: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        schema: Mapping[str, Any] | None = None,
        validate: Any = None,
        **kwargs: Any,
    ) -> Stream:
        """Stream an answer that is checked as it arrives: JSON against ``schema`` (and any other
        ``validate=`` rules). A violation that is already certain (broken syntax, a wrong type, a
        key the schema forbids, a forbidden word, too long) stops the stream and raises
        :class:`ValidationError` with how much was read; the whole answer is checked at the end."""
        if schema is None and validate is None:
            raise ArgumentError("schema", "stream_validated needs schema= (a JSON Schema) or validate= rules")
        rules = merge_rules({"schema": schema} if schema is not None else None, validate)
        return self.stream(prompt, model=model, messages=messages, system=system, validate=rules, **kwargs)

    def query_with_template(self, template: Any, *, version: str | int | None = None, **kwargs: Any) -> Response:
        """Ask a model with a prompt template: a built-in (``summarize``, ``classify``, ``extract``,
        ``translate``, ``qa``, ``sentiment``, ``rewrite``) or one from MLflow's Prompt Registry
        (``"name"``, ``"name@alias"``, ``"name/3"``, ``version=``). Template variables are given as
        keywords (``input=...``, ``labels=[...]``); every ``query`` keyword works too. The
        template's default validation applies unless ``validate=`` overrides it (``False`` turns
        it off). Traced with the template's name and version."""
        from mlflow_lite_plugin.prompts import templates

        chosen = templates.resolve_template(template, version)
        variables, query_kwargs = templates.split_kwargs(chosen, kwargs)
        prepared = chosen.render(variables)
        query_kwargs["validate"] = merge_rules(prepared.validate, query_kwargs.get("validate"))
        model = query_kwargs.pop("model", None)
        system = query_kwargs.pop("system", None)
        links = None
        if chosen.source == "registry":  # MLflow's own link from a trace to the prompt versions it used
            links = {schema.LINKED_PROMPTS: json.dumps([{"name": chosen.name, "version": str(chosen.version)}])}
        call = self._call(
            "query", None, model, prepared.messages, system, query_kwargs,
            labels=prepared.trace_attributes, trace_tags=links,
        )
        return self.pipeline.run(call)

    # -- human feedback and datasets --

    def record_feedback(
        self,
        trace_id: str,
        rating: float | int | bool | None = None,
        correction: str | None = None,
        *,
        user: str | None = None,
        comment: str | None = None,
        scale: tuple[float, float] = (1, 5),
    ) -> list[Any]:
        """Store a human ``rating`` (HUMAN feedback "rating") and/or ``correction`` (the expectation
        "expected_response") on an MLflow trace; with feedback learning on, they become few-shot
        examples for similar later queries. Returns the logged assessments."""
        from mlflow_lite_plugin.feedback import human as feedback

        return feedback.record_feedback(
            trace_id, rating, correction, user=user, comment=comment, scale=scale,
            learner=feedback.learner_of(self.pipeline),
        )

    def set_feedback_learning(
        self,
        enabled: bool = True,
        *,
        max_examples: int = 3,
        min_rating: float = 4,
        similarity: float = 0.5,
        registry: bool = True,
    ) -> Any:
        """Turn corrections and top-rated answers into few-shot examples for later similar queries
        of the same system prompt or template (nearest by embedding), versioned in MLflow's
        Prompt Registry."""
        from mlflow_lite_plugin.feedback import human as feedback

        return feedback.set_feedback_learning(
            self.pipeline, enabled, max_examples=max_examples, min_rating=min_rating,
            similarity=similarity, registry=registry,
        )

    def export_dataset(self, path: str | None = None, **options: Any) -> Any:
        """Traces -> fine-tuning JSONL (``format="openai"|"anthropic"|"jsonl"``; ``min_rating``,
        ``since``, ``experiment``...); corrections replace answers. Returns a summary of what was
        kept and dropped (``.to_pandas()``, ``.to_mlflow_dataset()``)."""
        self.flush_traces()  # this client's pending traces are part of the data
        options.setdefault("experiment", self.tracer.experiment)
        from mlflow_lite_plugin.feedback import datasets

        return datasets.export_dataset(path, **options)

    # -- routing --

    def set_routing(
        self,
        tiers: Mapping[str, str] | None = None,
        *,
        thresholds: Sequence[float] | None = None,
        fallback: str | None = "quality",
    ) -> None:
        """Model tiers for ``smart_query``, cheapest first (default ``{"fast": "gpt-4o-mini",
        "quality": "gpt-4o"}``), the complexity cut-offs between them, and the default upgrade
        tier when a cheap answer fails validation or errors (None: no upgrade)."""
        from mlflow_lite_plugin.controls.routing import Router

        self.router = Router(tiers, thresholds=thresholds, fallback=fallback)

    def smart_query(self, prompt: str | None = None, **kwargs: Any) -> Response:
        """Route to a model tier by the prompt's own complexity (no extra model call), upgrading
        when the cheap answer fails; ``r.routing`` holds the decision (score, reasons, tier)."""
        from mlflow_lite_plugin.controls.routing import smart_query

        return smart_query(self, prompt, **kwargs)

    # -- custom metrics --

    def add_metric(self, name: str, fn: Callable[..., Any], *, description: str | None = None) -> None:
        """Score every answer with ``fn(text)`` (or ``fn(text, response)``): a bool, number, str
        or ``(value, rationale)``. Results are on ``r.metrics`` and logged to the trace as MLflow
        feedback; a metric that raises is recorded as an error and the call still succeeds."""
        self.metrics.add(name, fn, description=description)

    def remove_metric(self, name: str) -> None:
        """Stop scoring answers with metric ``name``."""
        self.metrics.remove(name)

    def list_metrics(self) -> list[str]:
        """Names of the metrics every answer is scored with."""
        return self.metrics.names()

    def batch(
        self,
        items: Sequence[BatchItem],
        *,
        max_concurrency: int = 16,
        progress: bool = False,
        **common: Any,
    ) -> list[Response | MlflowLiteError]:
        """Run many queries concurrently; results in input order, a failed item holds its error.
        Works in scripts and inside a running event loop (Jupyter)."""
        check_concurrency(max_concurrency)
        return run_sync(self.async_batch(items, max_concurrency=max_concurrency, progress=progress, **common))

    async def async_batch(
        self,
        items: Sequence[BatchItem],
        *,
        max_concurrency: int = 16,
        progress: bool = False,
        **common: Any,
    ) -> list[Response | MlflowLiteError]:
        """``batch`` for asyncio: each item is a prompt string or a dict of ``query`` arguments."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise ArgumentError("items", "must be a list of prompts or dicts of query arguments")
        return await gather_bounded(
            items, lambda item: self.aquery(**item_kwargs(item, common)), max_concurrency, progress
        )

    # -- tokens and prices --

    def count_tokens(self, text: str | Sequence[Mapping[str, Any]], model: str | None = None) -> int:
        """Tokens in ``text`` (or a message list) for ``model``'s tokenizer; no network call."""
        return self.pricing.count_tokens(self.models.resolve(self._model(model)), text)  # type: ignore[arg-type]

    def estimate_cost(self, tokens: int, model: str | None = None) -> float | None:
        """USD for ``tokens`` input tokens on ``model``; None (with a warning) if its price is unknown."""
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ArgumentError("tokens", f"must be an int >= 0, got {tokens!r}")
        price = self.pricing.price(self.models.resolve(self._model(model)))
        return None if price is None else tokens * price.input

    def set_model_price(self, model: str, *, input_per_million: float, output_per_million: float) -> None:
        """Override (or supply) a model's price in USD per million tokens."""
        self.pricing.set_price(self.models.resolve(self._model(model)), input_per_million, output_per_million)

    def set_model_alias(self, alias: str, model: str) -> None:
        """Make ``alias`` call ``model`` (a provider-qualified LiteLLM name)."""
        self.models.set_alias(alias, model)

    # -- caching --

    def set_cache(
        self,
        enabled: bool = True,
        *,
        ttl: float | None = None,
        backend: str = "memory",
        url: str | None = None,
        path: str | None = None,
        max_entries: int = 10_000,
        max_temperature: float | None = None,
    ) -> None:
        """Turn the exact cache on (or off with ``enabled=False``).

        ``backend``: "memory" (per process, LRU-bounded by ``max_entries``), "sqlite" (a file at
        ``path``, shared by processes, survives restarts) or "redis" (``url``, shared by replicas).
        ``ttl`` is in seconds (None: no expiry). Calls with a temperature above
        ``max_temperature`` bypass the cache (None: every temperature is cached, keyed by it).
        """
        settings = CacheSettings(
            enabled=enabled, ttl=ttl, backend=backend, url=url, path=path, max_entries=max_entries,
            max_temperature=max_temperature,
        )
        self.install(settings)

    def set_semantic_cache(
        self,
        enabled: bool = True,
        *,
        threshold: float | None = None,
        model: str | None = None,
        ttl: float | None = None,
        max_entries: int = 100_000,
        max_temperature: float | None = None,
        verify: bool = True,
        cache: SemanticCache | None = None,
        max_query_chars: int | None = None,
        encoder: str = "auto",
    ) -> None:
        """Turn the semantic cache on (or off): a question that means the same as a cached one,
        in the same scope, gets the cached answer.

        ``model``: a sentence-transformers model name or path (default: the bundled
        all-MiniLM-L6-v2, loaded offline on first use). ``threshold``: cosine similarity a
        candidate needs before verification (default: the tuned one). ``verify=False`` trusts
        cosine alone (not recommended: near-misses such as negations score high). Pass a loaded
        ``cache=`` (e.g. ``SemanticCache.load(path)``) to start warm. ``max_query_chars``: longer
        questions are neither looked up nor stored (default 2,000; the model reads 256 word pieces).
        ``encoder``: what runs the model, "torch" or "onnx" (ONNX Runtime, exported locally once);
        "auto" (default) is the fastest one that kept the cache's quality, if installed.
        With ``cache=``, that cache's own settings (threshold, ttl, ...) apply.
        """
        settings = SemanticCacheSettings(
            enabled=enabled, threshold=threshold, model=model, ttl=ttl, max_entries=max_entries,
            max_temperature=max_temperature, verify=verify, max_query_chars=max_query_chars, encoder=encoder,
        )
        self.install(settings, cache=cache)

    def semantic_cache(self) -> SemanticCache | None:
        """The live semantic cache of this client (to save, inspect or ship with a model)."""
        stage = self.pipeline.get(SemanticCacheStage.name)
        return stage.cache if isinstance(stage, SemanticCacheStage) else None

    def add_to_cache(
        self,
        answer: str,
        prompt: str | None = None,
        *,
        model: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Store ``answer`` as the answer to this call in every enabled cache (warming them, e.g.
        with known answers to frequent questions); the arguments are those of ``query``."""
        if not isinstance(answer, str) or not answer:
            raise ArgumentError("answer", f"must be a non-empty string, got {answer!r}")
        caches = [s for s in self.pipeline.stages if isinstance(s, CacheStage)]
        if not caches:
            raise ArgumentError("answer", "no cache is enabled: call set_cache() or set_semantic_cache() first")
        call = self._call("cache", prompt, model, messages, system, kwargs, traced=False)
        answering = call.models[0]
        known = Response(
            text=answer, model=answering.name, usage=usage_dict(0, 0), cost=None, latency=0.0,
            finish_reason="stop", provider=answering.provider, requested_model=call.request.model,
        )
        for stage in caches:
            stage.remember(call, known)

    def cache_stats(self) -> dict[str, Any]:
        """Hits, misses, hit rate and cost saved, overall and per cache kind (this process)."""
        return self._cache_stats.snapshot()

    def clear_cache(self) -> None:
        """Delete every cached answer (exact and semantic) and reset the statistics."""
        for stage in self.pipeline.stages:
            if isinstance(stage, CacheStage):
                stage.clear()
        self._cache_stats.reset()

    # -- budgets and alerts --

    def set_budget(
        self,
        daily_limit: float | None = None,
        *,
        monthly_limit: float | None = None,
        timezone: str = "UTC",
        scope: str = "global",
        backend: str = "sqlite",
        path: str | None = None,
        url: str | None = None,
        on_unknown_price: str = "refuse",
        enabled: bool = True,
        max_wait: float | None = DEFAULT_MAX_WAIT,
    ) -> None:
        """Cap spend per day and/or month (USD). The ledger is a SQLite file shared by this host's
        processes (``path``, default ``~/.mlflow-lite/budget.db``) or Redis (``url``) for several
        hosts. A call that could exceed the limit raises ``BudgetExceededError`` before the
        provider is called. ``scope``: "global", "model" or "tag:<name>".

        A call that fits once the calls in flight settle waits for them up to ``max_wait``
        seconds (30 by default; 0 refuses at once, None waits as long as they take); a call the
        spent amount alone leaves no room for is refused at once."""
        settings = BudgetSettings(
            daily_limit=daily_limit, monthly_limit=monthly_limit, timezone=timezone, scope=scope,
            on_unknown_price=on_unknown_price, max_wait=max_wait, backend=backend, path=path, url=url,
            enabled=enabled,
        )
        self.install(settings)

    def set_alert(
        self,
        threshold: float = 0.8,
        *,
        email: str | list[str] | None = None,
        webhook: str | None = None,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        **smtp: Any,
    ) -> None:
        """Alert once per period when spend crosses ``threshold`` of the budget: by email (SMTP
        settings as keywords ``smtp_host``, ``smtp_port``, ``smtp_user``, ``smtp_password``,
        ``sender``, or ``MLFLOW_LITE_SMTP_*`` env vars), webhook (JSON POST) or callback."""
        budget_module.set_alert(self.pipeline, threshold, email=email, webhook=webhook, callback=callback, **smtp)

    def budget_status(self, *, model: str | None = None, tag: str | None = None) -> dict[str, Any]:
        """Spent, reserved, remaining, limit, period and reset time of the current period."""
        stage = budget_module.budget_stage(self.pipeline)
        if stage.budget.scope == "model":
            model = self.models.resolve(self._model(model)).name  # ledger keys are provider-qualified
        return stage.status(model=model, tag=tag)

    # -- rate limits and fallbacks --

    def set_rate_limit(
        self,
        requests_per_minute: float | None = None,
        *,
        tokens_per_minute: float | None = None,
        model: str | None = None,
        max_wait: float | None = None,
        backend: str = "memory",
        url: str | None = None,
    ) -> None:
        """Pace calls so they stay under these limits (per ``model``, or for all models).

        Waiting callers start in arrival order; a call that would wait more than ``max_wait``
        seconds raises ``RateLimitExceededError`` instead. Tokens are the prompt plus
        ``max_tokens``. ``backend="redis", url=...`` shares the limit with every process and
        host using that Redis. With neither limit given, the limit for ``model`` is removed.
        """
        settings = RateLimitSettings(
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute, model=model,
            max_wait=max_wait, backend=backend, url=url,
        )
        self.install(settings)

    def set_fallbacks(self, fallbacks: Sequence[str] | None, *, num_retries: int | None = None) -> None:
        """Default fallback chain (and retries) of every call; a call's own ``fallbacks=`` wins."""
        if isinstance(fallbacks, str):
            raise ArgumentError("fallbacks", f"must be a list of model names, got {fallbacks!r}")
        defaults = {k: v for k, v in self.defaults.items() if k != "fallbacks"}
        if fallbacks:
            defaults["fallbacks"] = list(fallbacks)
        if num_retries is not None:
            defaults["num_retries"] = num_retries
        # validated as a call would be, before anything is changed
        build_call_request(model="check", prompt="check", messages=None, system=None, kwargs={}, defaults=defaults)
        self.defaults = defaults

    # -- tracing --

    def set_experiment(self, name: str) -> None:
        """Send this client's traces to MLflow experiment ``name`` (created if missing)."""
        if not isinstance(name, str) or not name.strip():
            raise ArgumentError("name", f"must be a non-empty experiment name, got {name!r}")
        self.tracer.experiment = name

    def set_tracing(self, enabled: bool = True, export: str | None = None) -> None:
        """Turn MLflow tracing of this client's calls on or off.

        ``export`` chooses how traces are written: ``"thread"`` (a background thread of this
        process; the default, or ``MLFLOW_LITE_TRACE_EXPORT``) or ``"process"`` (a child process
        writing batches: for servers, see ``tracing/export.py``).
        """
        if export is not None:
            try:
                self.tracer.export = export
            except ValueError as exc:
                raise ArgumentError("export", str(exc)) from None
        self.tracer.enabled = bool(enabled)

    def flush_traces(self, timeout: float = tracing_module.FLUSH_TIMEOUT) -> None:
        """Block until every trace of this client is written (also done at interpreter exit)."""
        self.tracer.flush(timeout)

    # -- pipeline --

    def add_stage(self, stage: Stage) -> None:
        """Plug a stage into the pipeline at its ``order``; its ``describe()``/``status()`` show in
        run tags and the UI like the built-in controls'."""
        self.pipeline.add(stage)

    def install(self, settings: Settings, **context: Any) -> Stage | None:
        """Turn a control on, replace it or (``enabled=False``) remove it from its settings
        (``CacheSettings``, ``SemanticCacheSettings`` with ``cache=`` a loaded cache,
        ``BudgetSettings``, ``RateLimitSettings``): what ``set_cache`` & co. do."""
        return self.pipeline.install(settings, stats=self._cache_stats, **context)

    # -- internals --

    def _model(self, model: str | None) -> str:
        chosen = model or self.model
        if not chosen:
            raise ArgumentError("model", "no model given and this client has no default model")
        return chosen

    def _call(
        self,
        kind: str,
        prompt: str | None,
        model: str | None,
        messages: Sequence[Mapping[str, Any]] | None,
        system: str | None,
        kwargs: Mapping[str, Any],
        stream: bool = False,
        labels: Mapping[str, str] | None = None,
        trace_tags: Mapping[str, str] | None = None,
        traced: bool = True,
    ) -> Call:
        """Build the request and open the root span (``traced=False``: none); ``labels`` go on the
        span and trace tags."""
        request = build_call_request(
            model=model or self.model,
            prompt=prompt,
            messages=messages,
            system=system,
            kwargs=kwargs,
            defaults=self.defaults,
            stream=stream,
        )
        models = [self.models.resolve(name) for name in (request.model, *request.fallbacks)]
        tags = {schema.MODEL: request.model, **(labels or {}), **(trace_tags or {}), **request.tags}
        # The template the trace is tagged with scopes few-shot examples (the learner reads that tag
        # back from the trace); the request holds it, so the scope is the same with tracing off.
        request.template = tags.get(schema.TEMPLATE)
        if not traced:
            return Call(request=request, models=models, span=tracing_module.NullSpan(), pricing=self.pricing)
        attributes = {schema.REQUESTED_MODEL: request.model, schema.KIND: kind, **(labels or {})}
        if request.namespace:  # scopes what feedback on this call may teach (feedback/human.py)
            attributes[schema.NAMESPACE] = request.namespace
        span = self.tracer.start(
            schema.root_span_name(kind),
            schema.CHAT_MODEL,
            inputs=chat_inputs(request.messages, request.model, request.images),
            attributes=attributes,
            tags=tags,
        )
        return Call(request=request, models=models, span=span, pricing=self.pricing)


# Arguments checked as a call checks them, validate= rules parsed by the validation control: the one
# place that joins core's request with that control (core knows no control).
build_call_request = functools.partial(build_request, rules=parse_rules)

_default: Client | None = None
_default_lock = threading.Lock()


def get_default_client() -> Client:
    """The Client behind ``ml.query`` and the other one-liners (created on first use)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Client()
    return _default


def existing_default_client() -> Client | None:
    """The Client behind the one-liners if one was created (never creates one: for readers such as
    the run-context plugin, which must not configure anything)."""
    return _default


def set_default_client(client: Client) -> None:
    """Make ``client`` the one behind the one-liners."""
    global _default
    if not isinstance(client, Client):
        raise ArgumentError("client", f"must be an ml.Client, got {type(client).__name__}")
    _default = client


def merge_rules(default: Any, given: Any) -> Any:
    """Validation rules of a call: ``given`` on top of ``default`` (a template's or a schema);
    ``given=False`` turns validation off."""
    if given is False:
        return None
    if default is None or given is None:
        return default if given is None else given
    if isinstance(default, Mapping) and isinstance(given, Mapping):
        return {**default, **given}
    return _as_list(default) + _as_list(given)


def _as_list(spec: Any) -> list[Any]:
    return list(spec) if isinstance(spec, list) else [spec]


def _one_liner(method: Callable[Concatenate[Client, P], R]) -> Callable[P, R]:
    """A module-level function that calls ``method`` on the default client."""
    name = method.__name__
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def delegate_async(*args: Any, **kwargs: Any) -> Any:
            return await getattr(get_default_client(), name)(*args, **kwargs)

        wrapper: Any = delegate_async
    else:

        @functools.wraps(method)
        def delegate(*args: Any, **kwargs: Any) -> Any:
            return getattr(get_default_client(), name)(*args, **kwargs)

        wrapper = delegate
    params = list(inspect.signature(method).parameters.values())[1:]  # drop self
    wrapper.__signature__ = inspect.signature(method).replace(parameters=params)
    return wrapper


query = _one_liner(Client.query)
aquery = _one_liner(Client.aquery)
stream = _one_liner(Client.stream)
batch = _one_liner(Client.batch)
async_batch = _one_liner(Client.async_batch)
count_tokens = _one_liner(Client.count_tokens)
estimate_cost = _one_liner(Client.estimate_cost)
set_model_price = _one_liner(Client.set_model_price)
set_model_alias = _one_liner(Client.set_model_alias)
set_experiment = _one_liner(Client.set_experiment)
set_tracing = _one_liner(Client.set_tracing)
flush_traces = _one_liner(Client.flush_traces)
set_cache = _one_liner(Client.set_cache)
cache_stats = _one_liner(Client.cache_stats)
clear_cache = _one_liner(Client.clear_cache)
set_semantic_cache = _one_liner(Client.set_semantic_cache)
add_to_cache = _one_liner(Client.add_to_cache)
semantic_cache = _one_liner(Client.semantic_cache)
set_rate_limit = _one_liner(Client.set_rate_limit)
set_fallbacks = _one_liner(Client.set_fallbacks)
set_budget = _one_liner(Client.set_budget)
set_alert = _one_liner(Client.set_alert)
budget_status = _one_liner(Client.budget_status)
stream_validated = _one_liner(Client.stream_validated)
query_with_template = _one_liner(Client.query_with_template)
add_metric = _one_liner(Client.add_metric)
remove_metric = _one_liner(Client.remove_metric)
list_metrics = _one_liner(Client.list_metrics)
set_routing = _one_liner(Client.set_routing)
smart_query = _one_liner(Client.smart_query)
record_feedback = _one_liner(Client.record_feedback)
set_feedback_learning = _one_liner(Client.set_feedback_learning)
export_dataset = _one_liner(Client.export_dataset)
