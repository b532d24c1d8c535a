"""Complexity routing: send each prompt to the cheapest tier that can answer it, upgrade on failure.

    r = smart_query(client, prompt="...", complexity="auto", fallback="quality")
    r.routing  # RoutingDecision(score, level, reasons, tier, model, upgraded_from, upgrade_reason)

**Tiers** are model names ordered cheapest to best (default ``{"fast": "gpt-4o-mini", "quality":
"gpt-4o"}``). A complexity score in [0, 1] picks one: ``thresholds`` are ascending cut-offs, one
fewer than the tiers (default ``[0.35]`` for two tiers, evenly spread over 0.35..0.70 for more);
a score at or above the i-th cut-off goes past tier i.

**The complexity estimate** reads the prompt itself with regular expressions: no model call, a
fraction of a millisecond, deterministic, and every point of the score comes with a reason. Cues
are read from the last user message; the length counts every message (system included) at about
4 characters per token. Each signal counts once; the sum is clipped to [0, 1]:

=============================================================  =======  ==============================
signal                                                         weight   reason
=============================================================  =======  ==============================
prompt of >= 2000 estimated tokens                             +0.40    "very long prompt (~N tokens)"
prompt of >= 600 estimated tokens                              +0.20    "long prompt (~N tokens)"
code: a fenced block, 2+ code-like lines, or a coding task     +0.35    "code block", "code in the
(debug, refactor, traceback, "write a function", a language)            prompt", "coding task (debug)"
math: an equation or formula, or math terms (integral, prove)  +0.35    "math expression", "math terms
                                                                        (integral)"
reasoning cues (why, explain, compare, trade-offs, design...)  +0.25    "reasoning cue (explain)"
... two or more different ones                                 +0.35    "reasoning cues (compare, why)"
2 questions (``?``) / 3 or more                                +0.15    "2 questions" / "3 questions"
                                                               / +0.35
3+ numbered or bulleted items                                  +0.15    "multi-part request (4 items)"
asks for a detailed/long answer ("in detail", "essay", "500    +0.20    "asks for a detailed/long
words", ``max_tokens >= 1000``)                                         answer (in detail)"
asks for a short answer ("one word", "briefly", "yes or no",   -0.10    "asks for a short answer
``max_tokens <= 64``)                                                   (briefly)"
6+ conversation messages                                       +0.10    "long conversation (8 messages)"
tools offered (``tools=``)                                     +0.15    "tool use (2 tools)"
=============================================================  =======  ==============================

So a greeting or a factual one-liner scores 0 (fast), one reasoning cue alone stays fast (0.25),
while code, math, three questions or "explain ... in detail" (0.45) go to the quality tier.

**Upgrades.** With ``fallback`` naming a higher tier, an answer on a cheaper tier that raises
``ValidationError`` or ``ProviderError`` (or comes back with ``r.validation.passed`` False under
``on_fail="return"``) is asked again on that tier, once. Both calls are traced; their trace tags
carry the decision (``mlflow_lite.route_*``), the second one also ``mlflow_lite.route_upgraded_from``
and ``mlflow_lite.route_upgrade_reason``. The returned ``r.cost`` and ``r.usage`` include the
failed cheap answer, as validation re-asks do.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.core.errors import ArgumentError, ProviderError, ValidationError
from mlflow_lite_plugin.core.messages import content_text, last_user_text
from mlflow_lite_plugin.core.pipeline import Settings
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow_lite_plugin.core.response import Response

logger = logging.getLogger(__name__)

DEFAULT_TIERS: Mapping[str, str] = {"fast": "gpt-4o-mini", "quality": "gpt-4o"}
DEFAULT_THRESHOLD = 0.35  # the first cut-off: "high" complexity starts here
_TOP_THRESHOLD = 0.70  # the last default cut-off when there are more than two tiers
CHARS_PER_TOKEN = 4  # the usual rough estimate; a tokenizer would import LiteLLM for no gain

_MAX_REASON_CHARS = 300  # an upgrade reason quotes an error message; keep tags readable


class _FromRouter:
    """The default of ``smart_query(fallback=...)``: the router's own fallback."""

    def __repr__(self) -> str:
        return "FROM_ROUTER"


FROM_ROUTER: Any = _FromRouter()

