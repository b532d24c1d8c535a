"""``mlflow-lite demo``: the one-liners on the offline model, no API key, then where to look."""

from __future__ import annotations

import click


def run_demo(model: str = "lite/echo") -> None:
    import mlflow_lite_plugin as ml

    ml.set_experiment("mlflow-lite-demo")
    say = click.echo

    say(click.style("1. ml.query", bold=True))
    r = ml.query(model=model, prompt="How do I reset my password?")
    say(f"   text:    {r.text}")
    say(f"   model:   {r.model}   usage: {r.usage}")
    say(f"   cost:    ${r.cost:.6f}   latency: {r.latency * 1000:.1f} ms   finish: {r.finish_reason}")

    say(click.style("2. ml.stream", bold=True))
    say("   ", nl=False)
    chunks = ml.stream(model=model, prompt="Streaming works chunk by chunk")
    for chunk in chunks:
        say(chunk, nl=False)
    assert chunks.response is not None
    say(f"\n   tokens: {chunks.response.total_tokens}, first token after {chunks.response.time_to_first_token * 1000:.1f} ms")

    say(click.style("3. ml.count_tokens + ml.estimate_cost (no call)", bold=True))
    prompt = "Summarise our refund policy for a customer in two sentences."
    for priced in ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"):
        tokens = ml.count_tokens(prompt, model=priced)
        usd = ml.estimate_cost(tokens, model=priced)
        say(f"   {priced:<18} {tokens} tokens -> ${usd:.8f} as input")

    say(click.style("4. ml.batch with a progress bar", bold=True))
    questions = [f"Question number {i}" for i in range(20)]
    results = ml.batch(questions, model=model, max_concurrency=8, progress=True)
    ok = [x for x in results if isinstance(x, ml.Response)]
    say(f"   {len(ok)}/{len(results)} answered, in input order: {ok[0].text!r} ... {ok[-1].text!r}")

    say(click.style("5. traces", bold=True))
    ml.flush_traces()
    import mlflow

    say(f"   every call above is an MLflow trace, e.g. {r.trace_id}")
    say(f"   tracking URI: {mlflow.get_tracking_uri()}  experiment: mlflow-lite-demo")
    say(f"   open them with:  mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
