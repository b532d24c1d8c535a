"""The environment variables the package sets, once, at its import; a value the user set wins.

Imported first by the package's ``__init__`` (so before anything can import LiteLLM: MLflow's
``mlflow.litellm.autolog()``, or the caller's own ``import litellm``) and by
:mod:`.model_names`, which imports LiteLLM itself.
"""

from __future__ import annotations

import os

# LiteLLM fetches its price map over the network when it is imported unless told otherwise: read
# the copy it ships with, so imports work offline and never wait on the network.
DEFAULTS = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}

for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)