# Level words accepted where a tier is named, and the tier index each stands for.
_COMPLEXITY_LEVELS: Mapping[str, int] = {"low": 0, "high": -1}
_FALLBACK_LEVELS: Mapping[str, int] = {"quality": -1}


# -- the complexity estimate --

_FLAGS = re.IGNORECASE | re.MULTILINE

_CODE_FENCE = re.compile(r"```")
_CODE_LINE = re.compile(
    r"^\s*(def \w+\(|class \w+[:(]|import \w+|from [\w.]+ import |#include|function \w*\s*\(|"
    r"(public|private|static) \w|(const|let|var) \w+\s*=|select\b.+\bfrom\b|return\b.*;|for\s*\(|if\s*\(.*\)\s*\{)"
    r"|[;{]\s*$|=>|\(\);",
    _FLAGS,
)
_CODE_TASK = re.compile(
    r"\b(debug\w*|refactor\w*|stack ?trace|traceback|segfault|compiler? errors?|unit tests?|regex|"
    r"regular expressions?|time complexity|python|javascript|typescript|golang|rust|c\+\+|sql|bash)\b"
    r"|\b(write|implement|code|fix)\b[^.?!\n]{0,40}?"
    r"\b(function|script|program|class|method|endpoint|algorithm|code|bug)\b",
    _FLAGS,
)
_MATH_EXPRESSION = re.compile(
    r"\\(frac|int|sum|sqrt|lim)\b|[∫∑√∂∞≤≥≠π]"  # LaTeX or math symbols
    r"|\b\d*[a-z]\s*(\^|\*\*)\s*\d"  # a power of a variable: x^2, 3x**2
    r"|\b\d+\s*[a-z]\b\s*[-+=]"  # a coefficient and a variable: 3x + ...
    r"|\b[a-z]\s*[-+*/]\s*\d+\s*=|=\s*\d+\s*[-+*/]\s*[a-z]\b"  # an equation in a variable: x + 3 = 7
    r"|\d\s*[-+*/×÷]\s*\(?\s*\d+(\.\d+)?\s*\)?\s*[-+*/×÷]\s*\(?\s*\d",  # arithmetic of 3+ terms  # noqa: RUF001 (the multiplication sign is meant)
    _FLAGS,
)
_MATH_TERMS = re.compile(
    r"\b(integral|integrate|derivative|differentiate|equations?|theorem|proof|prove|lemma|eigen\w*|"
    r"matrix|matrices|probability|polynomial|logarithm|calculus|solve for|expected value|variance|factorial)\b",
    _FLAGS,
)
_REASONING = re.compile(
    r"\b(why|explain\w*|analy[sz]\w*|compar\w*|contrast\w*|evaluat\w*|assess\w*|justif\w*|"
    r"step[- ]by[- ]step|trade-?offs?|pros and cons|implications?|critiqu\w*|deduc\w*|infer\w*|"
    r"design\w*|architect\w*|strateg\w*)\b",
    _FLAGS,
)
_QUESTION = re.compile(r"\?+")
_LIST_ITEM = re.compile(r"^\s*(\d+[.)]|[-*•])\s+\S", _FLAGS)
_DETAILED = re.compile(
    r"\b(in detail|detailed|in[- ]depth|comprehensive\w*|thorough\w*|elaborate|exhaustive\w*|extensive\w*|"
    r"essay|long[- ]form|full explanation)\b",
    _FLAGS,
)
_SHORT = re.compile(
    r"\b(one word|single word|one sentence|one line|briefly|brief|in short|short answer|yes or no|tl;?dr|concise\w*)\b",
    _FLAGS,
)
_SIZE = re.compile(r"\b(\d+)[\s-]*(word|paragraph|page|section)s?\b", _FLAGS)
_LONG_SIZE = {"word": 300, "paragraph": 3, "page": 1, "section": 3}  # at least this many: long
_SHORT_WORDS = 50  # "in 30 words" or fewer: short


@dataclass
class Complexity:
    """How hard a prompt looks: ``score`` in [0, 1], ``level`` "low" or "high", and the
    ``reasons`` that added (or took off) points."""

    score: float
    level: str
    reasons: list[str] = field(default_factory=list)


