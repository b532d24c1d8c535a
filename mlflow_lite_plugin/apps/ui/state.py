"""What every endpoint of the UI shares: the client, the experiment, and safe JSON responses."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from fastapi.responses import Response

from mlflow_lite_plugin.apps.ui.safety import Scrubber, redact, secret_values
from mlflow_lite_plugin.tracing.store import experiment_named

if TYPE_CHECKING:
    from mlflow_lite_plugin.client import Client

# Suggestions for the playground's model field (free text: any LiteLLM name works). lite/echo is
# first: it needs no API key, so the UI works out of the box.
SUGGESTED_MODELS = ("lite/echo", "gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "claude-haiku-4-5", "ollama/llama3")


@dataclass
class UIState:
    """The server side of the UI: one client making every call, and the experiment its traces
    go to (and that the trace explorer and dashboard read)."""

    client: Client
    experiment: str
    default_model: str
    scrub: Scrubber = field(init=False)
    _experiment_id: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.client.set_experiment(self.experiment)
        self.scrub = Scrubber(secret_values(self.client.defaults))

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys((self.default_model, *SUGGESTED_MODELS)))

    def experiment_id(self) -> str:
        """The experiment's id, created if missing (as the client's tracer would)."""
        with self._lock:
            if self._experiment_id is None:
                self._experiment_id = experiment_named(self.experiment)
            return self._experiment_id

    def dumps(self, payload: Any) -> str:
        """``payload`` as JSON text, hidden fields redacted and secret values scrubbed."""
        return self.scrub(json.dumps(redact(payload), ensure_ascii=False))

    def respond(self, payload: Any) -> Response:
        return Response(self.dumps(payload), media_type="application/json")

    def error(self, status: int, exc: BaseException | str) -> HTTPException:
        """An HTTP error whose message is safe to show."""
        return HTTPException(status_code=status, detail=self.scrub(str(exc)))


def ui_state(request: Request) -> UIState:
    """FastAPI dependency: the app's :class:`UIState`."""
    return request.app.state.ui
