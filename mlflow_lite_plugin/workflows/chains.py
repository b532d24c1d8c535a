"""Chains: several model calls in a row, each one feeding the next, traced as one MLflow trace.

    workflow = Chain([Step("summarize", model="gpt-3.5-turbo"),
                      Step("extract_entities", model="claude-3-haiku"),
                      Step("classify", model="gpt-4o", labels=["news", "opinion"])])
    result = workflow.run(input_text)
    result.output, result.outputs["summarize"], result.cost, result.latency, result.trace_id

**A step** uses a prompt template (``template=``: a built-in such as "summarize", or a registry
prompt), or its own ``prompt=``, a ``str.format`` string over the chain's variables ("List the
entities in: {input}"). A step named like a built-in template uses it; so does a step named like
one of these aliases, which fill in the template's options (a step's own keywords win):

========================  ====================================================================
alias                     means
========================  ====================================================================
``extract_entities``      ``extract`` with ``fields={"entities": "a list of the named entities
                          (people, organisations, places, products)"}``
``extract_keywords``      ``extract`` with ``fields={"keywords": "a list of the key words and
                          phrases"}``
``translate_to_english``  ``translate`` with ``language="English"``
========================  ====================================================================

Any other name needs ``prompt=`` or ``template=`` (an ``ArgumentError`` says so at once).

**Variables.** ``{input}`` (and a template's ``input``) is the previous step's output, the run's
``input`` for the first step. Each output is also stored under its step's ``output`` name (default
the step name), and ``run(**variables)`` adds more: later steps see them as ``{name}`` in a
prompt, or as the template variable of that name (a ``qa`` step after ``Step("summarize",
output="context")`` answers from the summary; give ``question=`` to ``run``). Every variable a step
needs is checked before the first call, so a typo never costs the steps before it.

**Controls.** Every step is a ``client.query`` (or ``query_with_template``) call, so the client's
caches, budget, rate limits and metrics apply, and a step's keywords (``validate=``,
``fallbacks=``, ``temperature=``, ``api_base=``...) go to its call.

**Tracing.** The run is one MLflow trace: a ``CHAIN`` span for the chain with a child ``CHAIN`` span
per step, and each step's call nested in its span (written live). The chain span records the
input, output, steps, total cost and latency, and the error of a failed step. A failed step raises
:class:`ChainStepError` naming it; no later step runs.
"""

from __future__ import annotations

import logging
import string
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.client import build_call_request, get_default_client
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError
from mlflow_lite_plugin.prompts.templates import BUILTIN_TEMPLATES, Template
from mlflow_lite_plugin.security import credentials
from mlflow_lite_plugin.tracing import schema
from mlflow_lite_plugin.tracing import tracer as tracing
from mlflow_lite_plugin.tracing.store import safely

if TYPE_CHECKING:
    from mlflow_lite_plugin.core.response import Response

logger = logging.getLogger(__name__)

# Chain-step names that stand for a built-in template with some of its options filled in.
STEP_ALIASES: Mapping[str, tuple[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "extract_entities": (
            "extract",
            {"fields": {"entities": "a list of the named entities (people, organisations, places, products)"}},
        ),
        "extract_keywords": ("extract", {"fields": {"keywords": "a list of the key words and phrases"}}),
        "translate_to_english": ("translate", {"language": "English"}),
    }
)

# Query keywords a step cannot take: the chain supplies the messages, the step its model.
_NOT_STEP_KEYWORDS = ("messages", "model")

class ChainStepError(MlflowLiteError):
    """A step of a chain failed; no later step ran.

    ``step`` is its name, ``index`` its position (0-based), ``results`` the steps that finished
    before it, ``cause`` the error (also ``__cause__``) and ``trace_id`` the chain's trace.
    """

    def __init__(self, chain: str, step: str, index: int, results: list[StepResult], cause: BaseException):
        super().__init__(f"chain {chain!r} failed at step {index + 1} {step!r}: {type(cause).__name__}: {cause}")
        self.chain = chain
        self.step = step
        self.index = index
        self.results = results
        self.cause = cause
        self.trace_id: str | None = None

    @property
    def cost(self) -> float | None:
        """USD billed for the chain: the finished steps and what the failed step was billed (an
        answer that failed validation, a broken stream), None if any of it is unknown."""
        failed = getattr(self.cause, "cost", 0.0)  # an error of ours says what its call was billed
        finished = _total_cost(self.results)
        return None if finished is None or failed is None else finished + failed


