"""ml.stream: str chunks over SSE (OpenAI, Anthropic) and NDJSON (Ollama), usage, cost, early stop."""

from __future__ import annotations

import gc
import uuid

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.testing.stub_server import count_words

from tests.helpers import get_trace


def test_stream_one_liner_openai(default_client, stub, openai_kw):
    stream = ml.stream(model="gpt-4o", prompt="Tell me about streams", **openai_kw)
    chunks = list(stream)
    assert len(chunks) > 3 and all(isinstance(c, str) for c in chunks)
    r = stream.response
    assert r is not None and "".join(chunks) == r.text == "Stub answer from gpt-4o: Tell me about streams"
    # usage as the provider sent it in its final SSE chunk (stream_options.include_usage)
    assert r.usage == {"prompt_tokens": 4, "completion_tokens": count_words(r.text), "total_tokens": 4 + 8}
    assert stub.requests[-1].body["stream"] is True
    assert r.cost is not None and r.cost > 0
    assert r.finish_reason == "stop"
    assert 0 < r.time_to_first_token <= r.latency


def test_stream_anthropic_alias(client, stub, anthropic_kw):
    stream = client.stream(model="claude-3-5-sonnet", prompt="stream please", **anthropic_kw)
    text = "".join(stream)
    assert text == "Stub answer from claude-sonnet-4-5: stream please"
    assert stream.response.usage["prompt_tokens"] == 2
    assert stream.response.usage["completion_tokens"] == count_words(text)
    assert stream.response.model == "anthropic/claude-sonnet-4-5"


def test_stream_ollama_ndjson(client, stub):
    stream = client.stream(model="ollama_chat/llama3", prompt="local stream", api_base=stub.url)
    text = "".join(stream)
    assert text == "Stub answer from llama3: local stream"
    assert stream.response.usage["completion_tokens"] == count_words(text)
    assert stream.response.cost == 0.0


def test_stream_traced_with_time_to_first_token(client, stub, openai_kw):
    stub.chunk_delay = 0.02
    stream = client.stream(model="gpt-4o", prompt="trace my stream", **openai_kw)
    text = "".join(stream)
    trace = get_trace(stream.response.trace_id)
    root = trace.data.spans[0]
    assert root.name == "mlflow_lite.stream"
    assert root.attributes["mlflow_lite.time_to_first_token_s"] > 0
    assert root.attributes["mlflow_lite.total_tokens"] == stream.response.total_tokens
    assert root.outputs["choices"][0]["message"]["content"] == text
    attempt = trace.data.spans[1]
    assert [e.name for e in attempt.events] == ["first_token"]


def test_early_stop_still_traces_partial_answer(client, stub, openai_kw):
    stub.chunk_delay = 0.01
    with client.stream(model="gpt-4o", prompt="a long answer I will not finish", **openai_kw) as stream:
        first = [next(stream), next(stream)]
    r = stream.response
    assert r is not None and r.finish_reason == "cancelled"
    assert r.text == "".join(first)
    assert r.usage["completion_tokens"] > 0 and r.usage["prompt_tokens"] > 0
    assert r.cost is not None and r.cost > 0  # tokens so far are still paid for
    root = get_trace(r.trace_id).data.spans[0]
    assert root.attributes["mlflow_lite.stopped_early"] is True
    assert root.outputs["choices"][0]["message"]["content"] == r.text


def test_break_out_of_for_loop_traces_partial(client, stub, openai_kw):
    """``for chunk in ml.stream(...): break`` drops the stream; its finaliser writes the trace."""
    import mlflow

    marker = uuid.uuid4().hex
    for chunk in client.stream(model="gpt-4o", prompt="break early please", tags={"test_marker": marker}, **openai_kw):
        first = chunk
        break
    gc.collect()
    client.flush_traces()
    mlflow.flush_trace_async_logging()
    traces = mlflow.search_traces(filter_string=f"tags.test_marker = '{marker}'", return_type="list")
    assert len(traces) == 1
    root = traces[0].data.spans[0]
    assert root.attributes["mlflow_lite.stopped_early"] is True
    assert root.outputs["choices"][0]["message"]["content"] == first


def test_stream_retries_before_first_chunk(client, stub, openai_kw):
    stub.inject(status=503)
    stream = client.stream(model="gpt-4o", prompt="retry then stream", num_retries=1, **openai_kw)
    assert "".join(stream).endswith("retry then stream")
    assert len(stub.requests_to("/chat/completions")) == 2


def test_stream_broken_mid_way_raises_provider_error(client, stub, openai_kw):
    stub.inject(break_stream_after=3)
    stream = client.stream(model="gpt-4o", prompt="this stream will break", **openai_kw)
    with pytest.raises(ml.ProviderError) as info:
        list(stream)
    assert info.value.trace_id is not None


def test_bad_stream_arguments_raise_at_call_time(client, stub):
    with pytest.raises(ml.ArgumentError, match="prompt"):
        client.stream(model="gpt-4o")
    assert stub.requests == []
