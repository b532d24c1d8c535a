"""The request data class and the argument checks that run before any network call."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mlflow_lite_plugin.core.attachments import Image, attach, load_images
from mlflow_lite_plugin.core.errors import ArgumentError, check_number, did_you_mean
from mlflow_lite_plugin.core.messages import last_user_text
from mlflow_lite_plugin.core.model_names import litellm_module
from mlflow_lite_plugin.core.results import ValidationResult

# Keywords that are ours, not LiteLLM's: they shape the pipeline and are never sent to a provider.
PIPELINE_KEYWORDS = frozenset(
    {"num_retries", "fallbacks", "tags", "provider_params", "namespace", "cache", "validate", "on_fail", "max_attempts",
     "image"}
)

# Transient errors (429, 5xx, timeouts) are retried twice by default, as the OpenAI SDK does
# underneath LiteLLM; ours are visible (one span each) and that SDK retry is switched off.
DEFAULT_NUM_RETRIES = 2

# Provider-specific keywords LiteLLM forwards that are in none of its own lists.
_PROVIDER_EXTRAS = frozenset(
    {"top_k", "extra_body", "extra_query", "keep_alive", "safety_settings", "format", "mirostat"}
)

# The common OpenAI parameters, checked here: a wrong type or range would otherwise reach the
# provider (a paid round trip for a 400) or fail inside LiteLLM's encoder. Provider-specific
# parameters pass unchecked through provider_params.
_RANGES: Mapping[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
MAX_TOKENS = 10_000_000  # far above any model's output limit: larger is a mistake, such as 1e12
_COUNTS: Mapping[str, tuple[int, int]] = {
    "max_tokens": (1, MAX_TOKENS),
    "max_completion_tokens": (1, MAX_TOKENS),
    "n": (1, 128),  # OpenAI's own limit
    "top_logprobs": (0, 20),
}
_FLAGS = ("logprobs", "parallel_tool_calls")
ROLES = ("system", "user", "assistant", "tool", "developer", "function")


@functools.cache
def known_keywords() -> frozenset[str]:
    """Every keyword LiteLLM's ``completion()`` understands, read from the installed LiteLLM."""
    import inspect

    litellm = litellm_module()
    names = set(inspect.signature(litellm.completion).parameters) - {"kwargs", "model", "messages"}
    names |= set(getattr(litellm, "all_litellm_params", ()))
    names |= set(getattr(litellm, "OPENAI_CHAT_COMPLETION_PARAMS", ()))
    return frozenset(names | _PROVIDER_EXTRAS)


class StreamCheck(Protocol):
    def feed(self, chunk: str) -> None:
        """Check the next chunk; raises ``StreamViolation`` once a violation is certain."""


class AnswerRules(Protocol):
    """A call's ``validate=`` rules as the pipeline uses them. The validation control builds them
    (``build_request(rules=...)``), so core knows no control."""

    on_fail: str
    max_attempts: int

    def check(self, text: str, count_tokens: Callable[[str], int] | None = None) -> ValidationResult: ...

    def incremental(self, count_tokens: Callable[[str], int] | None = None) -> StreamCheck: ...

    def describe(self) -> dict[str, Any]: ...

    def repair_prompt(self, result: ValidationResult) -> str: ...


# Builds the rules of ``validate=`` from (spec, on_fail, max_attempts); raises ArgumentError.
RulesParser = Callable[[Any, Any, Any], AnswerRules]


