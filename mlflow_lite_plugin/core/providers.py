"""Provider calls through LiteLLM: one span per attempt, retries and fallbacks, responses.

This is the terminal of the pipeline. Keywords pass straight to ``litellm.completion`` (so
``api_base``, ``api_key``, ``timeout``, ``temperature``... behave as in LiteLLM), except that
retries are ours: every attempt is its own span and is costed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.core import deadline
from mlflow_lite_plugin.core.errors import ProviderError, from_provider_exception, local_request_error
from mlflow_lite_plugin.core.model_names import litellm_module
from mlflow_lite_plugin.core.pipeline import chat_inputs
from mlflow_lite_plugin.core.response import Response, usage_dict
from mlflow_lite_plugin.core.retry import Attempt, AttemptPlan
from mlflow_lite_plugin.security import credentials
from mlflow_lite_plugin.tracing import schema
from mlflow_lite_plugin.tracing import tracer as tracing

if TYPE_CHECKING:
    from mlflow_lite_plugin.core.pipeline import Call
    from mlflow_lite_plugin.tracing.tracer import NullSpan, Span

def is_secret(name: str) -> bool:
    """True for a parameter name that carries credentials (never traced, never saved)."""
    return credentials.is_secret_name(name)


def _safe_params(params: dict[str, Any], known: list[str]) -> dict[str, Any]:
    """The call's parameters as a trace shows them: credentials left out, and secrets inside the
    others (a URL's password, a key in ``extra_body``) masked."""
    return credentials.scrub_data({k: v for k, v in params.items() if not is_secret(k)}, known)


class Provider:
    """Runs the provider attempts of a call."""

    def complete(self, call: Call) -> Response:
        plan = AttemptPlan(call.models, call.request.num_retries)
        for attempt in plan:
            span = self._start(call, attempt)
            try:
                with span.active():
                    raw = litellm_module().completion(**self._kwargs(call, attempt))
            except Exception as exc:
                time.sleep(deadline.bound(plan.failed(attempt, self._failed(span, attempt, exc))))
                continue
            return self._answered(call, attempt, span, raw)
        raise AssertionError("unreachable: AttemptPlan raises when exhausted")

    async def acomplete(self, call: Call) -> Response:
        plan = AttemptPlan(call.models, call.request.num_retries)
        for attempt in plan:
            span = self._start(call, attempt)
            try:
                with span.active():
                    raw = await litellm_module().acompletion(**self._kwargs(call, attempt))
            except Exception as exc:
                await asyncio.sleep(deadline.bound(plan.failed(attempt, self._failed(span, attempt, exc))))
                continue
            return self._answered(call, attempt, span, raw)
        raise AssertionError("unreachable: AttemptPlan raises when exhausted")

    def stream(self, call: Call) -> Generator[str, None, Response]:
        """Yield text chunks; failures before the first chunk are retried like ``complete``."""
        plan = AttemptPlan(call.models, call.request.num_retries)
        for attempt in plan:
            span = self._start(call, attempt)
            try:
                with span.active():
                    chunks = litellm_module().completion(**self._kwargs(call, attempt, stream=True))
                    iterator = iter(chunks)
                    first = next(iterator, None)  # HTTP errors surface here, before any output
            except Exception as exc:
                time.sleep(deadline.bound(plan.failed(attempt, self._failed(span, attempt, exc))))
                continue
            return (yield from self._relay(call, attempt, span, chunks, first, iterator))
        raise AssertionError("unreachable: AttemptPlan raises when exhausted")

    # -- steps shared by the three paths --

    def _kwargs(self, call: Call, attempt: Attempt, stream: bool = False) -> dict[str, Any]:
        kwargs = dict(call.request.params)
        kwargs.pop("num_retries", None)
        kwargs.update(model=attempt.model.name, messages=call.messages)
        # Retries are ours (one span each); stop the OpenAI SDK from retrying underneath.
        kwargs.setdefault("max_retries", 0)
        # A served request's deadline: the HTTP call is abandoned when its answer is no longer wanted.
        if deadline.remaining() is not None:
            kwargs["timeout"] = deadline.bound(kwargs.get("timeout"))
        if stream:
            kwargs["stream"] = True
            # LiteLLM then reports the provider's own token counts at the end of every stream.
            kwargs.setdefault("stream_options", {"include_usage": True})
            if tracing.autolog_logs_streams_separately():
                kwargs["no-log"] = True
        return kwargs

    def _start(self, call: Call, attempt: Attempt) -> Span | NullSpan:
        deadline.check(f"provider attempt {attempt.number} ({attempt.model.name})")
        call.state["answering_model"] = attempt.model
        known = credentials.secret_values(call.request.params)
        call.span.hide(known)  # the key this call uses, masked in its trace whatever it looks like
        inputs = {
            **chat_inputs(call.messages, attempt.model.name, call.request.images),
            **_safe_params(call.request.params, known),
        }
        reask = f", re-ask {call.reasks}" if call.reasks else ""
        return call.span.child(
            f"{attempt.model.name} (attempt {attempt.number}{reask})",
            schema.CHAT_MODEL,
            inputs=inputs,
            attributes={
                schema.LLM_MODEL: attempt.model.name,
                schema.LLM_PROVIDER: attempt.model.provider,
                schema.ATTEMPT: attempt.number,
                schema.RETRY: attempt.retry,
                schema.REASK: call.reasks,
            },
        )

    def _failed(self, span: Span | NullSpan, attempt: Attempt, exc: Exception) -> ProviderError:
        """The typed error of a failed attempt; raises at once if the request itself is bad
        (LiteLLM could not encode it), as no retry or fallback would send anything different."""
        local = local_request_error(exc, attempt.model.name)
        if local is not None:
            local._trace = span.trace_ref
            span.end(error=local)
            raise local from exc
        error = from_provider_exception(exc, attempt.model.name)
        error._trace = span.trace_ref
        span.set_attributes({schema.STATUS_CODE: error.status_code, schema.TRANSIENT: error.transient})
        span.end(error=error)
        return error

    def _answered(
        self, call: Call, attempt: Attempt, span: Span | NullSpan, raw: Any, usage: Any = None
    ) -> Response:
        """Build the Response of a successful attempt; ``usage`` overrides ``raw.usage`` (streams)."""
        choice = raw.choices[0] if raw.choices else None
        message = getattr(choice, "message", None)
        if usage is None and not call.request.stream:
            usage = getattr(raw, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        text = (getattr(message, "content", None) or "") if message is not None else ""
        if prompt_tokens is None:
            prompt_tokens = call.prompt_tokens
        if completion_tokens is None:
            completion_tokens = call.pricing.count_tokens(attempt.model, text)
        # A streamed answer is priced from the usage the provider sent, not the assembled body.
        priced = None if call.request.stream else raw
        breakdown = call.pricing.breakdown(attempt.model, prompt_tokens, completion_tokens, priced)
        cost = None if breakdown is None else breakdown["total_cost"]
        call.attempt_costs.append(cost)
        response = Response(
            text=text,
            model=attempt.model.name,
            usage=usage_dict(prompt_tokens, completion_tokens),
            cost=cost,
            latency=0.0,
            finish_reason=getattr(choice, "finish_reason", None),
            provider=attempt.model.provider,
            requested_model=call.request.model,
            raw=raw,
        )
        attributes: dict[str, Any] = {
            schema.CHAT_USAGE: {
                "input_tokens": prompt_tokens,
                "output_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            schema.COST_KNOWN: cost is not None,
        }
        if breakdown is not None:  # unknown: left unset (MLflow's store rejects a null cost)
            attributes[schema.LLM_COST] = breakdown
        span.set_attributes(attributes)
        span.end(outputs=_dump(raw))
        return response

    def _relay(
        self,
        call: Call,
        attempt: Attempt,
        span: Span | NullSpan,
        chunks: Any,
        first: Any,
        iterator: Iterator[Any],
    ) -> Generator[str, None, Response]:
        received: list[Any] = []
        chunk = first
        try:
            while chunk is not None:
                received.append(chunk)
                text = _delta_text(chunk)
                if text:
                    if call.first_token_at is None:
                        call.first_token_at = time.perf_counter()
                        span.add_event("first_token")
                    call.parts.append(text)
                    yield text
                chunk = next(iterator, None)
        except GeneratorExit:
            _close_stream(chunks)
            span.set_attributes({schema.STOPPED_EARLY: True})
            span.end(outputs={"partial_text": "".join(call.parts)})
            raise
        except Exception as exc:
            _close_stream(chunks)
            raise self._failed(span, attempt, exc) from exc
        raw, usage = _assembled(attempt, call.parts, received)
        return self._answered(call, attempt, span, raw, usage)


def _assembled(attempt: Attempt, parts: list[str], chunks: list[Any]) -> tuple[Any, Any]:
    """The streamed answer as one chat completion, and the usage the provider sent (or None)."""
    raw = litellm_module().ModelResponse(model=attempt.model.name)
    raw.choices[0].message.content = "".join(parts)
    usage = None
    for chunk in chunks:
        choices = getattr(chunk, "choices", None) or []
        if choices and getattr(choices[0], "finish_reason", None):
            raw.choices[0].finish_reason = choices[0].finish_reason
        if getattr(getattr(chunk, "usage", None), "completion_tokens", None):
            usage = chunk.usage
    return raw, usage


def _delta_text(chunk: Any) -> str:
    choices = getattr(chunk, "choices", None) or []
    delta = getattr(choices[0], "delta", None) if choices else None
    return (getattr(delta, "content", None) or "") if delta is not None else ""


def _close_stream(chunks: Any) -> None:
    """Close the HTTP response under a LiteLLM stream we stop reading."""
    for target in (getattr(chunks, "completion_stream", None), chunks):
        close = getattr(target, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # best effort: the stream is abandoned either way
                close()


def _dump(raw: Any) -> Any:
    dump = getattr(raw, "model_dump", None)
    return dump() if callable(dump) else raw