@dataclass(init=False)
class Step:
    """One call of a chain: a ``template`` (default: the step's name, if it is a built-in or an
    alias) or a ``prompt``; the ``model`` (default: the client's); the ``output`` name its text is
    stored under (default: ``name``); any other keyword is a template variable (``labels=``,
    ``fields=``) or a ``query`` keyword (``validate=``, ``fallbacks=``, ``temperature=``...)."""

    name: str
    template: str | Template | None
    prompt: str | None
    model: str | None
    output: str
    kwargs: dict[str, Any] = field(repr=False)  # may hold api_key

    def __init__(
        self,
        name: str,
        *,
        template: str | Template | None = None,
        prompt: str | None = None,
        model: str | None = None,
        output: str | None = None,
        **kwargs: Any,
    ):
        if not isinstance(name, str) or not name.strip():
            raise ArgumentError("name", f"a step needs a non-empty name, got {name!r}")
        self.name = name.strip()
        self.model = _optional_text(self.name, "model", model)
        self.output = _optional_text(self.name, "output", output) or self.name
        if self.output == "input":  # always the previous step's output: a step cannot take it over
            raise ArgumentError("output", f"step {self.name!r}: 'input' is reserved; store the output elsewhere")
        self.prompt = _optional_text(self.name, "prompt", prompt)
        for keyword in _NOT_STEP_KEYWORDS:
            if keyword in kwargs:
                raise ArgumentError(keyword, f"step {self.name!r}: use prompt= or template= and model=, not {keyword}=")
        self.template, self.kwargs = _step_template(self.name, template, self.prompt, kwargs)
        if self.prompt is not None:
            _prompt_fields(self.name, self.prompt)  # malformed braces fail now, not mid-chain

    @property
    def template_name(self) -> str | None:
        if self.template is None:
            return None
        return self.template if isinstance(self.template, str) else self.template.name


