"""Human feedback on traced calls, and prompts that learn from it.

``record_feedback(trace_id, rating=5, correction="...")`` stores feedback on the call's MLflow trace
as assessments with a ``HUMAN`` source, so MLflow's UI, ``mlflow.search_traces`` and
``mlflow.genai.evaluate`` see it:

- the rating is a feedback named ``rating`` (a number on a scale, default 1-5 whole numbers, or
  True/False for thumbs up/down), with ``comment`` as its rationale;
- the correction is an expectation named ``expected_response``: MLflow's own name for the expected
  answer (``mlflow.genai.label_schemas.EXPECTED_RESPONSE``), which its ``Correctness`` scorer and
  evaluation datasets read, so a corrected trace is ready for evaluation as it is.

With feedback learning on, corrections and top-rated answers become few-shot examples:
:class:`FeedbackLearner` keeps them per *scope* (the system prompt, plus the template's name for
template calls and the call's ``namespace``, so one tenant's corrections never reach another's
prompts), embedded with the bundled MiniLM model, and versions each scope's examples in
MLflow's Prompt Registry as a chat prompt ``mlflow_lite_examples_<scope key>``.
:class:`FewShotStage` then puts the nearest examples of the same scope in front of later similar
questions.

Nothing heavy is imported here: mlflow, numpy and the embedding model load on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.core.messages import content_text, last_user_text
from mlflow_lite_plugin.core.offload import offload
from mlflow_lite_plugin.core.pipeline import STAGE_ORDER, Settings, Stage
from mlflow_lite_plugin.tracing import schema
from mlflow_lite_plugin.tracing.schema import CORRECTION, EXAMPLES_PREFIX, HUMAN, RATING, ROOT_SPANS

if TYPE_CHECKING:
    import numpy as np
    from mlflow.entities import Assessment, Span, Trace, TraceInfo

    from mlflow_lite_plugin.cache.embeddings import Embedder
    from mlflow_lite_plugin.core.pipeline import Call, Pipeline
    from mlflow_lite_plugin.core.response import Response

_logger = logging.getLogger(__name__)

DEFAULT_SCALE: tuple[float, float] = (1, 5)
# Prompt Registry keeps a template in a tag of at most 100,000 characters: leave room for JSON.
_MAX_PROMPT_CHARS = 90_000
_SCOPE_TAG_CHARS = 2_000


# -- reading our traces (shared with datasets.py) --


def root_span(trace: Trace) -> Span | None:
    """The root span of one of our calls (``mlflow_lite.query``/``.stream``), else None."""
    return next((s for s in trace.data.spans if s.parent_id is None and s.name in ROOT_SPANS), None)


def root_messages(root: Span) -> list[dict[str, Any]]:
    """The messages the call was made with (before any few-shot examples were added)."""
    inputs = root.inputs if isinstance(root.inputs, Mapping) else {}
    messages = inputs.get("messages")
    return [dict(m) for m in messages if isinstance(m, Mapping)] if isinstance(messages, list) else []


def root_answer(root: Span) -> str | None:
    """The assistant's answer from the root span's OpenAI-format outputs."""
    try:
        content = root.outputs["choices"][0]["message"]["content"]
    except (TypeError, KeyError, IndexError):
        return None
    text = content_text(content)
    return text if text.strip() else None


def is_error(trace: Trace) -> bool:
    return getattr(trace.info.state, "value", trace.info.state) == "ERROR"


def stopped_early(root: Span) -> bool:
    return bool(root.attributes.get(schema.STOPPED_EARLY))


def _human(assessment: Assessment, name: str) -> bool:
    source = assessment.source
    return (
        assessment.name == name
        and assessment.valid is not False  # overridden assessments are kept by MLflow as invalid
        and source is not None
        and source.source_type == HUMAN
    )


def human_ratings(info: TraceInfo) -> list[float | int | bool]:
    """Every valid HUMAN rating of a trace: thumbs (bools) and finite numbers. A NaN or infinite
    value (logged by another tool: ``record_feedback`` refuses them) is no rating: it would make
    any mean it joins NaN or infinite, and an infinite one passes every ``min_rating``."""
    found = [a.feedback.value for a in info.assessments or [] if a.feedback is not None and _human(a, RATING)]
    # a feedback value is typed as any JSON value; the filter leaves numbers and bools only
    return [cast("float | int | bool", v) for v in found
            if isinstance(v, bool) or (isinstance(v, numbers.Real) and math.isfinite(v))]


def numeric_ratings(info: TraceInfo) -> list[float]:
    """The HUMAN ratings of a trace a mean is taken of (A/B tests, evaluation): the numbers, since
    thumbs are on no scale (counted as 1/0 they would pull a 1-5 mean down)."""
    return [float(r) for r in human_ratings(info) if not isinstance(r, bool)]


def human_correction(info: TraceInfo) -> str | None:
    """The latest valid HUMAN correction (``expected_response``) of a trace."""
    found = [a for a in info.assessments or [] if a.expectation is not None and _human(a, CORRECTION)]
    found.sort(key=lambda a: a.last_update_time_ms or a.create_time_ms or 0)
    values = [a.expectation.value for a in found if a.expectation is not None]
    texts = [v for v in values if isinstance(v, str) and v.strip()]
    return texts[-1] if texts else None


def overall_rating(ratings: Sequence[float | int | bool]) -> float | bool | None:
    """The mean of the numeric ratings; with thumbs only, True when more went up than down."""
    numbers_ = [r for r in ratings if not isinstance(r, bool)]
    if numbers_:
        return sum(numbers_) / len(numbers_)
    thumbs = [r for r in ratings if isinstance(r, bool)]
    return sum(thumbs) * 2 > len(thumbs) if thumbs else None


def meets(ratings: Sequence[float | int | bool], min_rating: float) -> bool:
    """True when the ratings pass ``min_rating``: a mean at least that, or thumbs mostly up."""
    overall = overall_rating(ratings)
    if overall is None:
        return False
    return overall if isinstance(overall, bool) else overall >= min_rating


# -- recording feedback --


def check_scale(scale: Any) -> tuple[float, float]:
    """``(low, high)``: two finite numbers, low < high."""
    if (
        not isinstance(scale, (tuple, list))
        or len(scale) != 2
        or not all(_finite(x) for x in scale)
        or not scale[0] < scale[1]
    ):
        raise ArgumentError("scale", f"must be (low, high), two numbers with low < high, got {scale!r}")
    return scale[0], scale[1]


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_rating(rating: Any, scale: Any = DEFAULT_SCALE) -> float | int | bool | None:
    """The rating as stored: a bool (thumbs), or a number on ``scale`` (whole when its bounds are)."""
    if rating is None or isinstance(rating, bool):
        return rating
    low, high = check_scale(scale)
    whole = all(isinstance(x, numbers.Integral) for x in (low, high))
    kind = "whole number" if whole else "number"
    expected = f"must be a {kind} from {low} to {high}, or True/False (thumbs up/down), got {rating!r}"
    if not _finite(rating) or not low <= rating <= high:
        raise ArgumentError("rating", expected)
    if whole:
        if rating != int(rating):
            raise ArgumentError("rating", expected)
        return int(rating)
    return float(rating)


def _check_text(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ArgumentError(name, f"must be None or a non-empty string, got {value!r}")
    return value


def get_trace(trace_id: Any) -> Trace:
    """The MLflow trace ``trace_id``; ArgumentError naming it when the store has no such trace."""
    if not isinstance(trace_id, str) or not trace_id.strip():
        raise ArgumentError("trace_id", f"must be an MLflow trace id such as r.trace_id, got {trace_id!r}")
    import mlflow
    from mlflow.exceptions import MlflowException

    # A trace still in MLflow's async export queue has its metadata stored but not its spans.
    mlflow.flush_trace_async_logging()
    try:
        return mlflow.MlflowClient().get_trace(trace_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise
    raise ArgumentError(
        "trace_id", f"no MLflow trace {trace_id!r} in the tracking store {mlflow.get_tracking_uri()!r}"
    )


def record_feedback(
    trace_id: str,
    rating: float | int | bool | None = None,
    correction: str | None = None,
    *,
    user: str | None = None,
    comment: str | None = None,
    scale: tuple[float, float] = DEFAULT_SCALE,
    learner: FeedbackLearner | None = None,
) -> list[Assessment]:
    """Store a human's rating and/or correction of a traced call on its MLflow trace.

    ``rating``: a number on ``scale`` (default 1-5, whole numbers) or True/False (thumbs up/down),
    logged as HUMAN feedback ``rating`` with ``comment`` as its rationale. ``correction``: the
    answer it should have given, logged as the HUMAN expectation ``expected_response`` (with
    ``comment`` in its metadata). ``user`` is the source id (default ``$USER``, else "unknown").
    Every argument and the trace id are checked before anything is logged. With an enabled
    ``learner``, the feedback may become a few-shot example (a learning failure is logged, never
    raised: the feedback is already stored). Returns the created assessments, rating first.
    """
    rating = check_rating(rating, scale)
    correction = _check_text("correction", correction)
    comment = _check_text("comment", comment)
    user = _check_text("user", user) or os.environ.get("USER") or "unknown"
    if rating is None and correction is None:
        raise ArgumentError("rating", "give a rating, a correction or both")
    trace = get_trace(trace_id)
    created = _log(trace_id, rating, correction, user, comment, scale)
    if learner is not None and learner.enabled:
        try:
            learner.learn(trace, rating=rating, correction=correction)
        except Exception as exc:
            _logger.warning("Feedback on %s was stored but not learned from: %s", trace_id, exc)
    return created


def _log(
    trace_id: str,
    rating: float | int | bool | None,
    correction: str | None,
    user: str,
    comment: str | None,
    scale: tuple[float, float],
) -> list[Assessment]:
    import mlflow
    from mlflow.entities import AssessmentSource

    source = AssessmentSource(source_type=HUMAN, source_id=user)
    created = []
    if rating is not None:
        scale_note = "thumbs" if isinstance(rating, bool) else f"{scale[0]}-{scale[1]}"
        created.append(
            mlflow.log_feedback(
                trace_id=trace_id, name=RATING, value=rating, source=source, rationale=comment,
                metadata={"scale": scale_note},
            )
        )
    if correction is not None:
        created.append(
            mlflow.log_expectation(
                trace_id=trace_id, name=CORRECTION, value=correction, source=source,
                metadata={"comment": comment} if comment else None,
            )
        )
    return created


# -- learning from feedback --


def scope_of(
    messages: Sequence[Mapping[str, Any]], template: str | None = None, namespace: str | None = None
) -> str:
    """What examples are shared within: the system prompt, plus the template name and the call's
    ``namespace`` (a tenant's corrections are never shown to another) if any."""
    system = "\n".join(
        content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    scope: dict[str, Any] = {"template": template, "system": system}
    if namespace is not None:  # absent otherwise, so the keys of un-namespaced scopes stay as they were
        scope["namespace"] = namespace
    return json.dumps(scope, ensure_ascii=False)


def scope_key(scope: str) -> str:
    """A short stable key of a scope (its registry prompt is ``mlflow_lite_examples_<key>``)."""
    return hashlib.sha256(scope.encode("utf-8")).hexdigest()[:16]


def prompt_name(scope: str) -> str:
    return EXAMPLES_PREFIX + scope_key(scope)


@dataclass(frozen=True)
class Example:
    """A question and the answer to imitate: a human's correction, or a top-rated answer."""

    question: str
    answer: str
    trace_id: str
    source: str  # "correction" or "rating"

    @property
    def key(self) -> str:
        return " ".join(self.question.casefold().split())


@dataclass(frozen=True)
class Match:
    example: Example
    similarity: float


@dataclass
class _Stored:
    example: Example
    vector: np.ndarray


@dataclass(frozen=True)
class FeedbackLearningSettings(Settings):
    """One ``set_feedback_learning`` call: ``max_examples`` put in front of a similar question (a
    cosine of at least ``similarity``), learned from corrections and answers rated at least
    ``min_rating``, versioned in the Prompt Registry when ``registry``.

    ``enabled=False`` keeps the stage and its learned examples, neither used nor added to, so that
    turning learning back on finds them: unlike the other controls, it is not removed."""

    stage = "few_shot"
    remove_when_disabled = False
    enabled: bool = True
    max_examples: int = 3
    min_rating: float = 4
    similarity: float = 0.5
    registry: bool = True

    def __post_init__(self) -> None:
        for name in ("enabled", "registry"):
            if not isinstance(getattr(self, name), bool):
                raise ArgumentError(name, f"must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.max_examples, int) or isinstance(self.max_examples, bool) or self.max_examples < 1:
            raise ArgumentError("max_examples", f"must be an int >= 1, got {self.max_examples!r}")
        if not _finite(self.min_rating):
            raise ArgumentError("min_rating", f"must be a finite number, got {self.min_rating!r}")
        if not _finite(self.similarity) or not -1 <= self.similarity <= 1:
            raise ArgumentError("similarity", f"the threshold must be a cosine in [-1, 1], got {self.similarity!r}")


class FeedbackLearner:
    """Few-shot examples learned from feedback, per scope, in memory and in the Prompt Registry.

    A correction, or an answer rated at least ``min_rating`` (or thumbs up), becomes an example;
    a correction replaces any earlier example of the same question, and is never replaced by a
    merely well-rated answer. Each scope keeps its ``max_stored`` newest examples. With
    ``registry=True`` every change is published as a new version of the scope's registry prompt
    (merged first with the latest version, so replicas sharing a registry add up their examples);
    ``load()`` reads them back, e.g. in a new process.
    """

    def __init__(
        self,
        enabled: bool = True,
        max_examples: int = 3,
        min_rating: float = 4,
        threshold: float = 0.5,
        registry: bool = True,
        *,
        max_stored: int = 100,
        model: str | None = None,
    ):
        self.configure(FeedbackLearningSettings(enabled, max_examples, min_rating, threshold, registry))
        if not isinstance(max_stored, int) or isinstance(max_stored, bool) or max_stored < 1:
            raise ArgumentError("max_stored", f"must be an int >= 1, got {max_stored!r}")
        self.max_stored = max_stored
        self.model = model  # a sentence-transformers model; None: the bundled all-MiniLM-L6-v2
        self._scopes: dict[str, list[_Stored]] = {}
        self._lock = threading.Lock()

    def configure(self, settings: FeedbackLearningSettings) -> None:
        """Change the settings (checked by the settings class); learned examples are kept."""
        self.enabled = settings.enabled
        self.max_examples = settings.max_examples
        self.min_rating = settings.min_rating
        self.threshold = float(settings.similarity)
        self.registry = settings.registry

    @property
    def settings(self) -> FeedbackLearningSettings:
        """The settings in force (``registry`` may have been changed on the learner directly)."""
        return FeedbackLearningSettings(self.enabled, self.max_examples, self.min_rating, self.threshold, self.registry)

    # -- learning --

    def learn(
        self, trace: Trace, rating: float | int | bool | None = None, correction: str | None = None
    ) -> Example | None:
        """Learn from one trace; returns the example stored, or None when there is nothing to learn.

        ``rating``/``correction`` are the feedback just given; when both are None, the trace's own
        HUMAN assessments are used (mean rating, latest correction), e.g. to learn from history.
        """
        root = root_span(trace)
        if not self.enabled or root is None:
            return None
        if rating is None and correction is None:
            ratings, correction = human_ratings(trace.info), human_correction(trace.info)
        else:
            ratings = [] if rating is None else [rating]
        messages = root_messages(root)
        question = last_user_text(messages)
        answer = correction or (self._rated_answer(trace, root) if meets(ratings, self.min_rating) else None)
        if not question.strip() or not answer:
            return None
        example = Example(question, answer, trace.info.trace_id, "correction" if correction else "rating")
        template = trace.info.tags.get(schema.TEMPLATE)
        self._add(scope_of(messages, template, root.attributes.get(schema.NAMESPACE)), example, template)
        _logger.info("Learned a few-shot example (%s) from trace %s", example.source, example.trace_id)
        return example

    def learn_from(
        self, trace_id: str, rating: float | int | bool | None = None, correction: str | None = None
    ) -> Example | None:
        """``learn`` for a trace id (ArgumentError if the store has no such trace)."""
        return self.learn(get_trace(trace_id), rating=rating, correction=correction)

    @staticmethod
    def _rated_answer(trace: Trace, root: Span) -> str | None:
        """The answer itself, unless the call failed or the stream was cut short."""
        return None if is_error(trace) or stopped_early(root) else root_answer(root)

    # -- looking up --

    def matches(
        self,
        messages: Sequence[Mapping[str, Any]],
        template: str | None = None,
        k: int | None = None,
        namespace: str | None = None,
    ) -> list[Match]:
        """The stored examples of this scope nearest to the last user message, best first, with
        cosine similarity at least ``threshold``; at most ``k`` (default ``max_examples``)."""
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ArgumentError("k", f"must be an int >= 1, got {k!r}")
        question = last_user_text(messages)
        key = scope_key(scope_of(messages, template, namespace))
        with self._lock:
            stored = list(self._scopes.get(key, ()))
        if not stored or not question.strip():
            return []  # no embedding is computed for a scope without examples
        import numpy as np

        scores = np.stack([s.vector for s in stored]) @ self._embedder().embed([question])[0]
        best = [int(i) for i in np.argsort(-scores, kind="stable")[: self.max_examples if k is None else k]]
        return [Match(stored[i].example, float(scores[i])) for i in best if scores[i] >= self.threshold]

    def examples_for(
        self,
        messages: Sequence[Mapping[str, Any]],
        template: str | None = None,
        k: int | None = None,
        namespace: str | None = None,
    ) -> list[tuple[str, str]]:
        """``(question, answer)`` of the nearest examples of the same scope (see ``matches``)."""
        return [(m.example.question, m.example.answer) for m in self.matches(messages, template, k, namespace)]

    def examples(self, scope: str) -> list[Example]:
        """Every stored example of ``scope`` (from ``scope_of``), oldest first."""
        with self._lock:
            return [s.example for s in self._scopes.get(scope_key(scope), ())]

    # -- the Prompt Registry --

    def load(self, scope: str | None = None) -> int:
        """Merge the latest registry version of ``scope``'s examples (every scope's, when None)
        into memory, e.g. in a new process; returns how many examples were read."""
        names = [prompt_name(scope)] if scope is not None else _registry_prompt_names()
        loaded = 0
        for name in names:
            examples = _registry_examples(name)
            self._merge_in(name.removeprefix(EXAMPLES_PREFIX), examples)
            loaded += len(examples)
        return loaded

    def _add(self, scope: str, example: Example, template: str | None) -> None:
        """Hold the example; with the registry, merge the latest published version in first
        (another replica may have published since) and publish the result. A registry failure is
        logged: the example is still used by this process."""
        if not self.registry:
            self._merge_in(scope_key(scope), [example])
            return
        name = prompt_name(scope)
        try:
            published = _registry_examples(name)
        except Exception as exc:
            _logger.warning("Could not read few-shot examples %s from the Prompt Registry: %s", name, exc)
            published = []
        snapshot = self._merge_in(scope_key(scope), [*published, example])
        try:
            _publish(scope, snapshot, template)
        except Exception as exc:
            _logger.warning("Few-shot examples %s are held in memory but not published: %s", name, exc)

    def _merge_in(self, key: str, incoming: list[Example]) -> list[Example]:
        """Merge examples, in order, into a scope's held ones; returns the scope's examples."""
        with self._lock:
            known = {s.example: s for s in self._scopes.get(key, ())}
        # Embedding is the slow part: done outside the lock, for the examples not held yet.
        known.update((s.example, s) for s in self._embedded([e for e in incoming if e not in known]))
        with self._lock:
            held = self._scopes.setdefault(key, [])
            for example in incoming:
                _merge(held, known[example])
            del held[: max(0, len(held) - self.max_stored)]
            return [s.example for s in held]

    def _embedded(self, examples: list[Example]) -> list[_Stored]:
        vectors: np.ndarray | list[np.ndarray] = []
        if examples:
            vectors = self._embedder().embed([e.question for e in examples])
        return [_Stored(e, v) for e, v in zip(examples, vectors, strict=True)]

    def _embedder(self) -> Embedder:
        from mlflow_lite_plugin.cache.embeddings import get_embedder

        return get_embedder(self.model)


def _merge(held: list[_Stored], new: _Stored) -> None:
    """Add ``new`` (newest last), replacing the example of the same question unless that one is a
    correction and ``new`` is not."""
    same = next((s for s in held if s.example.key == new.example.key), None)
    if same is not None:
        if same.example.source == "correction" and new.example.source != "correction":
            return
        held.remove(same)
    held.append(new)


def _registry_prompt_names() -> list[str]:
    import mlflow

    found = mlflow.genai.search_prompts(filter_string=f"name LIKE '{EXAMPLES_PREFIX}%'")
    return [p.name for p in found]


def _registry_examples(name: str) -> list[Example]:
    """The examples in the latest version of registry prompt ``name`` (none if it does not exist)."""
    import mlflow

    # cache_ttl_seconds=0: another process may have published a version since we last looked.
    prompt = mlflow.genai.load_prompt(
        f"prompts:/{name}@latest", allow_missing=True, link_to_model=False, cache_ttl_seconds=0
    )
    if prompt is None or prompt.is_text_prompt:
        return []
    pairs = [
        (q["content"], a["content"])
        for q, a in zip(prompt.template[0::2], prompt.template[1::2], strict=False)  # an odd last message has no pair
        if q.get("role") == "user" and a.get("role") == "assistant"
    ]
    sources = json.loads(prompt.tags.get(schema.EXAMPLES_SOURCES_TAG, "[]"))
    sources += [{}] * (len(pairs) - len(sources))  # a version edited by hand may lack them
    return [
        Example(question, answer, s.get("trace_id", ""), s.get("source", "correction"))
        for (question, answer), s in zip(pairs, sources, strict=False)  # extra sources are ignored
    ]


def _publish(scope: str, examples: list[Example], template: str | None) -> None:
    """Register the scope's examples as a new version of its chat prompt (user/assistant pairs)."""
    import mlflow

    while examples and len(json.dumps([(e.question, e.answer) for e in examples])) > _MAX_PROMPT_CHARS:
        examples = examples[1:]  # the oldest go first when the registry's size limit is near
    if not examples:
        return
    messages = [m for e in examples for m in _turns(e)]
    tags = {
        schema.EXAMPLES_SCOPE_TAG: scope[:_SCOPE_TAG_CHARS],
        schema.EXAMPLES_SCOPE_KEY_TAG: scope_key(scope),
        schema.EXAMPLES_COUNT_TAG: str(len(examples)),
        schema.EXAMPLES_SOURCES_TAG: json.dumps([{"trace_id": e.trace_id, "source": e.source} for e in examples]),
    }
    if template:
        tags[schema.EXAMPLES_TEMPLATE_TAG] = template
    newest = examples[-1]
    version = mlflow.genai.register_prompt(
        name=prompt_name(scope), template=messages, tags=tags,
        commit_message=f"{newest.source} from trace {newest.trace_id}",
    )
    _logger.info("Published %d few-shot examples as %s version %s", len(examples), version.name, version.version)


# -- the pipeline stage --


def _turns(example: Example) -> tuple[dict[str, str], dict[str, str]]:
    return {"role": "user", "content": example.question}, {"role": "assistant", "content": example.answer}


def with_examples(messages: list[dict[str, Any]], examples: Sequence[Example]) -> list[dict[str, Any]]:
    """A new message list with each example as a user/assistant pair before the last user message;
    the best example goes last, nearest the question."""
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    shots = [m for e in reversed(examples) for m in _turns(e)]
    return messages[:last] + shots + messages[last:]


class FewShotStage(Stage):
    """Puts the learner's nearest examples in front of the question, as earlier turns.

    It runs before the caches (order 250): the answer depends on the examples, so the caches must
    key on the prompt the provider really sees. A new correction then changes the key, and the
    stale, uncorrected answer is not served again. The price is one embedding per call in a scope
    that has examples, cache hits included. The root span keeps the caller's messages as its
    inputs; the examples used are recorded as attributes and a ``few_shot_examples`` event.
    A failed lookup is logged and the call goes on without examples.
    """

    name = "few_shot"
    order = STAGE_ORDER[name]
    settings_type = FeedbackLearningSettings

    def __init__(self, learner: FeedbackLearner):
        self.learner = learner

    @classmethod
    def from_settings(
        cls, settings: FeedbackLearningSettings, previous: Stage | None, **context: Any
    ) -> FewShotStage:
        """The installed stage reconfigured (its learned examples kept), or a new one."""
        if isinstance(previous, FewShotStage):
            previous.learner.configure(settings)
            return previous
        return cls(FeedbackLearner(settings.enabled, settings.max_examples, settings.min_rating,
                                   settings.similarity, settings.registry))

    def describe(self) -> dict[str, Any]:
        return asdict(self.learner.settings)

    async def abefore(self, call: Call) -> Response | None:
        # The lookup embeds the question: in the package's worker threads, off the event loop.
        return await offload(self.before, call) if self.learner.enabled else None

    def before(self, call: Call) -> Response | None:
        if not self.learner.enabled:
            return None
        template = call.request.template
        messages, namespace = call.request.messages, call.request.namespace
        try:
            found = self.learner.matches(messages, template, namespace=namespace)
        except Exception as exc:
            _logger.warning("Few-shot lookup failed (the call goes on without examples): %s", exc)
            return None
        if found:
            # A new list, not an edit: the root span's inputs hold the caller's list.
            call.request.messages = with_examples(messages, [m.example for m in found])
            _record(call, found, scope_key(scope_of(messages, template, namespace)))
        return None


def _record(call: Call, found: list[Match], key: str) -> None:
    trace_ids = [m.example.trace_id for m in found]
    call.span.set_attributes(
        {
            schema.FEW_SHOT_EXAMPLES: len(found),
            schema.FEW_SHOT_TRACE_IDS: trace_ids,
            schema.FEW_SHOT_PROMPT: EXAMPLES_PREFIX + key,
        }
    )
    call.span.add_event(
        "few_shot_examples",
        {
            "questions": json.dumps([m.example.question for m in found], ensure_ascii=False),
            "similarities": json.dumps([round(m.similarity, 4) for m in found]),
            "sources": json.dumps([m.example.source for m in found]),
            "trace_ids": json.dumps(trace_ids),
        },
    )


# -- wiring into a client's pipeline --


def learner_of(pipeline: Pipeline) -> FeedbackLearner | None:
    """The learner of a pipeline's FewShotStage, if it has one."""
    stage = pipeline.get(FewShotStage.name)
    return stage.learner if isinstance(stage, FewShotStage) else None


def set_feedback_learning(
    pipeline: Pipeline,
    enabled: bool = True,
    *,
    max_examples: int = 3,
    min_rating: float = 4,
    similarity: float = 0.5,
    registry: bool = True,
) -> FeedbackLearner:
    """Turn feedback learning on (or off) for a pipeline; returns its learner. Turning it off keeps
    the learned examples (in memory and in the registry) but neither uses nor adds to them."""
    stage = pipeline.install(FeedbackLearningSettings(enabled, max_examples, min_rating, similarity, registry))
    assert isinstance(stage, FewShotStage)  # the builder of these settings, kept when disabled
    return stage.learner