@dataclass
class _Signal:
    weight: float
    reason: str


def estimate_complexity(
    prompt: str | Sequence[Mapping[str, Any]] | None = None,
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
    system: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    **params: Any,
) -> Complexity:
    """Score how hard ``prompt`` (a string, or a message list) looks; see the module docstring
    for the signals and weights. ``params`` are the call's ``query`` keywords: ``max_tokens`` and
    ``tools`` count, the others are ignored. ``level`` is "high" from ``threshold`` up."""
    chat = _as_messages(prompt, messages, system)
    cue_text = last_user_text(chat)
    signals = [
        *_length(chat),
        *_code(cue_text),
        *_math(cue_text),
        *_reasoning(cue_text),
        *_questions(cue_text),
        *_parts(cue_text),
        *_size(cue_text, params.get("max_tokens")),
        *_conversation(chat),
        *_tools(params.get("tools")),
    ]
    score = round(min(1.0, max(0.0, sum(s.weight for s in signals))), 3)
    return Complexity(score, "high" if score >= threshold else "low", [s.reason for s in signals])


def _as_messages(
    prompt: str | Sequence[Mapping[str, Any]] | None,
    messages: Sequence[Mapping[str, Any]] | None,
    system: str | None,
) -> list[Mapping[str, Any]]:
    if prompt is not None and messages is not None:
        raise ArgumentError("prompt", "give either prompt= or messages=, not both")
    if isinstance(prompt, str):
        chat: list[Mapping[str, Any]] = [{"role": "user", "content": prompt}]
    elif prompt is not None or messages is not None:
        given = prompt if prompt is not None else messages
        if isinstance(given, (bytes, Mapping)) or not isinstance(given, Sequence):
            raise ArgumentError("messages", f"must be a list of {{'role': ..., 'content': ...}} dicts, got {given!r}")
        chat = [m for m in given if isinstance(m, Mapping)]
    else:
        raise ArgumentError("prompt", "give a prompt (or messages=) to estimate its complexity")
    return ([{"role": "system", "content": system}] if system else []) + chat


def _length(chat: Sequence[Mapping[str, Any]]) -> list[_Signal]:
    tokens = sum(len(content_text(m.get("content"))) for m in chat) // CHARS_PER_TOKEN
    if tokens >= 2000:
        return [_Signal(0.40, f"very long prompt (~{tokens} tokens)")]
    if tokens >= 600:
        return [_Signal(0.20, f"long prompt (~{tokens} tokens)")]
    return []


def _code(text: str) -> list[_Signal]:
    if _CODE_FENCE.search(text):
        return [_Signal(0.35, "code block")]
    if len(_CODE_LINE.findall(text)) >= 2:
        return [_Signal(0.35, "code in the prompt")]
    task = _CODE_TASK.search(text)
    return [_Signal(0.35, f"coding task ({task.group(0).lower()})")] if task else []


def _math(text: str) -> list[_Signal]:
    if _MATH_EXPRESSION.search(text):
        return [_Signal(0.35, "math expression")]
    terms = _distinct(_MATH_TERMS, text)
    return [_Signal(0.35, f"math terms ({', '.join(terms)})")] if terms else []


def _reasoning(text: str) -> list[_Signal]:
    cues = _distinct(_REASONING, text)
    if not cues:
        return []
    if len(cues) == 1:
        return [_Signal(0.25, f"reasoning cue ({cues[0]})")]
    return [_Signal(0.35, f"reasoning cues ({', '.join(cues)})")]


def _questions(text: str) -> list[_Signal]:
    count = len(_QUESTION.findall(text))
    if count >= 3:
        return [_Signal(0.35, f"{count} questions")]
    return [_Signal(0.15, "2 questions")] if count == 2 else []


def _parts(text: str) -> list[_Signal]:
    items = len(_LIST_ITEM.findall(text))
    return [_Signal(0.15, f"multi-part request ({items} items)")] if items >= 3 else []