def _optional_text(step: str, argument: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ArgumentError(argument, f"step {step!r}: must be a non-empty string, got {value!r}")
    return value


def _step_template(
    name: str, template: str | Template | None, prompt: str | None, kwargs: dict[str, Any]
) -> tuple[str | Template | None, dict[str, Any]]:
    """The step's template (None for a prompt step) and its keywords, alias options included."""
    if template is not None and prompt is not None:
        raise ArgumentError("prompt", f"step {name!r}: give either prompt= or template=, not both")
    if template is not None or prompt is not None:
        return template, dict(kwargs)
    if name in BUILTIN_TEMPLATES:
        return name, dict(kwargs)
    if name in STEP_ALIASES:
        builtin, options = STEP_ALIASES[name]
        return builtin, {**options, **kwargs}
    known = ", ".join(sorted({*BUILTIN_TEMPLATES, *STEP_ALIASES}))
    raise ArgumentError(
        "template",
        f"step {name!r} is neither a built-in template nor a chain-step alias ({known}); "
        f"give it prompt='... {{input}} ...' or template='<name>'",
    )


def _prompt_fields(step: str, prompt: str) -> set[str]:
    """The variables a ``str.format`` prompt uses; positional or malformed fields are refused."""
    try:
        fields = [parsed[1] for parsed in string.Formatter().parse(prompt) if parsed[1] is not None]
    except ValueError as exc:
        message = f"step {step!r}: not a valid format string ({exc}); write {{{{ for a literal brace"
        raise ArgumentError("prompt", message) from None
    names = {f.split(".")[0].split("[")[0] for f in fields}
    if "" in names or any(name.isdigit() for name in names):
        raise ArgumentError("prompt", f"step {step!r}: name every placeholder, e.g. {{input}}, not {{}} or {{0}}")
    return names


@dataclass
class StepResult:
    """One finished step: its ``response``, and the ``output`` name its text was stored under."""

    name: str
    output: str
    response: Response
    cost: float | None
    latency: float

    @property
    def text(self) -> str:
        return self.response.text


@dataclass
class ChainResult:
    """A finished run: the last step's ``output``, every step's text by output name, the steps,
    the total ``cost`` (None if any step's price is unknown), the wall-clock ``latency`` and the
    MLflow ``trace_id`` of the run."""

    output: str
    outputs: dict[str, str]
    steps: list[StepResult]
    cost: float | None
    latency: float
    trace_id: str | None

    def __str__(self) -> str:
        return self.output


@dataclass
class _Prepared:
    """A step ready to run: its resolved template (None for a prompt step), the template variables
    it gives itself, and the keywords of its call (never traced: they may hold an api_key)."""

    step: Step
    template: Template | None
    variables: dict[str, Any]
    query_kwargs: dict[str, Any]


class Chain:
    """Steps run in order, each on the previous one's output; see the module docstring.

    ``client``: the :class:`Client` the steps call (default: the one behind ``ml.query``, looked up
    at each run). ``name``: the name of the chain's span.
    """

    def __init__(self, steps: Sequence[Step], *, client: Any = None, name: str = "chain"):
        if isinstance(steps, (str, Step)) or not isinstance(steps, Sequence) or not steps:
            raise ArgumentError("steps", f"must be a non-empty list of ml.Step, got {steps!r}")
        for index, step in enumerate(steps):
            if not isinstance(step, Step):
                raise ArgumentError("steps", f"item {index} must be an ml.Step, got {step!r}")
        duplicates = sorted(name for name, count in Counter(s.output for s in steps).items() if count > 1)
        if duplicates:
            raise ArgumentError("steps", f"several steps store their output as {duplicates}; give them output='...'")
        if not isinstance(name, str) or not name.strip():
            raise ArgumentError("name", f"must be a non-empty string, got {name!r}")
        self.steps = list(steps)
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"Chain({[s.name for s in self.steps]!r}, name={self.name!r})"

    def run(self, input: Any = None, **variables: Any) -> ChainResult:
        """Run every step in order; raises :class:`ChainStepError` when one fails."""
        client = self.client if self.client is not None else _default_client()
        scope = self._scope(input, variables)
        prepared = self._prepare(client, scope)
        started = time.perf_counter()
        trace = _ChainTrace.open(client, self, scope)
        try:
            results = self._run_steps(client, prepared, scope, trace)
        except BaseException as exc:
            trace.end(error=exc)
            if isinstance(exc, ChainStepError):
                exc.trace_id = trace.trace_id
            raise
        result = ChainResult(
            output=results[-1].text,
            outputs={r.output: r.text for r in results},
            steps=results,
            cost=_total_cost(results),
            latency=time.perf_counter() - started,
            trace_id=trace.trace_id,
        )
        trace.end(result=result)
        return result

    # -- before the first call --

    def _scope(self, input: Any, variables: Mapping[str, Any]) -> dict[str, Any]:
        outputs = {s.output for s in self.steps}
        clashes = sorted(name for name in variables if name in outputs)
        if clashes:
            raise ArgumentError(clashes[0], "is also the name of a step's output; rename the variable")
        scope = dict(variables)
        if input is not None:
            scope["input"] = input if isinstance(input, str) else str(input)
        return scope

    def _prepare(self, client: Any, scope: Mapping[str, Any]) -> list[_Prepared]:
        """Resolve templates and check every step's variables and keywords, before any call."""
        available = set(scope)
        prepared = []
        for step in self.steps:
            if step.template is not None:
                prepared.append(_prepare_template_step(client, step, available))
            else:
                _check_prompt_step(step, available)
                prepared.append(_Prepared(step, None, {}, dict(step.kwargs)))
            _check_query_kwargs(client, step, prepared[-1].query_kwargs)
            available |= {step.output, "input"}
        return prepared

    # -- running --

    def _run_steps(
        self, client: Any, prepared: Sequence[_Prepared], scope: dict[str, Any], trace: _ChainTrace
    ) -> list[StepResult]:
        results: list[StepResult] = []
        for index, item in enumerate(prepared):
            try:
                results.append(self._run_step(client, item, index, scope, trace))
            except Exception as exc:
                raise ChainStepError(self.name, item.step.name, index, list(results), exc) from exc
            scope[item.step.output] = scope["input"] = results[-1].text
        return results

    def _run_step(
        self, client: Any, item: _Prepared, index: int, scope: Mapping[str, Any], trace: _ChainTrace
    ) -> StepResult:
        step = item.step
        inputs = _step_inputs(item, scope)
        logger.debug("Chain %r: step %d %r", self.name, index + 1, step.name)
        with trace.step(step, index, inputs) as step_span:
            if item.template is not None:
                response = client.query_with_template(item.template, model=step.model, **inputs, **item.query_kwargs)
            else:
                response = client.query(inputs["prompt"], model=step.model, **item.query_kwargs)
            _record_answer(step_span, response)
        return StepResult(step.name, step.output, response, response.cost, response.latency)


def _default_client() -> Any:
    return get_default_client()


def _step_model(client: Any, step: Step) -> str:
    model = step.model or getattr(client, "model", None)
    if not model:
        raise ArgumentError("model", f"step {step.name!r} has no model= and the client has no default model")
    return model


def _prepare_template_step(client: Any, step: Step, available: set[str]) -> _Prepared:
    from mlflow_lite_plugin.prompts.templates import resolve_template, split_kwargs

    assert step.template is not None
    template = resolve_template(step.template)
    try:
        variables, query_kwargs = split_kwargs(template, step.kwargs)
    except ArgumentError as exc:
        raise _in_step(step, exc) from None
    defaults = {option.name for option in getattr(template, "options", ()) if option.default is not None}
    missing = [v for v in template.variables if v not in variables and v not in available and v not in defaults]
    if missing:
        raise ArgumentError(
            missing[0],
            f"step {step.name!r} (template {template.name!r}) needs {', '.join(missing)}: give it to the step "
            "or to run(...), or store an earlier step's output under that name (output='...')",
        )
    return _Prepared(step, template, variables, query_kwargs)


def _check_prompt_step(step: Step, available: set[str]) -> None:
    assert step.prompt is not None
    missing = sorted(_prompt_fields(step.name, step.prompt) - available)
    if missing:
        listed = ", ".join(sorted(available)) or "none"
        raise ArgumentError(
            missing[0],
            f"step {step.name!r}: prompt uses {{{missing[0]}}}, which is neither a run(...) variable nor an "
            f"earlier step's output (available: {listed})",
        )


def _check_query_kwargs(client: Any, step: Step, kwargs: Mapping[str, Any]) -> None:
    """The step's query keywords, checked as its call will check them (no network)."""
    rest = dict(kwargs)
    system = rest.pop("system", None)
    try:
        build_call_request(
            model=_step_model(client, step), prompt="check", messages=None, system=system, kwargs=rest,
            defaults=getattr(client, "defaults", None),
        )
    except ArgumentError as exc:
        raise _in_step(step, exc) from None


def _in_step(step: Step, error: ArgumentError) -> ArgumentError:
    """The same error, saying which step it is about."""
    message = str(error).removeprefix(f"{error.argument}: ")
    return ArgumentError(error.argument, f"step {step.name!r}: {message}")


def _step_inputs(item: _Prepared, scope: Mapping[str, Any]) -> dict[str, Any]:
    """What the step works on: the filled-in prompt, or the template's variables (its own, and
    the others from the chain's variables and earlier outputs)."""
    if item.template is None:
        assert item.step.prompt is not None
        return {"prompt": item.step.prompt.format_map(scope)}
    from_scope = {v: scope[v] for v in item.template.variables if v in scope and v not in item.variables}
    return {**from_scope, **item.variables}


def _total_cost(results: Sequence[StepResult]) -> float | None:
    costs = [r.cost for r in results if r.cost is not None]
    return sum(costs) if len(costs) == len(results) else None


# -- tracing: live MLflow spans, so each step's call nests in its step span --


@dataclass
class _ChainTrace:
    """The chain's live MLflow span; with tracing off (or MLflow failing) every method does nothing."""

    root: Any = None
    token: Any = None
    secrets: tuple[str, ...] = ()  # the steps' and client's keys, masked in the span errors

    @classmethod
    def open(cls, client: Any, chain: Chain, scope: Mapping[str, Any]) -> _ChainTrace:
        """The chain's root span, nested under the caller's active MLflow span if there is one,
        made current so the steps' spans nest in it."""
        tracer = getattr(client, "tracer", None)
        if tracer is not None and not tracer.enabled:
            return cls()
        try:
            import mlflow

            parent = mlflow.get_current_active_span()
            experiment_id = tracer.experiment_id() if tracer is not None and parent is None else None
        except Exception as exc:  # tracing must never fail the chain
            logger.warning("Could not trace chain %r (it runs untraced): %s", chain.name, exc)
            return cls()
        attributes = {schema.KIND: "chain", schema.CHAIN_STEPS: [s.name for s in chain.steps]}
        tags = {schema.KIND: "chain", schema.CHAIN_NAME: chain.name} if parent is None else None
        opened = _open_span(
            chain.name, parent=parent, inputs=_json_inputs(scope), attributes=attributes, tags=tags,
            experiment_id=experiment_id,
        )
        known = credentials.secret_values([getattr(client, "defaults", {}), *(s.kwargs for s in chain.steps)])
        return cls(*opened, tuple(known)) if opened is not None else cls()

    @property
    def trace_id(self) -> str | None:
        return getattr(self.root, "trace_id", None)

    @contextmanager
    def step(self, step: Step, index: int, inputs: Mapping[str, Any]) -> Iterator[Any]:
        """A child span for one step (None when untraced), ended with the step's error if it fails."""
        opened = None
        if self.root is not None:
            attributes = {schema.KIND: "chain_step", schema.STEP_INDEX: index, schema.STEP_MODEL: step.model or ""}
            if step.template_name is not None:
                attributes[schema.STEP_TEMPLATE] = step.template_name
            opened = _open_span(step.name, parent=self.root, inputs=_json_inputs(inputs), attributes=attributes)
        if opened is None:
            yield None
            return
        live, token = opened
        try:
            yield live
        except BaseException as exc:
            _close_span(live, token, error=exc, known=self.secrets)
            raise
        _close_span(live, token)

    def end(self, *, result: ChainResult | None = None, error: BaseException | None = None) -> None:
        if self.root is None:
            return
        if result is not None:
            safely(self.root.set_attributes, {schema.COST_USD: result.cost, schema.LATENCY_S: result.latency})
        if isinstance(error, ChainStepError):
            safely(self.root.set_attributes, {schema.CHAIN_FAILED_STEP: error.step, schema.COST_USD: error.cost})
        outputs = {"output": result.output, "outputs": result.outputs} if result is not None else None
        _close_span(self.root, self.token, outputs=outputs, error=error, known=self.secrets)


def _record_answer(live: Any, response: Response) -> None:
    if live is None:
        return
    safely(
        live.set_attributes,
        {schema.COST_USD: response.cost, schema.LATENCY_S: response.latency, schema.CACHED: response.cached or "none"},
    )
    safely(live.set_outputs, response.text)


def _open_span(
    name: str,
    *,
    parent: Any,
    inputs: Any,
    attributes: dict[str, Any],
    tags: dict[str, str] | None = None,
    experiment_id: str | None = None,
) -> tuple[Any, Any] | None:
    """Start a live CHAIN span and make it MLflow's current span: (span, context token)."""
    try:
        import mlflow
        from mlflow.tracing.provider import set_span_in_context

        live = mlflow.start_span_no_context(
            name=name, span_type=schema.CHAIN, parent_span=parent, inputs=inputs, attributes=attributes,
            tags=tags, experiment_id=experiment_id,
        )
        return live, set_span_in_context(live)
    except Exception as exc:
        logger.warning("Could not start MLflow span %r (the chain is not affected): %s", name, exc)
        return None


def _close_span(
    live: Any, token: Any, *, outputs: Any = None, error: BaseException | None = None, known: Sequence[str] = ()
) -> None:
    try:
        from mlflow.tracing.provider import detach_span_from_context

        detach_span_from_context(token)
        if error is not None:  # scrubbed: a step's error may quote its key
            tracing.record_exception(live, tracing.exception_record(error, known))
        live.end(outputs=outputs)
    except Exception as exc:
        logger.warning("Could not end MLflow span (the chain is not affected): %s", exc)


def _json_inputs(values: Mapping[str, Any]) -> dict[str, Any]:
    """Span inputs: JSON-friendly values as they are, anything else as its text."""
    plain = (str, int, float, bool, list, dict, type(None))
    return {key: value if isinstance(value, plain) else str(value) for key, value in values.items()}
