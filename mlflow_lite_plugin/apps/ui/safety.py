"""Nothing secret reaches the browser.

Provider settings (API keys, ``api_base``) live in the server's client and environment. Two
guards keep them there: trace data shown in the UI has credential and endpoint fields redacted
by name (traces of other clients may hold other endpoints), and every response body (errors
included) goes through the package's one scrubber (:mod:`..credentials`), which also masks the
server's own secret values (a provider error message may quote a key or an endpoint; a tracking
store's error quotes its URI, password included).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow_lite_plugin.security import credentials
from mlflow_lite_plugin.security.credentials import REDACTED, is_secret_name

# Where a provider lives is a server-side setting too: a URL may carry a password or name an
# internal host.
_ENDPOINT_KEYS = frozenset({"api_base", "base_url", "api_host"})


def hidden(key: str) -> bool:
    """True for a field name whose value must not be shown: a credential or a provider endpoint."""
    return is_secret_name(key) or key.lower() in _ENDPOINT_KEYS


def redact(value: Any) -> Any:
    """``value`` made JSON-safe, with hidden fields of nested mappings replaced by ``[redacted]``.

    Non-finite floats become None (JSON has no NaN); other unknown objects become their ``str``.
    """
    if isinstance(value, Mapping):
        return {str(k): REDACTED if hidden(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


class Scrubber:
    """Scrubs text of anything that looks like a credential and of known secret values (the
    client's keys and endpoints, credential env vars), whatever those look like."""

    def __init__(self, values: Iterable[str]):
        self._values = tuple(values)

    def __call__(self, text: str) -> str:
        return credentials.scrub(text, self._values)


def secret_values(defaults: Mapping[str, Any]) -> list[str]:
    """The server's secret values: hidden call defaults of its client, and credential env vars
    (``OPENAI_API_KEY``, ``*_TOKEN``...), which LiteLLM reads by itself."""
    values = [str(v) for k, v in defaults.items() if k.lower() in _ENDPOINT_KEYS and isinstance(v, str)]
    return [*values, *credentials.secret_values(defaults), *credentials.secret_env_values()]
