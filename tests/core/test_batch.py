"""ml.batch / ml.async_batch: input order, per-item errors, bounded concurrency, notebooks."""

from __future__ import annotations

import asyncio

import pytest

import mlflow_lite_plugin as ml


async def test_async_batch_order_mixed_items_and_errors(default_client, stub, openai_kw):
    stub.inject(status=400, model="gpt-4o-mini")  # only the dict item asking for gpt-4o-mini fails
    items = [
        {"model": "gpt-4o", "prompt": "a"},
        "b",
        {"model": "gpt-4o-mini", "prompt": "c"},
        {"prompt": ""},  # a bad item: its error comes back in its place
        "e",
    ]
    results = await ml.async_batch(items, model="gpt-4o", max_concurrency=16, **openai_kw)
    assert len(results) == 5
    assert [r.text for r in (results[0], results[1], results[4])] == [
        "Stub answer from gpt-4o: a",
        "Stub answer from gpt-4o: b",
        "Stub answer from gpt-4o: e",
    ]
    assert isinstance(results[2], ml.ProviderBadRequestError) and results[2].trace_id
    assert isinstance(results[3], ml.ArgumentError) and results[3].argument == "prompt"


def test_batch_respects_max_concurrency(client, stub, openai_kw):
    stub.latency = 0.15
    results = client.batch([f"q{i}" for i in range(8)], model="gpt-4o", max_concurrency=2, **openai_kw)
    assert [r.text.rsplit(": ", 1)[1] for r in results] == [f"q{i}" for i in range(8)]
    assert stub.max_in_flight == 2


def test_batch_runs_concurrently(client, stub, openai_kw):
    stub.latency = 0.5  # long enough that concurrent requests overlap at the server
    client.batch([f"q{i}" for i in range(8)], model="gpt-4o", max_concurrency=8, **openai_kw)
    assert stub.max_in_flight >= 4


async def test_sync_batch_inside_running_loop(client, stub, openai_kw):
    """Jupyter runs cells inside an event loop: the sync twin must still work there."""
    asyncio.get_running_loop()  # we are inside a loop, like a notebook cell
    results = client.batch(["in a loop"], model="gpt-4o", **openai_kw)
    assert results[0].text.endswith("in a loop")


def test_batch_progress_bar(client, stub, openai_kw, capsys):
    client.batch(["p1", "p2", "p3"], model="gpt-4o", progress=True, **openai_kw)
    err = capsys.readouterr().err
    assert "mlflow-lite batch" in err and "3/3" in err


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batch_rejects_bad_concurrency(client, bad):
    with pytest.raises(ml.ArgumentError, match="max_concurrency"):
        client.batch(["x"], model="lite/echo", max_concurrency=bad)


def test_batch_rejects_a_bare_string(client):
    with pytest.raises(ml.ArgumentError, match="items"):
        client.batch("not a list", model="lite/echo")


def test_batch_offline_one_liner(default_client):
    results = ml.batch(["one", "two"], model="lite/echo")
    assert [r.text for r in results] == ["Echo: one", "Echo: two"]
