"""Run-context provider: every ``mlflow.start_run()`` gets tags describing the active mlflow-lite
controls, so a run records which cache, budget, rate limits and metrics its LLM calls ran under.

MLflow loads this module in every process that starts a run, so it imports nothing heavy: it
only reads the default client if one already exists (it never creates one).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mlflow.tracking.context.abstract_context import RunContextProvider

from mlflow_lite_plugin.client import existing_default_client
from mlflow_lite_plugin.tracing import schema
from mlflow_lite_plugin.version import __version__

if TYPE_CHECKING:
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
    """Tags describing the default client, or none if it was never created: its default model,
    and one tag per control (``mlflow_lite.<group>``) from each installed stage's ``summary()``,
    built-in or added with ``add_stage``; a control that is off has no stage, so no tag."""
    client = existing_default_client()
    if client is None:
        return {}
    described: dict[str, str | None] = {schema.RUN_DEFAULT_MODEL: client.model}
    for key, summary in stage_summaries(client.pipeline).items():
        described[schema.run_tag(key)] = summary
    return {key: value[:MAX_TAG_LENGTH] for key, value in described.items() if value}


def stage_summaries(pipeline: Pipeline) -> dict[str, str]:
    """``{group: summary}`` of the stages that describe themselves, in pipeline order; stages of
    one group (the two caches) are joined with "; ", e.g. ``exact(memory, ttl=3600); semantic(threshold=0.725)``."""
    groups: dict[str, list[str]] = {}
    for stage in pipeline.stages:
        if stage.describe():
            groups.setdefault(stage.group or stage.name, []).append(stage.summary())
    return {group: "; ".join(filter(None, parts)) for group, parts in groups.items()}