def _size(text: str, max_tokens: Any) -> list[_Signal]:
    """Requested output size: detailed/long (+0.20) and short (-0.10), each counted once."""
    long_cues = _distinct(_DETAILED, text)
    short_cues = _distinct(_SHORT, text)
    for number, unit in _SIZE.findall(text):
        unit = unit.lower()
        if int(number) >= _LONG_SIZE[unit]:
            long_cues.append(f"{number} {unit}s")
        elif unit == "word" and int(number) <= _SHORT_WORDS:
            short_cues.append(f"{number} words")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        if max_tokens >= 1000:
            long_cues.append(f"max_tokens={max_tokens}")
        elif max_tokens <= 64:
            short_cues.append(f"max_tokens={max_tokens}")
    signals = []
    if long_cues:
        signals.append(_Signal(0.20, f"asks for a detailed/long answer ({', '.join(long_cues[:3])})"))
    if short_cues:
        signals.append(_Signal(-0.10, f"asks for a short answer ({', '.join(short_cues[:3])})"))
    return signals


def _conversation(chat: Sequence[Mapping[str, Any]]) -> list[_Signal]:
    turns = sum(1 for m in chat if m.get("role") != "system")
    return [_Signal(0.10, f"long conversation ({turns} messages)")] if turns >= 6 else []


def _tools(tools: Any) -> list[_Signal]:
    if not tools or not isinstance(tools, Sequence):
        return []
    return [_Signal(0.15, f"tool use ({len(tools)} tool{'s' if len(tools) != 1 else ''})")]


def _distinct(pattern: re.Pattern[str], text: str, limit: int = 3) -> list[str]:
    """The first ``limit`` different matches, lower-cased, in order of appearance."""
    found = dict.fromkeys(match.group(0).lower() for match in pattern.finditer(text))
    return list(found)[:limit]


# -- the router --


@dataclass
class RoutingDecision:
    """Why a call went where it went: the complexity estimate, the tier and its model, and the
    upgrade to a better tier, if the first answer failed."""

    score: float
    level: str
    reasons: list[str]
    tier: str
    model: str
    upgraded_from: str | None = None
    upgrade_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """The decision as MLflow trace tags (strings), on the trace of every routed call."""
        tags = {
            schema.ROUTE_TIER: self.tier,
            schema.ROUTE_MODEL: self.model,
            schema.ROUTE_SCORE: f"{self.score:.3f}",
            schema.ROUTE_LEVEL: self.level,
            schema.ROUTE_REASONS: "; ".join(self.reasons) or "no complexity cues",
        }
        if self.upgraded_from is not None:
            tags[schema.ROUTE_UPGRADED_FROM] = self.upgraded_from
            tags[schema.ROUTE_UPGRADE_REASON] = self.upgrade_reason or ""
        return tags


@dataclass(frozen=True)
class RoutingSettings(Settings):
    """One ``set_routing`` call: model ``tiers``, cheapest first (None: ``DEFAULT_TIERS``), the
    complexity cut-offs between them (``thresholds``: ascending, one fewer than the tiers; None: see
    the module docstring) and the ``fallback`` tier a failed cheaper answer is upgraded to (None:
    never upgrade; "quality": the best tier unless a tier has that name).

    The router is not a pipeline stage: it runs around calls (``smart_query`` picks the model, then
    may ask a second time), not inside one, so these settings build a :class:`Router` held by the
    client, not a stage ``install`` adds."""

    stage = "routing"
    tiers: Mapping[str, str] | None = None
    thresholds: Sequence[float] | None = None
    fallback: str | None = "quality"

    def __post_init__(self) -> None:
        tiers = _check_tiers(DEFAULT_TIERS if self.tiers is None else self.tiers)
        if self.tiers is not None:
            object.__setattr__(self, "tiers", tiers)  # a plain dict: saved and shown as given
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", _check_thresholds(self.thresholds, len(tiers)))
        if self.fallback is not None:
            _tier_named(tiers, self.fallback, "fallback", _FALLBACK_LEVELS, also=(None,))


