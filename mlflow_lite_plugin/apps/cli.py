"""The ``mlflow-lite`` command: ``demo``, ``query``, ``cost`` and ``ui``."""

from __future__ import annotations

import sys
from typing import Any

import click

from mlflow_lite_plugin.client import get_default_client
from mlflow_lite_plugin.core import errors


def _client(model: str | None = None) -> Any:
    return get_default_client()


@click.group()
@click.version_option(package_name="mlflow-lite-plugin")
def main() -> None:
    """Production controls for LLM calls, traced to MLflow."""


@main.command()
@click.option("--model", "-m", default="lite/echo", show_default=True, help="Model for the demo calls.")
def demo(model: str) -> None:
    """Run the one-liners on the offline model (no API key) and show where the traces are."""
    from mlflow_lite_plugin.apps.demo import run_demo

    run_demo(model)


@main.command()
@click.argument("prompt")
@click.option("--model", "-m", required=True, help="Any LiteLLM model, e.g. gpt-4o, ollama/llama3.")
@click.option("--system", "-s", default=None, help="System prompt.")
@click.option("--temperature", "-t", type=float, default=None)
@click.option("--max-tokens", type=int, default=None)
@click.option("--api-base", default=None, help="Endpoint of a local or OpenAI-compatible server.")
@click.option("--timeout", type=float, default=None, help="Seconds before the call times out.")
def query(
    prompt: str,
    model: str,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    api_base: str | None,
    timeout: float | None,
) -> None:
    """Stream the answer to PROMPT to stdout; tokens, cost and trace id go to stderr."""
    kwargs = {
        k: v
        for k, v in {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "api_base": api_base,
            "timeout": timeout,
        }.items()
        if v is not None
    }
    client = _client()
    try:
        with client.stream(prompt, model=model, system=system, **kwargs) as chunks:
            for chunk in chunks:
                click.echo(chunk, nl=False)
        click.echo()
    except errors.MlflowLiteError as exc:
        click.echo(f"error: {exc}", err=True)
        trace_id = getattr(exc, "trace_id", None)
        if trace_id:
            click.echo(f"trace: {trace_id}", err=True)
        sys.exit(1)
    response = chunks.response
    assert response is not None
    cost = "unknown" if response.cost is None else f"${response.cost:.6f}"
    click.echo(
        f"model: {response.model}  tokens: {response.prompt_tokens} in / {response.completion_tokens} out  "
        f"cost: {cost}  latency: {response.latency:.2f}s  trace: {response.trace_id}",
        err=True,
    )


@main.command()
@click.argument("prompt")
@click.option("--model", "-m", required=True, help="Model whose tokenizer and price to use.")
def cost(prompt: str, model: str) -> None:
    """Count PROMPT's tokens and estimate its input cost; makes no call."""
    client = _client()
    try:
        tokens = client.count_tokens(prompt, model=model)
        usd = client.estimate_cost(tokens, model=model)
    except errors.MlflowLiteError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    price = "unknown price" if usd is None else f"${usd:.8f}"
    click.echo(f"{tokens} tokens, {price} as input to {client.models.resolve(model).name}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on; the UI has no login.")
@click.option("--port", default=5055, show_default=True, type=int)
@click.option(
    "--experiment", envvar="MLFLOW_EXPERIMENT_NAME", default="Default", show_default=True,
    help="MLflow experiment the playground traces to and the explorer and dashboard read.",
)
@click.option("--model", "-m", default="lite/echo", show_default=True, help="Default model of the playground.")
@click.option("--api-base", default=None, help="Endpoint of a local or OpenAI-compatible server, for every call.")
@click.option("--cache/--no-cache", default=True, show_default=True, help="Exact in-memory cache for the playground.")
@click.option("--daily-budget", type=float, default=None, help="Daily spend limit in USD (set_budget).")
def ui(**options: Any) -> None:
    """Serve the web UI: prompt playground, trace explorer and cost dashboard."""
    from mlflow_lite_plugin.apps.ui.app import serve  # FastAPI and uvicorn load only for this command

    serve(**options)


if __name__ == "__main__":
    main()
