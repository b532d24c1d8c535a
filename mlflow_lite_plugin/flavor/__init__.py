"""The ``mlflow_lite`` MLflow model flavor: a configured LLM app saved, logged, loaded and served.

Laid out like MLflow's own flavors (``mlflow.openai``): :mod:`.constants` (names and files),
:mod:`.model` (save, log, load; the saved settings), :mod:`.pyfunc` (the loaded model MLflow serves).
This module is the flavor's face and its ``loader_module``, so models saved by any release load
through ``mlflow.pyfunc.load_model``.
"""

from mlflow_lite_plugin.flavor.constants import FLAVOR_NAME
from mlflow_lite_plugin.flavor.model import (
    get_default_conda_env,
    get_default_pip_requirements,
    load_model,
    log_model,
    save_model,
)
from mlflow_lite_plugin.flavor.pyfunc import _load_pyfunc  # noqa: F401  (MLflow calls loader_module._load_pyfunc)

__all__ = ["FLAVOR_NAME", "get_default_conda_env", "get_default_pip_requirements", "load_model", "log_model",
           "save_model"]