class Router:
    """Tiers of models, cheapest first, the complexity cut-offs between them and the upgrade tier
    (see :class:`RoutingSettings`, which checks them)."""

    def __init__(
        self,
        tiers: Mapping[str, str] | None = None,
        *,
        thresholds: Sequence[float] | None = None,
        fallback: str | None = "quality",
    ):
        settings = RoutingSettings(tiers, thresholds, fallback)
        self.tiers = dict(DEFAULT_TIERS if settings.tiers is None else settings.tiers)
        self.thresholds = (
            _default_thresholds(len(self.tiers)) if settings.thresholds is None else list(settings.thresholds)
        )
        self.fallback = fallback

    def describe(self) -> dict[str, Any]:
        """The routing in force (tiers, cut-offs, fallback), as a stage's ``describe()`` is."""
        return {"tiers": dict(self.tiers), "thresholds": list(self.thresholds), "fallback": self.fallback}

    def __repr__(self) -> str:
        return f"Router(tiers={self.tiers!r}, thresholds={self.thresholds!r}, fallback={self.fallback!r})"

    @property
    def names(self) -> list[str]:
        return list(self.tiers)

    def estimate(self, prompt: Any = None, **kwargs: Any) -> Complexity:
        """:func:`estimate_complexity`, "high" from this router's first cut-off."""
        cutoff = self.thresholds[0] if self.thresholds else DEFAULT_THRESHOLD
        return estimate_complexity(prompt, threshold=cutoff, **kwargs)

    def choose(self, complexity: Complexity | str) -> str:
        """The tier for an estimate (by score), a level ("low": cheapest, "high": best) or a tier name."""
        if isinstance(complexity, Complexity):
            return self.names[sum(1 for cut in self.thresholds if complexity.score >= cut)]
        return self.tier_named(complexity, "complexity", _COMPLEXITY_LEVELS, also=("auto",))

    def route(
        self,
        prompt: Any = None,
        *,
        complexity: str = "auto",
        messages: Sequence[Mapping[str, Any]] | None = None,
        **params: Any,
    ) -> RoutingDecision:
        """Where a call would go, without making it (``params``: the call's query keywords)."""
        estimate = self.estimate(prompt, messages=messages, **params)
        if complexity == "auto":
            tier, reasons = self.choose(estimate), estimate.reasons
        else:
            tier, reasons = self.choose(complexity), [f"complexity forced to {complexity!r}", *estimate.reasons]
        level = "low" if tier == self.names[0] else "high"
        return RoutingDecision(estimate.score, level, reasons, tier, self.tiers[tier])

    def upgrade_tier(self, tier: str, fallback: str | None) -> str | None:
        """The tier to re-ask on when ``tier`` fails: ``fallback``, if it is better than ``tier``."""
        if fallback is None:
            return None
        target = self.tier_named(fallback, "fallback", _FALLBACK_LEVELS, also=(None,))
        return target if self.names.index(target) > self.names.index(tier) else None

    def tier_named(self, name: Any, argument: str, levels: Mapping[str, int], also: Sequence[Any] = ()) -> str:
        """A tier name, or a level word of ``levels`` (word -> tier index: "low" -> 0, "high" -> -1)."""
        return _tier_named(self.tiers, name, argument, levels, also)


def _tier_named(
    tiers: Mapping[str, str], name: Any, argument: str, levels: Mapping[str, int], also: Sequence[Any] = ()
) -> str:
    if isinstance(name, str) and name in tiers:
        return name
    names = list(tiers)
    if isinstance(name, str) and name in levels:
        return names[levels[name]]
    choices = ", ".join(repr(choice) for choice in (*also, *levels, *names))
    raise ArgumentError(argument, f"must be one of {choices}; got {name!r}")


def _check_tiers(tiers: Any) -> dict[str, str]:
    if not isinstance(tiers, Mapping) or not tiers:
        raise ArgumentError("tiers", f"must be a dict of tier name to model, cheapest first; got {tiers!r}")
    for name, model in tiers.items():
        if not isinstance(name, str) or not name or not isinstance(model, str) or not model.strip():
            raise ArgumentError("tiers", f"tier names and models must be non-empty strings; got {name!r}: {model!r}")
        if name in ("auto", "low", "high"):
            raise ArgumentError("tiers", f"{name!r} is a complexity level, not a tier name; pick another")
    return dict(tiers)


def _default_thresholds(tiers: int) -> list[float]:
    if tiers <= 2:
        return [DEFAULT_THRESHOLD] * (tiers - 1)
    step = (_TOP_THRESHOLD - DEFAULT_THRESHOLD) / (tiers - 2)
    return [round(DEFAULT_THRESHOLD + i * step, 3) for i in range(tiers - 1)]


