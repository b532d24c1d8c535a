"""Trace explorer endpoints: search the experiment's traces, show one, record feedback on it.

Traces are read from MLflow (``mlflow.search_traces``); a call's figures come from our
``mlflow_lite.query``/``mlflow_lite.stream`` spans, which are the root of a plain call and
nested inside a chain's trace. Only traces of the UI's experiment are shown or rated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from mlflow_lite_plugin.apps.ui.state import UIState, ui_state
from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError
from mlflow_lite_plugin.feedback import human as feedback
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from mlflow.entities import Assessment, Span, Trace

router = APIRouter(prefix="/api")

# Span fields shown on their own, not among the attributes.
_SPAN_IO = ("mlflow.spanInputs", "mlflow.spanOutputs")


class FeedbackRequest(BaseModel):
    """The arguments of ``ml.record_feedback`` (checked there)."""

    model_config = ConfigDict(extra="forbid")

    rating: bool | int | None = None
    correction: str | None = None
    comment: str | None = None
    user: str | None = None


@router.get("/traces")
def list_traces(
    q: str = "",
    model: str = "",
    limit: int = Query(50, ge=1, le=500),
    ui: UIState = Depends(ui_state),
) -> Response:
    """The newest traces, optionally those whose text contains ``q`` and whose requested model
    contains ``model``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    ui.client.flush_traces()  # calls just made in the playground are listed too
    try:
        found = mlflow.search_traces(
            locations=[ui.experiment_id()],
            filter_string=search_filter(q, model),
            max_results=limit,
            order_by=["timestamp_ms DESC"],
            return_type="list",
        )
    except MlflowException as exc:
        raise ui.error(400, exc.message) from exc
    return ui.respond({"experiment": ui.experiment, "traces": [row(t) for t in found]})


@router.get("/traces/{trace_id}")
def trace_detail(trace_id: str, ui: UIState = Depends(ui_state)) -> Response:
    """Spans (tree order, timing, attributes, inputs, outputs, events) and assessments."""
    return ui.respond(detail(_own_trace(trace_id, ui)))


@router.post("/traces/{trace_id}/feedback")
def record_feedback(trace_id: str, body: FeedbackRequest, ui: UIState = Depends(ui_state)) -> Response:
    """Store a rating and/or correction (HUMAN assessments); returns the trace's assessments."""
    _own_trace(trace_id, ui)
    try:
        ui.client.record_feedback(
            trace_id, body.rating, body.correction, user=body.user, comment=body.comment
        )
    except ArgumentError as exc:
        raise ui.error(400, exc) from exc
    return ui.respond({"assessments": assessments(_own_trace(trace_id, ui))})


def _own_trace(trace_id: str, ui: UIState) -> Trace:
    """The trace, if it is one of the experiment's; else a 404."""
    ui.client.flush_traces()
    try:
        trace = feedback.get_trace(trace_id)
    except MlflowLiteError as exc:
        raise ui.error(404, exc) from exc
    if trace.info.experiment_id != ui.experiment_id():
        raise ui.error(404, f"trace {trace_id!r} is not in experiment {ui.experiment!r}")
    return trace


def search_filter(text: str, model: str) -> str | None:
    """An MLflow trace filter: text anywhere in the spans, and the requested model."""
    clauses = []
    if text.strip():
        clauses.append(f"trace.text ILIKE {_contains(text)}")
    if model.strip():
        clauses.append(f"tags.`{schema.MODEL}` ILIKE {_contains(model)}")
    return " AND ".join(clauses) or None


def _contains(text: str) -> str:
    # Span content is stored as JSON, where quotes and backslashes are escaped: they can never
    # match literally, so they become wildcards, and the pattern is double-quoted (a ' is fine).
    pattern = text.strip().replace("\\", "%").replace('"', "%")
    return f'"%{pattern}%"'


def calls(trace: Trace) -> list[Span]:
    """Our query/stream spans of a trace, in start order."""
    spans = [s for s in trace.data.spans if s.name in schema.ROOT_SPANS]
    return sorted(spans, key=lambda s: s.start_time_ns)


