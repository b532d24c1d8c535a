"""The validation stage: checks answers against a call's ``validate=`` rules.

- every answer (cached ones too) gets ``response.validation`` (passed, errors, attempts);
- ``on_fail="retry"``: an invalid provider answer is re-asked with its errors, up to
  ``max_attempts`` answers in all; every attempt is its own span and is paid for, and the
  returned answer's cost and usage add them all up;
- streams are checked chunk by chunk; a violation that is already certain stops the stream there;
- ``on_fail="raise"`` (the default) and an exhausted ``"retry"`` raise :class:`ValidationError`
  once the answer is paid for and traced; ``"return"`` hands the invalid answer back.

It sits after the provider and before the cache stores (``after`` hooks run in reverse order),
so an invalid answer is never cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.core.errors import ValidationError
from mlflow_lite_plugin.core.pipeline import STAGE_ORDER, Call, Stage, StopStream
from mlflow_lite_plugin.core.results import StreamViolation, ValidationResult
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow_lite_plugin.controls.validation.rules import Validator
    from mlflow_lite_plugin.core.model_names import ModelRef
    from mlflow_lite_plugin.core.response import Response


def parse_rules(spec: Any, on_fail: Any, max_attempts: Any) -> Validator:
    """The ``validate=`` rules of a call (``build_request(rules=parse_rules)``); raises ArgumentError."""
    from mlflow_lite_plugin.controls.validation.rules import Validator  # ~0.1 s: only calls with rules pay for it

    return Validator(spec, on_fail=on_fail, max_attempts=max_attempts)


def check_answer(call: Call, text: str, model: ModelRef | None = None) -> ValidationResult:
    """Validate ``text`` against the call's rules (token lengths with ``model``'s tokenizer)."""
    assert call.request.validator is not None
    return call.request.validator.check(text, _token_counter(call, model))


def _token_counter(call: Call, model: ModelRef | None = None) -> Callable[[str], int]:
    """Token lengths with the tokenizer of ``model`` (default: the model answering the call)."""
    chosen = model or call.state.get("answering_model") or call.models[0]
    return lambda text: call.pricing.count_tokens(chosen, text)


class ValidationStage(Stage):
    name = "validation"
    order = STAGE_ORDER[name]  # rules come with each call (``validate=``): nothing to describe

    def reask(self, call: Call, response: Response) -> bool:
        validator = call.request.validator
        if validator is None or validator.on_fail != "retry":
            return False
        answers = call.state.setdefault("validation_answers", [])
        answers.append(response)
        result = response.validation = check_answer(call, response.text)
        result.attempts = len(answers)
        if result.passed or result.attempts >= validator.max_attempts:
            _add_up(response, answers)
            return False
        call.followups += [
            {"role": "assistant", "content": response.text},
            {"role": "user", "content": validator.repair_prompt(result)},
        ]
        call.span.add_event("validation_reask", {"attempt": result.attempts, "errors": result.errors})
        return True

    def on_chunk(self, call: Call, chunk: str) -> None:
        validator = call.request.validator
        if validator is None:
            return
        checker = call.state.get("validation_stream")
        if checker is None:
            checker = call.state["validation_stream"] = validator.incremental(_token_counter(call))
        try:
            checker.feed(chunk)
        except StreamViolation as violation:
            call.state["validation_stop"] = violation
            raise StopStream(
                str(violation),
                {
                    schema.VALIDATION_STOPPED_AT_CHAR: violation.read,
                    schema.VALIDATION_STOP_RULE: violation.rule,
                    schema.VALIDATION_STOP_PATH: violation.path or "",
                },
            ) from None

    def after(self, call: Call, response: Response) -> None:
        if call.request.validator is None:
            return
        stop: StreamViolation | None = call.state.get("validation_stop")
        if stop is not None:
            response.validation = ValidationResult(False, [str(stop)], [stop.rule])
        elif response.finish_reason == "cancelled":
            return  # the caller stopped reading: there is no whole answer to judge
        elif response.validation is None:
            response.validation = check_answer(call, response.text)
        self._record(call, response.validation)

    def reject(self, call: Call, response: Response) -> BaseException | None:
        validator = call.request.validator
        result = response.validation
        if validator is None or result is None or result.passed or validator.on_fail == "return":
            return None
        stop: StreamViolation | None = call.state.get("validation_stop")
        return ValidationError(response, read=stop.read if stop else None, path=stop.path if stop else None)

    def _record(self, call: Call, result: ValidationResult) -> None:
        assert call.request.validator is not None
        call.span.set_attributes(
            {
                schema.VALIDATION_PASSED: result.passed,
                schema.VALIDATION_ERRORS: result.errors,
                schema.VALIDATION_ATTEMPTS: result.attempts,
                schema.VALIDATION_RULES: call.request.validator.describe(),
            }
        )
        call.span.log_feedback(
            schema.VALIDATION,
            result.passed,
            rationale="; ".join(result.errors) or None,
            source_type="CODE",
            source_id=schema.VALIDATION_SOURCE,
        )


def _add_up(final: Response, answers: list[Response]) -> None:
    """The returned answer of a re-asked call carries the cost and tokens of every attempt."""
    if len(answers) < 2:
        return
    costs = [a.cost for a in answers]
    final.cost = None if any(c is None for c in costs) else sum(costs)  # type: ignore[arg-type]
    totals: dict[str, Any] = {}
    for answer in answers:
        for key, value in answer.usage.items():
            totals[key] = totals.get(key, 0) + value
    final.usage = totals
