"""What makes two calls "the same" for a cache.

The key covers the provider-qualified model, the full message list (system prompt included), every
parameter that can change the output (temperature, max_tokens, tools, response_format, seed,
stop, api_base, ...) and the namespace. Transport settings that cannot change the answer
(api_key, timeouts, retries, headers, metadata) are left out, so rotating a key keeps the cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mlflow_lite_plugin.core.pipeline import Call

# Parameters that never change what the model says.
TRANSPORT_PARAMS = frozenset(
    {
        "api_key",
        "timeout",
        "request_timeout",
        "stream_timeout",
        "max_retries",
        "num_retries",
        "metadata",
        "extra_headers",
        "headers",
        "stream",
        "stream_options",
        "no-log",
        "user",
        "litellm_call_id",
        "mock_timeout",
    }
)


def output_params(call: Call) -> dict[str, Any]:
    return {k: v for k, v in sorted(call.request.params.items()) if k not in TRANSPORT_PARAMS}


def scope_key(call: Call) -> str:
    """Everything but the last user message: a semantic hit must match all of it exactly."""
    messages = call.request.messages
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
    context = messages[:last_user] + messages[last_user + 1 :]
    return _digest(
        {
            "model": call.models[0].name,
            "context": context,
            "params": output_params(call),
            "namespace": call.request.namespace,
        }
    )


def exact_key(call: Call) -> str:
    return _digest(
        {
            "model": call.models[0].name,
            "messages": call.request.messages,
            "params": output_params(call),
            "namespace": call.request.namespace,
        }
    )


def _digest(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()