def _check_thresholds(thresholds: Any, tiers: int) -> list[float]:
    bad = ArgumentError(
        "thresholds",
        f"must be {tiers - 1} ascending score cut-offs in (0, 1], one per tier after the first; got {thresholds!r}",
    )
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise bad
    values = list(thresholds)
    cutoffs = all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in values)
    if not cutoffs or len(values) != tiers - 1 or values != sorted(set(values)):
        raise bad
    return [float(v) for v in values]


# -- routed calls --


def smart_query(
    client: Any,
    prompt: str | None = None,
    *,
    complexity: str = "auto",
    fallback: Any = FROM_ROUTER,
    messages: Sequence[Mapping[str, Any]] | None = None,
    router: Router | None = None,
    **query_kwargs: Any,
) -> Response:
    """Ask the tier that fits the prompt's complexity (see the module docstring) with
    ``client.query``; ``r.routing`` holds the decision, also on the trace as tags.

    ``complexity``: "auto" (estimated), "low", "high" or a tier name. ``fallback``: the tier an
    answer that fails validation or errors on a cheaper tier is re-asked on, once (None: never;
    default: the router's, "quality"). ``router``: default ``client.router``, else ``Router()``.
    Every other keyword goes to ``client.query``; the model is the router's to choose.
    """
    router = router or getattr(client, "router", None) or Router()
    if "model" in query_kwargs:
        raise ArgumentError("model", "smart_query picks the model from the router's tiers; use complexity='<tier>'")
    estimate_params = {k: query_kwargs[k] for k in ("system", "max_tokens", "tools") if k in query_kwargs}
    decision = router.route(prompt, complexity=complexity, messages=messages, **estimate_params)
    target = router.upgrade_tier(decision.tier, router.fallback if fallback is FROM_ROUTER else fallback)
    logger.info("Routed to tier %r (%s): score %.3f, %s", decision.tier, decision.model, decision.score,
                decision.reasons)
    try:
        response = _ask(client, decision, prompt, messages, query_kwargs)
    except (ValidationError, ProviderError) as exc:
        if target is None:
            raise
        failed = exc.response if isinstance(exc, ValidationError) else None
        return _upgrade(client, router, decision, target, _describe(exc), failed, prompt, messages, query_kwargs)
    if target is not None and response.validation is not None and not response.validation.passed:
        reason = "validation failed: " + "; ".join(response.validation.errors)
        return _upgrade(client, router, decision, target, reason, response, prompt, messages, query_kwargs)
    return response


def _ask(
    client: Any,
    decision: RoutingDecision,
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    query_kwargs: Mapping[str, Any],
) -> Response:
    tags = {**(query_kwargs.get("tags") or {}), **decision.tags()}
    response = client.query(prompt, model=decision.model, messages=messages, **{**query_kwargs, "tags": tags})
    response.routing = decision
    return response


def _upgrade(
    client: Any,
    router: Router,
    first: RoutingDecision,
    tier: str,
    reason: str,
    failed: Response | None,
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    query_kwargs: Mapping[str, Any],
) -> Response:
    """Re-ask on ``tier``; the answer carries the cost and tokens of the failed one too."""
    reason = reason if len(reason) <= _MAX_REASON_CHARS else reason[: _MAX_REASON_CHARS - 3] + "..."
    decision = RoutingDecision(
        first.score, "low" if tier == router.names[0] else "high", first.reasons, tier, router.tiers[tier],
        upgraded_from=first.tier, upgrade_reason=reason,
    )
    logger.info("Upgrading from tier %r to %r: %s", first.tier, tier, reason)
    response = _ask(client, decision, prompt, messages, query_kwargs)
    if failed is not None:
        _add_failed(response, failed)
    return response


def _add_failed(response: Response, failed: Response) -> None:
    if response.cost is None or failed.cost is None:
        response.cost = None  # unknown, never a silent undercount
    else:
        response.cost += failed.cost
    response.usage = {k: response.usage.get(k, 0) + failed.usage.get(k, 0) for k in {*response.usage, *failed.usage}}


def _describe(exc: ValidationError | ProviderError) -> str:
    if isinstance(exc, ValidationError):
        return "validation failed: " + "; ".join(exc.errors)
    return f"{type(exc).__name__}: {exc}"
