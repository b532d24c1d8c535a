"""Tokens and prices: counting, pre-call estimates and the cost of an answer.

Prices come from LiteLLM's price map (read from the installed package, never the network) unless
overridden with ``set_model_price``. A model without a known price costs ``None``, with one
warning per model, never a silent $0.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_lite_plugin.core.attachments import split_images, url_tokens
from mlflow_lite_plugin.core.errors import ArgumentError, check_number
from mlflow_lite_plugin.core.model_names import OFFLINE_PROVIDER, ModelRef, litellm_module
from mlflow_lite_plugin.core.offload import offload

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """USD per token."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input + completion_tokens * self.output


FREE = Price(0.0, 0.0)

# Runtimes on your own machine: $0 per token unless you set a price (for your hardware, say).
LOCAL_PROVIDERS = frozenset({"ollama", "ollama_chat", "llamafile", "lm_studio"})

# Per-token rates of LiteLLM's price map that a call can be billed at besides the base price:
# long-context tiers (input_cost_per_token_above_200k_tokens), priority processing, cache writes
# (cache_creation_input_token_cost), audio/image/reasoning tokens.
_INPUT_RATE = re.compile(r"^(input_cost_per_(\w+_)?token|cache_creation_input(_\w+)?_token_cost)(_\w+)?$")
_OUTPUT_RATE = re.compile(r"^output_cost_per_(\w+_)?token(_\w+)?$")
_TIER = re.compile(r"above_(\d+)k_tokens")


def _rate_applies(key: str, tokens: int, service_tier: str | None, cache_writes: bool, audio: bool) -> bool:
    """Whether the price-map rate ``key`` can apply to a call (see ``Pricing.highest_price``)."""
    if "batches" in key:
        return False
    for tier in ("priority", "flex"):
        if tier in key and service_tier != tier:
            return False
    threshold = _TIER.search(key)
    if threshold and tokens <= int(threshold.group(1)) * 1000:
        return False
    if key.startswith("cache_creation") and not cache_writes:
        return False
    return audio or "audio" not in key


@dataclass
class _Listed:
    """A model's entry in LiteLLM's price map, as of the map's ``generation``."""

    generation: int | None
    price: Price | None
    rates: dict[str, float] | None = None  # its conditional per-token rates, read when first needed


_loaded_tokenizers: set[str] = set()  # models counted with in this process (see aload_tokenizers)


