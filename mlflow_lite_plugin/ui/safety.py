"""Nothing secret reaches the browser.

Provider settings (API keys, ``api_base``) live in the server's client and environment. Two
guards keep them there: trace data shown in the UI has credential and endpoint fields redacted
by name (traces of other clients may hold other endpoints), and every response body is scrubbed
of the server's own secret values (a provider error message may quote a key or an endpoint).
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

from ..providers import is_secret

REDACTED = "[redacted]"

# Where a provider lives is a server-side setting too: a URL may carry a password or name an
# internal host.
_ENDPOINT_KEYS = frozenset({"api_base", "base_url", "api_host"})

# Shorter values ("1", "true") would scrub ordinary text; real keys and URLs are longer.
_MIN_SECRET_LENGTH = 8


def hidden(key: str) -> bool:
    """True for a field name whose value must not be shown: a credential or a provider endpoint."""
    return is_secret(key) or key.lower() in _ENDPOINT_KEYS


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
    """Replaces known secret values (the client's keys and endpoints, credential env vars) in text."""

    def __init__(self, values: Iterable[str]):
        # Longest first, so a secret that contains another is replaced whole.
        self._values = sorted({v for v in values if len(v) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, REDACTED)
        return text


def secret_values(defaults: Mapping[str, Any]) -> list[str]:
    """The server's secret values: hidden call defaults of its client, and credential env vars
    (``OPENAI_API_KEY``, ``*_TOKEN``...), which LiteLLM reads by itself."""
    values = [str(v) for k, v in defaults.items() if hidden(k) and isinstance(v, str)]
    values += [v for k, v in os.environ.items() if is_secret(k)]
    return values
