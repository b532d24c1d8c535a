"""Playground endpoints: settings for the page, templates, and a prompt run streamed as SSE.

``POST /api/run`` answers with Server-Sent Events: ``chunk`` events (``{"text": ...}``) as the
model streams, then one ``done`` event with tokens, cost, latency, cache status, validation and
the trace id, or an ``error`` event. Comparing two models is two runs in parallel.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mlflow_lite_plugin.apps.ui.state import UIState, ui_state
from mlflow_lite_plugin.client import merge_rules
from mlflow_lite_plugin.core.errors import MlflowLiteError
from mlflow_lite_plugin.core.response import Response as Answer
from mlflow_lite_plugin.core.response import Stream
from mlflow_lite_plugin.prompts import templates

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api")


class RunRequest(BaseModel):
    """One playground run. Unknown fields are refused: provider settings (``api_base``,
    ``api_key``...) are the server's, never the browser's."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=300)
    prompt: str | None = None
    system: str | None = None
    template: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    validation: dict[str, Any] | None = None  # validate= rules
    cache: bool = True
    tags: dict[str, str] = Field(default_factory=dict)


@router.get("/config")
def config(ui: UIState = Depends(ui_state)) -> Response:
    """What the page needs to start: the experiment, model suggestions and built-in templates."""
    return ui.respond(
        {
            "experiment": ui.experiment,
            "default_model": ui.default_model,
            "models": ui.models,
            "templates": templates.list_templates(),
        }
    )


@router.get("/template")
def template(name: str, ui: UIState = Depends(ui_state)) -> Response:
    """A template's text, system prompt and variables: a built-in, or any Prompt Registry name
    (``name``, ``name@alias``, ``name/3``)."""
    try:
        chosen = templates.resolve_template(name)
    except MlflowLiteError as exc:
        raise ui.error(404, exc) from exc
    options = {o.name: o for o in getattr(chosen, "options", ())}
    variables = [
        {
            "name": name,
            "default": options[name].default if name in options else None,
            # Options of built-ins take JSON values (labels=["a", "b"], max_words=50).
            "json": name in options,
        }
        for name in chosen.variables
    ]
    return ui.respond(
        {
            "name": chosen.name,
            "version": chosen.version,
            "source": chosen.source,
            "system": chosen.system,
            "template": chosen.template,
            "variables": variables,
        }
    )


@router.post("/run")
def run(body: RunRequest, ui: UIState = Depends(ui_state)) -> StreamingResponse:
    """Start the call (argument errors are a 400 here, before any output) and stream it."""
    try:
        stream = ui.client.stream(**call_arguments(body))
    except MlflowLiteError as exc:
        raise ui.error(400, exc) from exc
    return StreamingResponse(
        _events(stream, ui),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def call_arguments(body: RunRequest) -> dict[str, Any]:
    """The ``client.stream`` keywords of a run. A template is rendered here (rather than by
    ``query_with_template``, which does not stream); its name and version go on the trace tags."""
    kwargs: dict[str, Any] = {
        name: value
        for name, value in (("temperature", body.temperature), ("max_tokens", body.max_tokens), ("top_p", body.top_p))
        if value is not None
    }
    if not body.cache:
        kwargs["cache"] = False
    tags = dict(body.tags)
    rules = body.validation
    if body.template:
        chosen = templates.resolve_template(body.template)
        if body.system is not None and body.system != (chosen.system or ""):
            chosen = replace(chosen, system=body.system or None)  # the user edited the system prompt
        prepared = chosen.render(_variables(chosen, body.variables))
        rules = merge_rules(prepared.validate, rules)
        tags = {**prepared.trace_attributes, **tags}
        kwargs["messages"] = prepared.messages
    else:
        kwargs.update(prompt=body.prompt, system=body.system or None)
    if rules:
        # Show an invalid answer with its errors instead of failing the run.
        kwargs.update(validate=rules, on_fail="return")
    if tags:
        kwargs["tags"] = tags
    return {"model": body.model, **kwargs}


def _variables(chosen: templates.Template, given: dict[str, str]) -> dict[str, Any]:
    """Variables from the form: an empty field is not given (its default applies); a built-in's
    options are read as JSON when they parse (``["a", "b"]``, ``50``), else kept as text."""
    options = {o.name for o in getattr(chosen, "options", ())}
    values: dict[str, Any] = {}
    for name, text in given.items():
        if not text.strip():
            continue
        values[name] = text
        if name in options:
            with contextlib.suppress(ValueError):  # not JSON: the option keeps its text
                values[name] = json.loads(text)
    return values


def _events(stream: Stream, ui: UIState) -> Iterator[str]:
    """The SSE events of one run; Starlette iterates this in a worker thread."""
    with stream:
        try:
            for chunk in stream:
                yield _event(ui, "chunk", {"text": chunk})
        except MlflowLiteError as exc:  # provider failure, budget refusal, rate limit...
            trace_id = getattr(exc, "trace_id", None)  # TracedError: the failed call's trace
            yield _event(ui, "error", {"message": str(exc), "type": type(exc).__name__, "trace_id": trace_id})
            return
        except Exception as exc:  # the response has started: report, don't drop the connection
            logger.exception("Playground run failed")
            yield _event(ui, "error", {"message": f"internal error: {type(exc).__name__}", "type": "InternalError"})
            return
    assert stream.response is not None
    yield _event(ui, "done", summary(stream.response))


def summary(response: Answer) -> dict[str, Any]:
    """What the playground shows under an answer."""
    validation = response.validation
    return {
        "model": response.model,
        "usage": response.usage,
        "cost": response.cost,
        "latency": response.latency,
        "first_token_latency": response.time_to_first_token,  # not *_token: redacted as a credential name
        "cached": response.cached,
        "finish_reason": response.finish_reason,
        "validation": None
        if validation is None
        else {"passed": validation.passed, "errors": validation.errors, "attempts": validation.attempts},
        "trace_id": response.trace_id,
    }


def _event(ui: UIState, name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {ui.dumps(data)}\n\n"
