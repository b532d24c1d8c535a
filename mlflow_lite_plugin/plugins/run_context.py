"""Run-context provider: every ``mlflow.start_run()`` gets tags describing the active mlflow-lite
controls, so a run records which cache, budget, rate limits and metrics its LLM calls ran under.

MLflow loads this module in every process that starts a run, so it imports nothing heavy: it
only reads the default client if one already exists (it never creates one).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mlflow.tracking.context.abstract_context import RunContextProvider

from mlflow_lite_plugin.version import __version__

from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow_lite_plugin.client import Client
    from mlflow_lite_plugin.core.pipeline import Pipeline

_logger = logging.getLogger(__name__)

MAX_TAG_LENGTH = 5000  # MLflow's limit on a tag value


class LiteRunContextProvider(RunContextProvider):
    """Tags ``mlflow_lite.version`` always; with a configured default client also
    ``mlflow_lite.default_model``, ``.cache``, ``.budget``, ``.rate_limit`` and ``.metrics``
    (each only when that control is on)."""

    def in_context(self) -> bool:
        return True

    def tags(self) -> dict[str, str]:
        tags = {schema.RUN_VERSION: __version__}
        try:
            tags.update(client_tags())
        except Exception:  # a run must start whatever state the client is in
            _logger.debug("mlflow_lite run tags: could not describe the default client", exc_info=True)
        return tags


def client_tags() -> dict[str, str]:
    """Tags describing the default client, or none if it was never created."""
    from mlflow_lite_plugin import client as client_module

    client = client_module._default
    if client is None:
        return {}
    described = {
        schema.RUN_DEFAULT_MODEL: client.model,
        schema.run_tag("cache"): describe_cache(client.pipeline),
        schema.run_tag("budget"): describe_budget(client.pipeline),
        schema.run_tag("rate_limit"): describe_rate_limit(client.pipeline),
        schema.run_tag("metrics"): describe_metrics(client),
    }
    return {key: value[:MAX_TAG_LENGTH] for key, value in described.items() if value}


def describe_cache(pipeline: Pipeline) -> str | None:
    """E.g. ``exact(memory, ttl=3600); semantic(threshold=0.725)``. Backend URLs and paths are left
    out: a Redis URL can carry a password."""
    from mlflow_lite_plugin.cache.stage import ExactCacheStage, SemanticCacheStage

    parts = []
    exact = pipeline.get(ExactCacheStage.name)
    if isinstance(exact, ExactCacheStage):
        backend = type(exact.backend).__name__.removesuffix("Backend").lower()
        parts.append(f"exact({', '.join([backend, *_cache_rules(exact.ttl, exact.max_temperature)])})")
    semantic = pipeline.get(SemanticCacheStage.name)
    if isinstance(semantic, SemanticCacheStage):
        rules = [f"threshold={semantic.cache.threshold:g}", *_cache_rules(semantic.ttl, semantic.max_temperature)]
        parts.append(f"semantic({', '.join(rules)})")
    return "; ".join(parts) or None


def _cache_rules(ttl: float | None, max_temperature: float | None) -> list[str]:
    rules = [] if ttl is None else [f"ttl={ttl:g}"]
    return rules if max_temperature is None else [*rules, f"max_temperature={max_temperature:g}"]


def describe_budget(pipeline: Pipeline) -> str | None:
    """E.g. ``daily=10.0 USD, monthly=200.0 USD, scope=global``."""
    from mlflow_lite_plugin.controls.budget.stage import BudgetStage

    stage = pipeline.get(BudgetStage.name)
    if not isinstance(stage, BudgetStage):
        return None
    limits = [f"{period}={limit} USD" for period, limit in stage.budget.limits()]
    return ", ".join([*limits, f"scope={stage.budget.scope}"])


def describe_rate_limit(pipeline: Pipeline) -> str | None:
    """E.g. ``60 rpm; gpt-4o: 30000 tpm`` (a limit without a model applies to all models)."""
    from mlflow_lite_plugin.controls.ratelimit import RateLimitStage

    stage = pipeline.get(RateLimitStage.name)
    if not isinstance(stage, RateLimitStage) or not stage.limits:
        return None
    described = []
    for limit in stage.limits:
        rates = [
            f"{rate:g} {unit}"
            for rate, unit in ((limit.requests_per_minute, "rpm"), (limit.tokens_per_minute, "tpm"))
            if rate
        ]
        prefix = f"{limit.model}: " if limit.model else ""
        described.append(prefix + ", ".join(rates))
    return "; ".join(described)


def describe_metrics(client: Client) -> str | None:
    return ", ".join(client.list_metrics()) or None
