"""The UI server: a FastAPI app (JSON under ``/api``, the page under ``/static``) run by uvicorn.

A standalone app rather than an ``mlflow.app`` plugin: it makes calls (and spends money) through
one server-side ``ml.Client``, whose provider settings and budget are this process's, and it
works against any tracking store, with or without an MLflow server running.

The UI has no login, so it listens on 127.0.0.1 by default and only answers requests addressed to
the host it serves (guarding against DNS rebinding). Cross-site form posts cannot start calls:
every POST takes a JSON body, and FastAPI ignores bodies sent as anything but
``application/json``, which a foreign page cannot send here without a CORS preflight (never
granted).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from mlflow_lite_plugin.apps.ui import dashboard, playground, traces
from mlflow_lite_plugin.apps.ui.state import UIState
from mlflow_lite_plugin.client import Client, get_default_client
from mlflow_lite_plugin.core.model_names import litellm_module

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(
    client: Client | None = None,
    *,
    experiment: str = "Default",
    default_model: str = "lite/echo",
    allowed_hosts: Sequence[str] = LOCAL_HOSTS,
) -> FastAPI:
    """The UI app. ``client`` (default: the default client) makes every call and is pointed at
    ``experiment``, whose traces the explorer and dashboard read."""
    if client is None:
        client = get_default_client()
    state = UIState(client=client, experiment=experiment, default_model=default_model)
    app = FastAPI(
        title="mlflow-lite",
        lifespan=_warm_up,
        # The API is the page's, not a public one; the docs pages would load assets from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ui = state
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.middleware("http")
    async def scrubbed_errors(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """An unexpected error (a tracking store that cannot be reached...) as a 500 whose message
        is scrubbed: Starlette's own handler would re-raise it for the server to log unscrubbed."""
        try:
            return await call_next(request)
        except Exception as exc:
            logger.exception("UI request %s failed", request.url.path)  # scrubbed by the package's log filter
            return JSONResponse({"detail": state.scrub(f"{type(exc).__name__}: {exc}")}, status_code=500)

    for module in (playground, traces, dashboard):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


@asynccontextmanager
async def _warm_up(app: FastAPI) -> AsyncIterator[None]:
    """Import LiteLLM and resolve the experiment in the background at start-up, so the first
    run does not wait seconds for them."""
    state: UIState = app.state.ui
    threading.Thread(target=_prepare, args=(state,), name="mlflow-lite-ui-warm-up", daemon=True).start()
    yield


def _prepare(state: UIState) -> None:
    try:
        litellm_module()
        state.experiment_id()
    except Exception as exc:  # the first request will report it
        logger.warning("UI warm-up failed: %s", exc)


def serve(
    host: str = "127.0.0.1",
    port: int = 5055,
    *,
    experiment: str = "Default",
    model: str = "lite/echo",
    api_base: str | None = None,
    cache: bool = True,
    daily_budget: float | None = None,
) -> None:
    """Run the UI until interrupted (``mlflow-lite ui``). API keys come from the environment
    (``OPENAI_API_KEY``...), as for every call; ``api_base`` applies to every call."""
    import uvicorn

    client = Client(api_base=api_base) if api_base else Client()
    if cache:
        client.set_cache()
    if daily_budget is not None:
        client.set_budget(daily_limit=daily_budget)
    hosts = LOCAL_HOSTS if host in LOCAL_HOSTS else ("*",)
    if hosts == ("*",):
        logger.warning("The UI has no login: anyone who can reach %s:%d can run prompts on your keys", host, port)
    app = create_app(client, experiment=experiment, default_model=model, allowed_hosts=hosts)
    uvicorn.run(app, host=host, port=port, log_level="info")