def total(spans: list[Span], key: str) -> float | None:
    """The sum of a numeric attribute over spans; None if a span lacks it (e.g. an unknown cost)."""
    values = [s.attributes.get(key) for s in spans]
    numbers = [v for v in values if isinstance(v, (int, float))]
    if not values or len(numbers) != len(values):
        return None
    return sum(numbers)


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    """The call's own ``tags=`` (MLflow's and ours start with "mlflow")."""
    return {k: v for k, v in tags.items() if not k.startswith("mlflow")}


def row(trace: Trace) -> dict[str, Any]:
    """One line of the trace list."""
    info = trace.info
    spans = calls(trace)
    question = answer = None
    if spans:
        question = feedback.last_user_text(feedback.root_messages(spans[0])) or None
        answer = feedback.root_answer(spans[-1])
    cached = sorted({str(s.attributes.get(schema.CACHED)) for s in spans} - {"none", "None"})
    return {
        "trace_id": info.trace_id,
        "time_ms": info.request_time,
        "state": getattr(info.state, "value", str(info.state)),
        "duration_ms": info.execution_duration,
        "name": info.tags.get("mlflow.traceName"),
        "model": _model(spans[-1]) if spans else None,
        "question": question or info.request_preview,
        "answer": answer or info.response_preview,
        "tokens": total(spans, schema.TOTAL_TOKENS),
        "cost": total(spans, schema.COST_USD),
        "cached": ", ".join(cached) or None,
        "rating": feedback.overall_rating(feedback.human_ratings(info)),
        "template": info.tags.get(schema.TEMPLATE),
        "tags": user_tags(info.tags),
    }


def _model(span: Span) -> str | None:
    """The model that answered; the one asked for when the call failed before an answer."""
    return span.attributes.get(schema.MODEL) or span.attributes.get(schema.REQUESTED_MODEL)


def detail(trace: Trace) -> dict[str, Any]:
    """Everything the detail view shows."""
    spans = trace.data.spans
    start = min((s.start_time_ns for s in spans), default=0)
    return {
        **row(trace),
        "tags": {k: v for k, v in trace.info.tags.items() if not k.startswith("mlflow.")},
        "spans": [_span(s, depth, start) for s, depth in _tree(spans)],
        "assessments": assessments(trace),
    }


def _tree(spans: list[Span]) -> list[tuple[Span, int]]:
    """Spans depth-first (children in start order), with their depth."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for span in sorted(spans, key=lambda s: s.start_time_ns):
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[Span, int]] = []

    def visit(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            ordered.append((span, depth))
            visit(span.span_id, depth + 1)

    visit(None, 0)
    return ordered


def _span(span: Span, depth: int, trace_start_ns: int) -> dict[str, Any]:
    end = span.end_time_ns or span.start_time_ns
    status = span.status
    return {
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "depth": depth,
        "name": span.name,
        "type": span.span_type,
        "start_ms": (span.start_time_ns - trace_start_ns) / 1e6,
        "duration_ms": (end - span.start_time_ns) / 1e6,
        "status": getattr(status.status_code, "value", str(status.status_code)),
        "status_message": status.description or None,
        "attributes": {k: v for k, v in span.attributes.items() if k not in _SPAN_IO},
        "inputs": span.inputs,
        "outputs": span.outputs,
        "events": [{"name": e.name, "attributes": e.attributes} for e in span.events],
    }


def assessments(trace: Trace) -> list[dict[str, Any]]:
    """Feedback (ratings, metrics, validation) and expectations (corrections), oldest first."""
    found = sorted(trace.info.assessments or [], key=lambda a: a.create_time_ms or 0)
    return [_assessment(a) for a in found]


def _assessment(a: Assessment) -> dict[str, Any]:
    kind = "expectation" if a.expectation is not None else "feedback"
    value = a.expectation.value if a.expectation is not None else (a.feedback.value if a.feedback else None)
    error = a.feedback.error if a.feedback is not None else None
    return {
        "assessment_id": a.assessment_id,
        "name": a.name,
        "kind": kind,
        "value": value,
        "rationale": a.rationale,
        "source_type": a.source.source_type if a.source else None,
        "source_id": a.source.source_id if a.source else None,
        "error": error.error_message if error is not None else None,
        "valid": a.valid,
        "time_ms": a.create_time_ms,
    }
