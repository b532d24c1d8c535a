"""The loaded ``mlflow_lite`` model: what ``mlflow.pyfunc.load_model`` returns and a scoring server calls.

:class:`LiteModel` is a :class:`~mlflow_lite_plugin.client.Client` configured from the saved settings
(each control read back through its settings class, so models saved in any earlier format load) and
its prompt. ``predict`` answers a DataFrame of the prompt's variables (strings, or with
``return_details=True`` a DataFrame of the response fields); ``predict_stream`` streams one row. Our
errors reach MLflow as :func:`served_error`, whose code the scoring server turns into the right HTTP
status, with credentials scrubbed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.utils.model_utils import _get_flavor_configuration

from mlflow_lite_plugin.cache.stage import CacheSettings, SemanticCacheSettings
from mlflow_lite_plugin.client import Client, build_call_request
from mlflow_lite_plugin.controls.budget.settings import BudgetSettings
from mlflow_lite_plugin.controls.budget.stage import BudgetExceededError
from mlflow_lite_plugin.controls.ratelimit import RateLimitExceededError, RateLimitSettings
from mlflow_lite_plugin.core import deadline, errors
from mlflow_lite_plugin.core.batch import gather_bounded, run_sync
from mlflow_lite_plugin.core.deadline import DeadlineExceededError
from mlflow_lite_plugin.core.errors import MlflowLiteError
from mlflow_lite_plugin.core.pipeline import Settings
from mlflow_lite_plugin.core.response import Response
from mlflow_lite_plugin.flavor.constants import (
    ANSWER_COLUMN,
    CONFIG_FILE,
    DETAIL_COLUMNS,
    FLAVOR_NAME,
    SEMANTIC_CACHE_DIR_KEY,
    SERVED_BY_MLFLOW_ENV,
)
from mlflow_lite_plugin.flavor.serving import ServingLimits
from mlflow_lite_plugin.security import credentials

# The controls saved with a model: config key -> their settings (saved as ``to_dict()``, the
# keywords of set_cache, set_semantic_cache, set_rate_limit and set_budget; loaded back through
# the same class, which also reads every model saved before the settings classes existed).
CONTROL_SETTINGS: dict[str, type[Settings]] = {
    "cache": CacheSettings,
    "semantic_cache": SemanticCacheSettings,
    "rate_limit": RateLimitSettings,
    "budget": BudgetSettings,
}


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> LiteModel:
    """Called by ``mlflow.pyfunc.load_model``."""
    return LiteModel.from_directory(path)


def prompt_variables(prompt: str) -> list[str]:
    """Names of the ``{variable}`` placeholders of a prompt, in order of first appearance."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid_input(f"prompt must be a non-empty string with {{variable}} placeholders, got {prompt!r}")
    names: list[str] = []
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(prompt) if field is not None]
    except ValueError as exc:
        raise invalid_input(f"prompt is not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    for field in fields:
        if not re.fullmatch(r"[A-Za-z_]\w*", field):
            raise invalid_input(f"prompt placeholder {{{field}}} must be a plain name like {{question}}")
        if field not in names:
            names.append(field)
    if not names:
        raise invalid_input("prompt has no {variable} placeholder, so a row could never change the question")
    return names



class LiteModel:
    """The loaded app: a :class:`Client` configured from the saved settings, and its prompt.
    ``predict``/``predict_stream`` serve MLflow; ``query`` is the Python API."""

    def __init__(self, config: dict[str, Any], root: Path | None = None):
        self.config = config
        self.variables: list[str] = list(config.get("variables") or prompt_variables(config["prompt"]))
        self.client = _client(config, root)
        self.served = SERVED_BY_MLFLOW_ENV in os.environ
        self.limits = ServingLimits.from_settings(config.get("serving"), os.environ)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> LiteModel:
        """The model saved in ``path`` (its ``MLmodel`` names the settings file)."""
        path_ = Path(path)
        try:
            conf = _get_flavor_configuration(str(path_), FLAVOR_NAME)
            config_file = conf.get("config", CONFIG_FILE)
        except MlflowException:
            config_file = CONFIG_FILE  # loaded from the data directory directly
        return cls.load(path_ / config_file)

    @classmethod
    def load(cls, config_path: Path) -> LiteModel:
        if not config_path.is_file():
            raise MlflowException(f"The mlflow_lite model is missing its settings file {config_path}")
        try:
            config = yaml.safe_load(config_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:  # the message may quote the file
            message = f"The mlflow_lite settings file {config_path} is corrupted: {exc}"
            raise MlflowException(credentials.scrub(message)) from None
        if not isinstance(config, dict) or not isinstance(config.get("model"), str) or "prompt" not in config:
            raise MlflowException(f"The mlflow_lite settings file {config_path} has no model and prompt")
        return cls(config, config_path.parent)

    # -- MLflow's interface --

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[str] | pd.DataFrame:
        params = dict(params or {})
        details = bool(params.pop("return_details", False))
        rows = self._checked_rows(model_input)
        overrides = {k: v for k, v in params.items() if v is not None}
        calls = [self._call_kwargs(row, i, overrides) for i, row in enumerate(rows)]
        seconds = self.limits.seconds(self.served, os.environ)
        with deadline.running(seconds):
            if len(calls) == 1:
                results: list[Any] = [self._one(calls[0])]
            else:
                results = run_sync(self._answer_rows(calls, seconds))
        if details:
            return pd.DataFrame([_detail(r) for r in results], columns=list(DETAIL_COLUMNS))
        for result in results:
            if isinstance(result, BaseException):
                raise served_error(result) from result
        return [r.text for r in results]

    def predict_stream(self, model_input: Any, params: dict[str, Any] | None = None) -> Iterator[str]:
        params = {k: v for k, v in (params or {}).items() if v is not None and k != "return_details"}
        rows = self._checked_rows(model_input)
        if len(rows) != 1:
            raise invalid_input(f"predict_stream takes one input row, got {len(rows)}")
        kwargs = self._call_kwargs(rows[0], 0, params)
        try:
            with self.client.stream(**kwargs) as stream:
                yield from stream
        except MlflowLiteError as error:
            raise served_error(error) from error

    # -- Python API --

    def query(self, **variables: Any) -> Response:
        """Answer one input: ``bot.query(question="...")``; extra keywords are ``query`` keywords."""
        row = {k: v for k, v in variables.items() if k in self.variables}
        extra = {k: v for k, v in variables.items() if k not in self.variables}
        return self.client.query(**self._call_kwargs(row, 0, extra))

    def warm(self, cache_data: Any) -> int:
        """Put known answers in the semantic cache: a DataFrame (or records) of the prompt's
        variables and an ``answer`` column, or a SemanticCache to copy. Returns the entries added."""
        from mlflow_lite_plugin.cache.semantic import SemanticCache

        cache = self.client.semantic_cache()
        assert cache is not None, "warm() needs the semantic cache (set by _config)"
        if isinstance(cache_data, SemanticCache):
            for entry in cache_data.entries():
                cache.store(entry["scope"], entry["query"], entry["value"])
            return len(cache_data)
        frame = cache_data if isinstance(cache_data, pd.DataFrame) else pd.DataFrame(cache_data)
        if ANSWER_COLUMN not in frame.columns:
            raise invalid_input(f"cache_data needs an {ANSWER_COLUMN!r} column next to {', '.join(self.variables)}")
        for i, row in enumerate(self._rows(frame, ANSWER_COLUMN)):
            answer = row[ANSWER_COLUMN]
            if not isinstance(answer, str) or not answer.strip():
                raise invalid_input(f"cache_data row {i}: {ANSWER_COLUMN!r} must be a non-empty string")
            kwargs = self._call_kwargs(row, i, {})
            self.client.add_to_cache(answer, kwargs.pop("prompt"), **kwargs)
        return len(frame)

    # -- internals --

    def _checked_rows(self, model_input: Any) -> list[dict[str, Any]]:
        """The rows of a request, within the serving limits (before any stage or network call)."""
        frame = self._frame(model_input)
        if self.served:
            self.limits.check_request(frame)
        rows = self._frame_rows(frame)
        for i, row in enumerate(rows):
            self.limits.check_row(i, row)
        return rows

    async def _answer_rows(self, calls: list[dict[str, Any]], seconds: float | None) -> list[Any]:
        """Every row, ``max_concurrency`` at a time; past the deadline, rows still running are
        cancelled (their provider requests closed) and rows not started never start."""

        async def one(index: int) -> Response:
            left = deadline.remaining()
            if left is None:
                return await self.client.aquery(**calls[index])
            try:
                deadline.check(f"row {index}")
                return await asyncio.wait_for(self.client.aquery(**calls[index]), left)
            except (asyncio.TimeoutError, DeadlineExceededError):
                raise DeadlineExceededError(
                    f"row {index} was not answered within the request's deadline of {seconds:g} s"
                ) from None

        concurrency = int(self.config.get("max_concurrency", 8))
        return await gather_bounded(range(len(calls)), one, concurrency, progress=False)  # type: ignore[arg-type]

    def _rows(self, model_input: Any, *extra: str) -> list[dict[str, Any]]:
        """The input's rows, as dicts of the prompt's variables (and ``extra`` columns)."""
        return self._frame_rows(self._frame(model_input), *extra)

    def _frame(self, model_input: Any) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            frame = model_input
        elif isinstance(model_input, str) and len(self.variables) == 1:
            frame = pd.DataFrame({self.variables[0]: [model_input]})
        elif isinstance(model_input, Mapping):
            values = dict(model_input)
            scalar = all(not isinstance(v, (list, tuple, pd.Series)) for v in values.values())
            frame = pd.DataFrame([values]) if scalar else pd.DataFrame(values)
        elif isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
            frame = pd.DataFrame(model_input)
        else:
            raise invalid_input(
                f"input must be a DataFrame (or dict / list of dicts) with columns {self.variables}, "
                f"got {type(model_input).__name__}"
            )
        missing = [v for v in self.variables if v not in frame.columns]
        if missing:
            raise invalid_input(
                f"input is missing column(s) {', '.join(map(repr, missing))} needed by the prompt "
                f"{self.config['prompt']!r}; got columns {list(map(str, frame.columns))}"
            )
        return frame

    def _frame_rows(self, frame: pd.DataFrame, *extra: str) -> list[dict[str, Any]]:
        # Column by column: DataFrame.to_dict costs ~0.2 ms a call, most of a cached answer.
        names = [*self.variables, *(c for c in extra if c in frame.columns)]
        if not names:  # a prompt without variables: one call per row all the same
            return [{} for _ in range(len(frame))]
        columns = [frame[name].tolist() for name in names]
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]

    def _call_kwargs(self, row: Mapping[str, Any], index: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
        values = {}
        for name in self.variables:
            value = row.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
                raise invalid_input(f"row {index}: column {name!r} is empty")
            values[name] = str(value)
        kwargs: dict[str, Any] = {"prompt": self.config["prompt"].format(**values), **overrides}
        if self.config.get("system"):
            kwargs["system"] = self.config["system"]
        return kwargs

    def _one(self, kwargs: dict[str, Any]) -> Response | MlflowLiteError:
        """One row, answered or failed, like an item of ``batch``."""
        try:
            return self.client.query(**kwargs)
        except MlflowLiteError as error:
            return error


def _client(config: Mapping[str, Any], root: Path | None) -> Client:
    defaults: dict[str, Any] = dict(config.get("params") or {})
    for key in ("fallbacks", "num_retries", "validate", "on_fail", "max_attempts"):
        if config.get(key) is not None:
            defaults[key] = config[key]
    try:
        client = Client(config["model"], aliases=config.get("aliases"), **defaults)
        # Checks parameters, fallbacks and validation rules as a call would, at load time.
        build_call_request(model="check", prompt="check", messages=None, system=None, kwargs={}, defaults=defaults)
        for key, kind in CONTROL_SETTINGS.items():
            if config.get(key) is not None:
                _install(client, kind.from_dict(config[key], argument=key), config, root)
        if SERVED_BY_MLFLOW_ENV in os.environ and "MLFLOW_LITE_TRACE_EXPORT" not in os.environ:
            # A scoring server: a child process writes the traces, so they don't take the CPU
            # (and GIL) of the requests (benchmarks/serve.py).
            client.set_tracing(export="process")
    except MlflowLiteError as exc:
        raise invalid_input(credentials.scrub(f"bad mlflow_lite setting: {exc}", _known(config))) from None
    return client


def _install(client: Client, settings: Settings, config: Mapping[str, Any], root: Path | None) -> None:
    """Install one saved control; what lives outside the settings comes from the serving host (a
    Redis cache's URL) or the model's directory (the saved semantic cache)."""
    if isinstance(settings, CacheSettings) and settings.backend == "redis" and not settings.url:
        settings = dataclasses.replace(settings, url=os.environ.get("MLFLOW_LITE_REDIS_URL"))
    directory = config.get(SEMANTIC_CACHE_DIR_KEY)
    if isinstance(settings, SemanticCacheSettings) and directory and root is not None:
        from mlflow_lite_plugin.cache.semantic import SemanticCache, SemanticCacheError

        try:  # the settings given override those the cache was saved with
            cache = SemanticCache.load(root / directory, **settings.cache_options())
        except SemanticCacheError as exc:
            raise MlflowException(f"The mlflow_lite model's semantic cache could not be loaded: {exc}") from None
        client.install(settings, cache=cache)
    else:
        client.install(settings)


def _detail(result: Response | BaseException) -> dict[str, Any]:
    if isinstance(result, BaseException):
        response = getattr(result, "response", None)  # a ValidationError still has its answer
        row = _detail(response) if isinstance(response, Response) else dict.fromkeys(DETAIL_COLUMNS)
        row["error"] = credentials.scrub(f"{type(result).__name__}: {result}", credentials.secret_env_values())
        row["trace_id"] = _trace_id(result) or row.get("trace_id")
        return row
    validation = result.validation
    return {
        "text": result.text,
        "model": result.model,
        "cost": math.nan if result.cost is None else result.cost,
        "latency": result.latency,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.total_tokens,
        "cached": result.cached or "",
        "validation_passed": None if validation is None else validation.passed,
        "validation_errors": json.dumps(validation.errors if validation is not None else []),
        "trace_id": _trace_id(result),
        "error": None,
    }


def _trace_id(result: Response | BaseException) -> str | None:
    """The row's trace id; a served request does not wait for its trace to be written."""
    ref = getattr(result, "_trace", None)
    return ref.known_id() if ref is not None else None


def _known(config: Mapping[str, Any]) -> list[str]:
    """Secret values a served model's errors must not show: its settings' own and the environment's."""
    return [*credentials.secret_values(config), *credentials.secret_env_values()]


def served_error(error: BaseException) -> MlflowException:
    """Our error as an MlflowException whose code MLflow's scoring server turns into the right
    HTTP status: a provider outage is a 503, a rate limit or spent budget a 429, not a 400."""
    codes: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (errors.ArgumentError, "INVALID_PARAMETER_VALUE"),  # 400
        ((errors.ProviderTimeoutError, DeadlineExceededError), "DEADLINE_EXCEEDED"),  # 504
        ((errors.ProviderRateLimitError, RateLimitExceededError), "REQUEST_LIMIT_EXCEEDED"),  # 429
        (BudgetExceededError, "RESOURCE_EXHAUSTED"),  # 429
        ((errors.ProviderUnavailableError, errors.ProviderConnectionError), "TEMPORARILY_UNAVAILABLE"),  # 503
    ]
    code = next((code for kind, code in codes if isinstance(error, kind)), "INTERNAL_ERROR")  # 500
    known = credentials.secret_env_values()  # a provider's message may quote the key or the URL
    if isinstance(error, MlflowException):
        return MlflowException(credentials.scrub(error.message, known), error_code=_code(error.error_code))
    return MlflowException(credentials.scrub(f"{type(error).__name__}: {error}", known), error_code=_code(code))


def _code(name: str) -> int:
    from mlflow.protos import databricks_pb2

    return int(getattr(databricks_pb2, name))


def invalid_input(message: str) -> MlflowException:
    """Bad input or settings: MLflow's scoring server answers these with 400, not 500."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


