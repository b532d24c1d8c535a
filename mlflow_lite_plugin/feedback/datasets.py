"""Fine-tuning datasets from traced calls: ``export_dataset(path, format="openai")``.

Every trace of an experiment whose root span is ours (``mlflow_lite.query``/``.stream``) is a
candidate: the caller's messages (as recorded on the root span, so without few-shot examples)
followed by the answer. A human correction (the ``expected_response`` expectation written by
``record_feedback``) replaces the answer. Cached answers are real answers and are kept.

A trace is dropped with the first reason that applies, counted in ``ExportSummary.dropped``:

- ``not_mlflow_lite``: not a trace of ours; ``before_since``: older than ``since``;
- ``error``: the call failed (unless ``include_errors=True``); ``stopped_early``: a stream closed
  before its end; ``unrated`` / ``low_rating``: with ``min_rating``, no HUMAN rating, or a mean
  below it (thumbs: more down than up);
- ``no_answer``: nothing to learn from; ``invalid_format``: the record breaks the format's rules.

A corrected trace is kept whatever its rating, error or early stop: those judged the original
answer, which the correction replaces.

Formats, each checked by its validator (``validate_record``):

- ``openai``: ``{"messages": [...]}``: roles system/user/assistant (``developer`` becomes
  ``system``), non-empty text contents, at least one user message, the last one the assistant's.
- ``anthropic``: ``{"system": "...", "messages": [...]}``: system messages are moved to
  ``system`` (joined by blank lines); the rest must alternate user/assistant, starting with user
  and ending with assistant. Consecutive messages of one role are merged (blank line between),
  as the Messages API itself combines consecutive turns; a conversation that still starts with
  the assistant is dropped as ``invalid_format``.
- ``jsonl``: ``{"prompt", "completion", "messages", "model", "trace_id", "rating", "correction"}``:
  the last user message, the answer, the OpenAI-style conversation, the model that answered, the
  trace, the overall human rating (mean, or thumbs up/down) and whether the answer is a correction.

mlflow and pandas are imported on first use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.core.messages import content_text, last_user_text
from mlflow_lite_plugin.feedback.human import (
    human_correction,
    human_ratings,
    is_error,
    meets,
    overall_rating,
    root_answer,
    root_messages,
    root_span,
    stopped_early,
)
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.entities import Trace

_logger = logging.getLogger(__name__)

FORMATS = ("openai", "anthropic", "jsonl")
_PAGE = 200  # traces per search page


@dataclass(frozen=True)
class _Candidate:
    """A kept trace, before formatting: the conversation ends with the answer."""

    trace_id: str
    model: str | None
    messages: list[dict[str, str]]
    rating: float | bool | None
    corrected: bool


@dataclass
class ExportSummary:
    """What ``export_dataset`` kept and dropped; ``records`` are exactly what was (or would be)
    written, ``trace_ids`` the trace of each."""

    format: str
    path: str | None
    records: list[dict[str, Any]] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return len(self.records)

    def to_pandas(self) -> pd.DataFrame:
        """One row per record, its fields as columns, plus ``trace_id``."""
        import pandas as pd

        frame = pd.DataFrame(self.records)
        if "trace_id" not in frame.columns:
            frame["trace_id"] = self.trace_ids
        return frame

    def to_mlflow_dataset(self, name: str | None = None) -> PandasDataset:
        """The records as an ``mlflow.data`` dataset (``mlflow.log_input`` logs it to a run);
        its source is the written file, if any."""
        from mlflow.data.pandas_dataset import from_pandas

        with warnings.catch_warnings():
            # MLflow registers its local-file source twice ("" and "file" schemes), then warns
            # that a path matches both; they are the same class.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple")
            frame = self.to_pandas()
            # source=None (nothing written yet) is what MLflow's default is; its annotation omits it
            source: Any = self.path
            return from_pandas(frame, source=source, name=name or f"mlflow_lite_{self.format}")

    def __str__(self) -> str:
        dropped = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items())) or "none"
        return f"kept {self.kept} {self.format} records, dropped {sum(self.dropped.values())} ({dropped})"


def export_dataset(
    path: str | os.PathLike[str] | None = None,
    *,
    format: str = "openai",
    experiment: str | None = None,
    min_rating: float | None = None,
    since: datetime | str | float | None = None,
    include_errors: bool = False,
    max_traces: int | None = None,
) -> ExportSummary:
    """Write the traces of ``experiment`` (a name; default: MLflow's active experiment) as a
    fine-tuning JSONL file at ``path`` (None: write nothing, just return the records).

    ``min_rating``: keep only traces with a mean HUMAN rating of at least this (None: rated or
    not). ``since``: only traces started at or after it (a datetime, naive meaning local time, an
    ISO 8601 string or epoch seconds). ``max_traces``: consider only the newest this many.
    Records come newest first.
    See the module docstring for the formats and the reasons a trace is dropped.
    """
    convert = _converter(format)
    _check_min_rating(min_rating)
    since_ms = _since_ms(since)
    if max_traces is not None and (not isinstance(max_traces, int) or isinstance(max_traces, bool) or max_traces < 1):
        raise ArgumentError("max_traces", f"must be an int >= 1 or None, got {max_traces!r}")
    summary = ExportSummary(format=format, path=None if path is None else str(path))
    experiment_id = _experiment_id(experiment)
    traces, older = _read(experiment_id, since_ms, max_traces)
    _count(summary, "before_since", older)
    for trace in traces:
        _add(summary, trace, convert, format, min_rating, include_errors)
    if path is not None:
        _write(Path(path), summary.records)
    _logger.info("Dataset export from experiment %s: %s", experiment_id, summary)
    return summary


# -- arguments --


def _converter(format: Any) -> Callable[[_Candidate], dict[str, Any]]:
    converters = {"openai": to_openai, "anthropic": to_anthropic, "jsonl": to_jsonl}
    if format not in converters:
        raise ArgumentError("format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
    return converters[format]


def _check_min_rating(min_rating: Any) -> None:
    real = isinstance(min_rating, (int, float)) and not isinstance(min_rating, bool)
    if min_rating is not None and not (real and math.isfinite(min_rating)):
        raise ArgumentError("min_rating", f"must be a number or None, got {min_rating!r}")


def _since_ms(since: Any) -> int | None:
    """``since`` in epoch milliseconds (the unit of MLflow's trace timestamps)."""
    if since is None:
        return None
    if isinstance(since, str):
        try:
            since = datetime.fromisoformat(since)
        except ValueError as exc:
            raise ArgumentError("since", f"is not an ISO 8601 date or time: {since!r}") from exc
    if isinstance(since, datetime):
        return int(since.timestamp() * 1000)
    if isinstance(since, (int, float)) and not isinstance(since, bool) and math.isfinite(since):
        return int(since * 1000)
    raise ArgumentError("since", f"must be a datetime, an ISO 8601 string or epoch seconds, got {since!r}")


def _experiment_id(name: str | None) -> str:
    import mlflow

    if name is None:
        from mlflow.tracking.fluent import _get_experiment_id

        # Where traces go without ml.set_experiment: the active experiment, else MLflow's default.
        return _get_experiment_id() or "0"
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError("experiment", f"must be an MLflow experiment name, got {name!r}")
    found = mlflow.MlflowClient().get_experiment_by_name(name)
    if found is None:
        raise ArgumentError("experiment", f"no MLflow experiment named {name!r} at {mlflow.get_tracking_uri()!r}")
    return found.experiment_id


# -- reading traces --


def _read(experiment_id: str, since_ms: int | None, max_traces: int | None) -> tuple[list[Trace], int]:
    """The newest ``max_traces`` traces: those since ``since_ms`` with their spans, and how many
    are older (counted from their metadata only, never loaded)."""
    if since_ms is None:
        return _search(experiment_id, None, max_traces, include_spans=True), 0
    recent = _search(experiment_id, f"trace.timestamp_ms >= {since_ms}", max_traces, include_spans=True)
    left = None if max_traces is None else max_traces - len(recent)
    if left == 0:
        return recent, 0
    return recent, len(_search(experiment_id, f"trace.timestamp_ms < {since_ms}", left, include_spans=False))


def _search(experiment_id: str, filter_string: str | None, limit: int | None, *, include_spans: bool) -> list[Trace]:
    """Every matching trace, newest first, page by page (at most ``limit``)."""
    import mlflow

    client = mlflow.MlflowClient()
    found: list[Trace] = []
    token = None
    while limit is None or len(found) < limit:
        page = client.search_traces(
            locations=[experiment_id],
            filter_string=filter_string,
            max_results=_PAGE if limit is None else min(_PAGE, limit - len(found)),
            order_by=["timestamp_ms DESC"],
            page_token=token,
            include_spans=include_spans,
            flush=token is None,  # traces still in MLflow's async export queue count too
        )
        found.extend(page)
        token = page.token
        if not token or not page:
            break
    return found


# -- selecting and formatting --


def _count(summary: ExportSummary, reason: str, n: int = 1) -> None:
    if n:
        summary.dropped[reason] = summary.dropped.get(reason, 0) + n


def _add(
    summary: ExportSummary,
    trace: Trace,
    convert: Callable[[_Candidate], dict[str, Any]],
    format: str,
    min_rating: float | None,
    include_errors: bool,
) -> None:
    candidate = _candidate(trace, min_rating, include_errors)
    if isinstance(candidate, str):
        _count(summary, candidate)
        return
    record = convert(candidate)
    problems = validate_record(record, format)
    if problems:
        _logger.debug("Trace %s is not a valid %s record: %s", candidate.trace_id, format, "; ".join(problems))
        _count(summary, "invalid_format")
        return
    summary.records.append(record)
    summary.trace_ids.append(candidate.trace_id)


def _candidate(trace: Trace, min_rating: float | None, include_errors: bool) -> _Candidate | str:
    """The trace as a conversation ending with its answer, or the reason it is dropped."""
    root = root_span(trace)
    if root is None:
        return "not_mlflow_lite"
    ratings = human_ratings(trace.info)
    correction = human_correction(trace.info)
    if correction is None:
        if is_error(trace) and not include_errors:
            return "error"
        if stopped_early(root):
            return "stopped_early"
        if min_rating is not None and not ratings:
            return "unrated"
        if min_rating is not None and not meets(ratings, min_rating):
            return "low_rating"
    answer = correction or root_answer(root)
    if answer is None:
        return "no_answer"
    messages = [_plain(m) for m in root_messages(root)] + [{"role": "assistant", "content": answer}]
    model = root.attributes.get(schema.MODEL) or trace.info.tags.get(schema.MODEL)
    return _Candidate(trace.info.trace_id, model, messages, overall_rating(ratings), correction is not None)


def _plain(message: Mapping[str, Any]) -> dict[str, str]:
    """A message as role and text (content parts joined; ``developer`` is a system message)."""
    role = str(message.get("role"))
    return {"role": "system" if role == "developer" else role, "content": content_text(message.get("content"))}


def to_openai(candidate: _Candidate) -> dict[str, Any]:
    return {"messages": candidate.messages}


def to_anthropic(candidate: _Candidate) -> dict[str, Any]:
    system = [m["content"] for m in candidate.messages if m["role"] == "system"]
    turns: list[dict[str, str]] = []
    for message in (m for m in candidate.messages if m["role"] != "system"):
        if turns and turns[-1]["role"] == message["role"]:
            turns[-1] = {"role": message["role"], "content": turns[-1]["content"] + "\n\n" + message["content"]}
        else:
            turns.append(dict(message))
    record: dict[str, Any] = {"messages": turns}
    if system:
        record = {"system": "\n\n".join(system), **record}
    return record


def to_jsonl(candidate: _Candidate) -> dict[str, Any]:
    return {
        "prompt": last_user_text(candidate.messages[:-1]),
        "completion": candidate.messages[-1]["content"],
        "messages": candidate.messages,
        "model": candidate.model,
        "trace_id": candidate.trace_id,
        "rating": candidate.rating,
        "correction": candidate.corrected,
    }


# -- validators: the rules of each format --


def validate_record(record: Any, format: str) -> list[str]:
    """The problems of ``record`` under ``format``'s rules (empty: valid)."""
    validators = {"openai": validate_openai, "anthropic": validate_anthropic, "jsonl": validate_jsonl}
    if format not in validators:
        raise ArgumentError("format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
    if not isinstance(record, Mapping):
        return [f"a record must be a JSON object, got {type(record).__name__}"]
    return validators[format](record)


def _message_problems(messages: Any, roles: tuple[str, ...]) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["messages must be a non-empty list"]
    problems = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
            problems.append(f"messages[{i}] must have exactly 'role' and 'content'")
        elif message["role"] not in roles:
            problems.append(f"messages[{i}] has role {message['role']!r}, not one of {', '.join(roles)}")
        elif not isinstance(message["content"], str) or not message["content"].strip():
            problems.append(f"messages[{i}] must have non-empty text content")
    if not problems and messages[-1]["role"] != "assistant":
        problems.append("the last message must be the assistant's")
    return problems


def _extra_keys(record: Mapping[str, Any], allowed: set[str]) -> list[str]:
    extra = sorted(set(record) - allowed)
    return [f"unexpected keys {extra}"] if extra else []


def validate_openai(record: Mapping[str, Any]) -> list[str]:
    problems = _extra_keys(record, {"messages"})
    problems += _message_problems(record.get("messages"), ("system", "user", "assistant"))
    if not problems and not any(m["role"] == "user" for m in record["messages"]):
        problems.append("there must be at least one user message")
    return problems


def validate_anthropic(record: Mapping[str, Any]) -> list[str]:
    problems = _extra_keys(record, {"system", "messages"})
    if "system" in record and (not isinstance(record["system"], str) or not record["system"].strip()):
        problems.append("system must be non-empty text when present")
    messages = record.get("messages")
    problems += _message_problems(messages, ("user", "assistant"))
    if not problems and isinstance(messages, list):  # _message_problems refuses a non-list
        expected = ["user", "assistant"] * len(messages)
        if [m["role"] for m in messages] != expected[: len(messages)]:
            problems.append("messages must alternate user/assistant, starting with user")
    return problems


def validate_jsonl(record: Mapping[str, Any]) -> list[str]:
    keys = {"prompt", "completion", "messages", "model", "trace_id", "rating", "correction"}
    problems = [f"missing keys {sorted(keys - set(record))}"] if keys - set(record) else []
    problems += _extra_keys(record, keys)
    if problems:
        return problems
    problems += _message_problems(record["messages"], ("system", "user", "assistant"))
    for name in ("prompt", "completion", "trace_id"):
        if not isinstance(record[name], str) or not record[name].strip():
            problems.append(f"{name} must be non-empty text")
    if not problems:
        if record["completion"] != record["messages"][-1]["content"]:
            problems.append("completion must be the last (assistant) message")
        if record["prompt"] != last_user_text(record["messages"]):
            problems.append("prompt must be the last user message")
    if record["model"] is not None and not isinstance(record["model"], str):
        problems.append("model must be text or null")
    rating = record["rating"]
    if rating is not None and not (isinstance(rating, (int, float)) and math.isfinite(rating)):
        problems.append("rating must be a number, true/false or null")
    if not isinstance(record["correction"], bool):
        problems.append("correction must be true or false")
    return problems


# -- writing --


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line, written to a temporary file first so a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)