@dataclass
class Request:
    """One call as the pipeline sees it: the model asked for, messages, and pass-through params."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    num_retries: int = DEFAULT_NUM_RETRIES
    fallbacks: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    namespace: str | None = None  # cache scope per user/tenant: entries never cross namespaces
    use_cache: bool = True  # cache=False on a call bypasses every cache
    validator: AnswerRules | None = None  # validate= rules, with on_fail and max_attempts
    images: tuple[Image, ...] = ()  # image= attachments (already in messages; kept for traces)
    template: str | None = None  # the prompt template's name (a template call): scopes few-shot examples

    @property
    def max_answers(self) -> int:
        """How many answers the provider may be asked for: more than one when invalid answers are re-asked."""
        if self.validator is not None and self.validator.on_fail == "retry":
            return self.validator.max_attempts
        return 1

    @property
    def prompt_text(self) -> str:
        """The text of the last user message (what most stages key on)."""
        return last_user_text(self.messages)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ArgumentError("messages", "must be a non-empty list of {'role': ..., 'content': ...} dicts")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ArgumentError("messages", f"item {i} must be a dict with a 'role' key, got {message!r}")
        _check_message(i, message)
        checked.append(dict(message))
    return checked


def _check_message(i: int, message: Mapping[str, Any]) -> None:
    role = message["role"]
    if role not in ROLES:
        raise ArgumentError("messages", f"item {i}: role must be one of {', '.join(ROLES)}, got {role!r}")
    content = message.get("content")
    if content is None:
        # Only an assistant turn that calls tools may come without text.
        if role != "assistant" or not (message.get("tool_calls") or message.get("function_call")):
            raise ArgumentError("messages", f"item {i} ({role}) has no 'content'")
    elif isinstance(content, Sequence) and not isinstance(content, (str, bytes)):
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                raise ArgumentError(
                    "messages", f"item {i}: content part {j} must be a dict with a 'type', got {part!r}"
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ArgumentError(
                    "messages", f"item {i}: text part {j} needs a string 'text', got {part.get('text')!r}"
                )
    elif not isinstance(content, str):
        raise ArgumentError(
            "messages", f"item {i}: content must be a string or a list of content parts, got {type(content).__name__}"
        )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise ArgumentError("messages", f"item {i}: a tool message needs the 'tool_call_id' it answers")
    where = _non_finite(message)
    if where is not None:
        raise ArgumentError("messages", f"item {i}: {where} is not a finite number (NaN and infinity are not JSON)")


def _check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check the common OpenAI parameters in ``params``; returns the integer counts as plain
    ints (a numpy int, say from a served model's params, is not JSON)."""
    counts: dict[str, Any] = {}
    for name, (low, high) in _RANGES.items():
        value = params.get(name)
        if value is None:
            continue
        real = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not real or not low <= value <= high:
            raise ArgumentError(name, f"must be a number from {low:g} to {high:g}, got {value!r}")
    for name, (low, high) in _COUNTS.items():
        value = params.get(name)
        if value is None:
            continue
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not low <= int(value) <= high:
            raise ArgumentError(name, f"must be a whole number from {low} to {high:_}, got {value!r}")
        counts[name] = int(value)
    seed = params.get("seed")
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise ArgumentError("seed", f"must be a whole number, got {seed!r}")
    if seed is not None:
        counts["seed"] = int(seed)
    for name in _FLAGS:
        if params.get(name) is not None and not isinstance(params[name], bool):
            raise ArgumentError(name, f"must be True or False, got {params[name]!r}")
    stop = params.get("stop")
    if stop is not None and not isinstance(stop, str) and (
        not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop)
    ):
        raise ArgumentError("stop", f"must be a string or a list of strings, got {stop!r}")
    if params.get("user") is not None and not isinstance(params["user"], str):
        raise ArgumentError("user", f"must be a string, got {params['user']!r}")
    check_number("timeout", params.get("timeout"), unit="seconds")
    for name, value in params.items():
        where = _non_finite(value, name)
        if where is not None:
            raise ArgumentError(name, f"{where} is not a finite number (NaN and infinity are not JSON)")
    return counts


def _non_finite(value: Any, path: str = "", depth: int = 0) -> str | None:
    """The path of the first NaN or infinity inside ``value`` (dicts and lists), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "a value")
    if depth > 32:  # deeper is no JSON anyone sends; the encoder reports it if it matters
        return None
    if isinstance(value, Mapping):
        items: Any = ((f"{path}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{k}]", v) for k, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _non_finite(item, where, depth + 1)
        if found is not None:
            return found
    return None


def _check_keywords(kwargs: Mapping[str, Any]) -> None:
    known = known_keywords()
    for name in kwargs:
        if name in known or name in PIPELINE_KEYWORDS:
            continue
        hint = did_you_mean(name, sorted(known | PIPELINE_KEYWORDS), cutoff=0.75)
        raise ArgumentError(
            name,
            f"unknown keyword argument.{hint} Pass provider-specific parameters as provider_params={{...}}.",
        )


def check_tags(tags: Any) -> dict[str, str]:
    """A call's trace tags: a dict of str to str (MLflow stores tags as text; a number would be
    refused or changed at export, after the call was paid for)."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ArgumentError("tags", f"must be a dict of str to str, got {tags!r}")
    return dict(tags)


