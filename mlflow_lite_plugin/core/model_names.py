"""Models: LiteLLM loaded on first use, aliases, provider-qualified names."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

from mlflow_lite_plugin import heap
from mlflow_lite_plugin.core import environment  # noqa: F401  (LiteLLM's price map read locally)
from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.core.offline import register_offline_provider

_logger = logging.getLogger(__name__)

OFFLINE_PROVIDER = "lite"

# Names from older docs. Claude 3.x models were retired and dropped from LiteLLM's price map, so
# their aliases point at the current model of the same tier (priced, callable). Override with
# ml.set_model_alias(...) to pin something else.
DEFAULT_ALIASES: Mapping[str, str] = {
    "claude-3-5-sonnet": "anthropic/claude-sonnet-4-5",
    "claude-3-5-sonnet-latest": "anthropic/claude-sonnet-4-5",
    "claude-3-7-sonnet": "anthropic/claude-sonnet-4-5",
    "claude-3-5-haiku": "anthropic/claude-haiku-4-5",
    "claude-3-5-haiku-latest": "anthropic/claude-haiku-4-5",
    "claude-3-haiku": "anthropic/claude-haiku-4-5",
    "claude-3-opus": "anthropic/claude-opus-4-5",
    "gpt-3.5-turbo": "openai/gpt-3.5-turbo",
    "gpt-4": "openai/gpt-4",
}


@functools.cache
def litellm_module() -> ModuleType:
    """Import LiteLLM (slow: seconds), with its price map read locally (:mod:`.environment`) and
    our offline provider."""
    import litellm

    # LiteLLM prints "Give Feedback / Get Help" banners to stdout on every failure; our errors
    # carry the provider's message, and stdout belongs to the caller (the CLI streams answers).
    litellm.suppress_debug_info = True
    register_offline_provider(litellm)
    heap.freeze_loaded("litellm")
    return litellm


@dataclass(frozen=True)
class ModelRef:
    """A model as asked for and as called: ``name`` is provider-qualified ("openai/gpt-4o")."""

    requested: str
    name: str
    provider: str


class ModelResolver:
    """Resolves aliases and qualifies names with their LiteLLM provider."""

    def __init__(self, aliases: Mapping[str, str] | None = None):
        self.aliases = {**DEFAULT_ALIASES, **(aliases or {})}

    def set_alias(self, alias: str, model: str) -> None:
        if not alias or not model:
            raise ArgumentError("alias", "alias and model must be non-empty strings")
        self.aliases[alias] = model
        self.resolve.cache_clear()

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one resolver per client, bounded
    def resolve(self, model: str) -> ModelRef:
        target = self.aliases.get(model, model)
        if target != model:
            _logger.info("Model alias %r resolves to %r", model, target)
        prefix, _, rest = target.partition("/")
        if prefix == OFFLINE_PROVIDER and rest:
            return ModelRef(model, target, OFFLINE_PROVIDER)
        litellm = litellm_module()
        if rest and prefix in litellm.provider_list:
            return ModelRef(model, target, prefix)
        try:
            bare, provider, _, _ = litellm.get_llm_provider(target)
        except Exception as exc:
            raise ArgumentError(
                "model",
                f"LiteLLM does not know which provider serves {model!r}; use a provider-qualified name "
                f"such as 'openai/{model}' or 'ollama/{model}' ({exc})",
            ) from None
        return ModelRef(model, f"{provider}/{bare}", provider)