class Pricing:
    def __init__(self) -> None:
        self._overrides: dict[str, Price] = {}
        self._unknown: set[str] = set()
        self._listings: dict[str, _Listed] = {}  # LiteLLM's price map, per model (see _listed)
        self._lock = threading.Lock()

    def set_price(self, model: ModelRef, input_per_million: float, output_per_million: float) -> None:
        for name, value in (("input_per_million", input_per_million), ("output_per_million", output_per_million)):
            if value is None:
                raise ArgumentError(name, "is required (USD per million tokens)")
            check_number(name, value, allow_zero=True, unit="USD per million tokens")
        price = Price(input_per_million / 1e6, output_per_million / 1e6)
        with self._lock:
            self._overrides[model.name] = price
            self._overrides[model.requested] = price
            self._unknown.discard(model.name)

    def price(self, model: ModelRef) -> Price | None:
        """The per-token price of ``model``, or None (warned once) when nobody knows it."""
        override = self._overrides.get(model.name) or self._overrides.get(model.requested)
        if override is not None:
            return override
        if model.provider == OFFLINE_PROVIDER:
            return FREE
        price = self._listed(model).price
        if price is None:
            self._warn_unknown(model)
        return price

    def _listed(self, model: ModelRef) -> _Listed:
        """What LiteLLM's price map says of ``model``, remembered until the map changes: resolving
        a model in it costs ~1 ms, several times per call. LiteLLM counts its map's changes
        (``register_model`` and the like) in ``litellm.utils._model_cost_mutation_generation``;
        a LiteLLM without that counter is asked every time."""
        litellm = litellm_module()
        generation = getattr(getattr(litellm, "utils", None), "_model_cost_mutation_generation", None)
        known = self._listings.get(model.name)
        if known is not None and generation is not None and known.generation == generation:
            return known
        try:
            input_cost, output_cost = litellm.cost_per_token(model=model.name, prompt_tokens=1, completion_tokens=1)
            price: Price | None = Price(float(input_cost), float(output_cost))
        except Exception:
            price = FREE if model.provider in LOCAL_PROVIDERS else None
        listed = _Listed(generation, price)
        if generation is not None:
            self._listings[model.name] = listed
        return listed

    def highest_price(
        self, model: ModelRef, *, tokens: int = 0, service_tier: str | None = None, cache_writes: bool = False,
        audio: bool = False,
    ) -> Price | None:
        """The most ``model`` can charge per token for a call like this one (None when its price
        is unknown): the highest input and output rates of LiteLLM's price map that can apply to
        it, so a worst case bounds every bill. Rates tied to a condition count only under it: a
        long-context tier when ``tokens`` pass its threshold, priority or flex processing when
        ``service_tier`` asks for it, cache writes when the request marks ``cache_control``,
        audio tokens with audio. Batch-API rates never apply here; reasoning and image tokens
        always may. A price set with ``set_model_price`` is the price."""
        price = self.price(model)
        if price is None or price is FREE or model.name in self._overrides or model.requested in self._overrides:
            return price
        listed = self._listed(model)
        rates = listed.rates
        if rates is None:
            try:
                info = litellm_module().get_model_info(model=model.name) or {}
            except Exception:
                info = {}
            rates = listed.rates = {
                key: float(value)
                for key, value in info.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                and (_INPUT_RATE.match(key) or _OUTPUT_RATE.match(key))
            }
        inputs, outputs = [price.input], [price.output]
        for key, value in rates.items():
            if _rate_applies(key, tokens, service_tier, cache_writes, audio):
                (inputs if _INPUT_RATE.match(key) else outputs).append(value)
        return Price(max(inputs), max(outputs))

    def breakdown(
        self, model: ModelRef, prompt_tokens: int, completion_tokens: int, raw: Any = None
    ) -> dict[str, float] | None:
        """USD of a call as MLflow's ``mlflow.llm.cost`` wants it (input, output, total), or None
        when the price is unknown. With the provider's ``raw`` response LiteLLM's own accounting
        gives the total (cached and reasoning tokens, tiers); otherwise tokens times the price."""
        price = self.price(model)
        if price is None:
            return None
        total = price.cost(prompt_tokens, completion_tokens)
        overridden = model.name in self._overrides or model.requested in self._overrides
        if raw is not None and price is not FREE and not overridden:
            # LiteLLM priced the response as it returned it (its hidden response_cost); asking it
            # again costs ~2 ms a call. When it could not, the per-token price is close enough.
            priced = getattr(raw, "_hidden_params", None) or {}
            if isinstance(priced.get("response_cost"), (int, float)):
                total = float(priced["response_cost"])
            else:
                with contextlib.suppress(Exception):
                    total = float(litellm_module().completion_cost(completion_response=raw, model=model.name))
        input_cost = prompt_tokens * price.input
        return {"input_cost": input_cost, "output_cost": total - input_cost, "total_cost": total}

    def cost(self, model: ModelRef, prompt_tokens: int, completion_tokens: int, raw: Any = None) -> float | None:
        """USD for a call (see :meth:`breakdown`), or None when the price is unknown."""
        parts = self.breakdown(model, prompt_tokens, completion_tokens, raw)
        return None if parts is None else parts["total_cost"]

    def count_tokens(self, model: ModelRef, text: str | Sequence[dict[str, Any]]) -> int:
        """Tokens of a text or a message list with the model's tokenizer (bundled, offline)."""
        if not isinstance(text, Sequence):
            raise ArgumentError("text", f"must be a string or a list of messages, got {type(text).__name__}")
        litellm = litellm_module()
        if isinstance(text, str):
            return int(litellm.token_counter(model=model.name, text=text))
        # Images by their pixel size (LiteLLM would download URL images to measure them).
        messages, images = split_images(list(text))
        tokens = int(litellm.token_counter(model=model.name, messages=messages))
        return tokens + sum(url_tokens(url, model.provider) for url in images)

    async def aload_tokenizers(self, models: Sequence[ModelRef]) -> None:
        """Load the tokenizers of ``models`` off the event loop, once per process: the first count
        with a model's tokenizer reads its vocabulary (tiktoken's o200k: ~0.3 s), which would stall
        every other task. After that, counting is cheap enough to stay on the loop."""
        for model in models:
            if model.name not in _loaded_tokenizers:
                await offload(self.count_tokens, model, "")
                _loaded_tokenizers.add(model.name)

    def _warn_unknown(self, model: ModelRef) -> None:
        with self._lock:
            if model.name in self._unknown:
                return
            self._unknown.add(model.name)
        _logger.warning(
            "No known price for model %r: its cost is reported as None. Set one with "
            "ml.set_model_price(%r, input_per_million=..., output_per_million=...).",
            model.name,
            model.requested,
        )


def usd(amount: float) -> str:
    """$10.00, $9.9951, $0.000012: at least cents, up to 6 decimals, no trailing zeros past cents."""
    text = f"{amount:,.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"${whole}.{decimals.ljust(2, '0')}"