def build_request(
    *,
    model: str | None,
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    system: str | None,
    kwargs: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    stream: bool = False,
    rules: RulesParser | None = None,
) -> Request:
    """Check the arguments of query/stream and build a :class:`Request`; raises ArgumentError.
    ``rules`` parses ``validate=`` (the validation control's parser; without one such rules are refused)."""
    if not isinstance(model, str) or not model.strip():
        raise ArgumentError("model", f"must be a non-empty model name such as 'gpt-4o', got {model!r}")
    if prompt is not None and messages is not None:
        raise ArgumentError("prompt", "give either prompt= or messages=, not both")
    if messages is not None:
        msgs = _check_messages(messages)
    elif isinstance(prompt, str) and prompt.strip():
        msgs = [{"role": "user", "content": prompt}]
    else:
        raise ArgumentError("prompt", f"must be a non-empty string (or pass messages=), got {prompt!r}")
    if system is not None:
        if not isinstance(system, str):
            raise ArgumentError("system", f"must be a string, got {type(system).__name__}")
        msgs = [{"role": "system", "content": system}] + [m for m in msgs if m.get("role") != "system"]

    merged = {**(defaults or {}), **kwargs}
    _check_keywords(merged)
    if "stream" in merged:
        raise ArgumentError("stream", "use ml.stream(...) for streaming instead of stream=")

    num_retries = merged.pop("num_retries", DEFAULT_NUM_RETRIES)
    if num_retries is None:
        num_retries = DEFAULT_NUM_RETRIES
    if not isinstance(num_retries, int) or isinstance(num_retries, bool) or num_retries < 0:
        raise ArgumentError("num_retries", f"must be an int >= 0, got {num_retries!r}")
    fallbacks = merged.pop("fallbacks", None) or ()
    if isinstance(fallbacks, str) or not all(isinstance(f, str) and f.strip() for f in fallbacks):
        raise ArgumentError("fallbacks", f"must be a list of model names, got {fallbacks!r}")
    tags = check_tags(merged.pop("tags", None))
    namespace = merged.pop("namespace", None)
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ArgumentError("namespace", f"must be a non-empty string, got {namespace!r}")
    use_cache = merged.pop("cache", True)
    if not isinstance(use_cache, bool):
        raise ArgumentError("cache", f"must be True or False, got {use_cache!r}")
    provider_params = merged.pop("provider_params", None) or {}
    if not isinstance(provider_params, Mapping):
        raise ArgumentError("provider_params", f"must be a dict, got {provider_params!r}")
    merged.update(_check_params({k: v for k, v in merged.items() if k not in PIPELINE_KEYWORDS}))
    where = _non_finite(provider_params, "provider_params")
    if where is not None:
        raise ArgumentError("provider_params", f"{where} is not a finite number (NaN and infinity are not JSON)")
    image = merged.pop("image", None)
    images = tuple(load_images(image)) if image is not None else ()
    if images:
        msgs = attach(msgs, images)
    validator = _validator(
        merged.pop("validate", None), merged.pop("on_fail", None), merged.pop("max_attempts", None), rules
    )
    if stream and validator is not None and validator.on_fail == "retry":
        raise ArgumentError(
            "on_fail", "'retry' cannot re-ask a stream whose chunks were already delivered; use 'raise' or 'return'"
        )

    return Request(
        model=model.strip(),
        messages=msgs,
        params={**merged, **provider_params},
        num_retries=num_retries,
        fallbacks=tuple(fallbacks),
        tags={str(k): str(v) for k, v in tags.items()},
        stream=stream,
        namespace=namespace,
        use_cache=use_cache,
        validator=validator,
        images=images,
    )


def _validator(spec: Any, on_fail: Any, max_attempts: Any, rules: RulesParser | None) -> AnswerRules | None:
    if spec is None or spec is False:
        if on_fail is not None or max_attempts is not None:
            name = "on_fail" if on_fail is not None else "max_attempts"
            raise ArgumentError(name, "only applies with validate= rules")
        return None
    if rules is None:
        raise ArgumentError("validate", "these arguments are checked without the validation control")
    return rules(spec, on_fail, max_attempts)
