"""Shared fixtures: a private MLflow store, the loopback LLM stub, and fresh clients."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One private sqlite store for the whole run, set before anything imports mlflow; creating its
# tables takes seconds, so it is shared and tests tell their traces apart by id or experiment.
_STORE = Path(tempfile.mkdtemp(prefix="mlflow-lite-tests-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STORE / 'mlflow.db'}"
os.environ.setdefault("MLFLOW_LITE_TRACE_FLUSH_TIMEOUT", "60")
# Our trace writer is already a background thread; MLflow's second async queue only makes each
# read-back wait for its 1 s poll. Subprocess tests set it back to MLflow's default (true).
os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
for _key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_BASE", "OPENAI_API_BASE"):
    os.environ.pop(_key, None)  # never reach a real provider from the tests

import mlflow_lite_plugin as ml  # noqa: E402
from mlflow_lite_plugin.testing import StubLLMServer  # noqa: E402

from tests.helpers import KEY, start_redis  # noqa: E402


@pytest.fixture(scope="session")
def store_dir() -> Path:
    return _STORE


@pytest.fixture(scope="session")
def stub_server():
    """The session's loopback LLM server as it is, for module- and session-scoped fixtures; tests
    take ``stub``, which resets it around each test."""
    with StubLLMServer() as server:
        yield server


@pytest.fixture
def stub(stub_server: StubLLMServer) -> StubLLMServer:
    """The loopback LLM server, with no faults queued, no latency, the default reply and an
    empty request log."""
    from mlflow_lite_plugin.testing.stub_server import default_reply

    stub_server.reset()
    stub_server.latency = 0.0
    stub_server.chunk_delay = 0.0
    stub_server.reply = default_reply
    yield stub_server
    stub_server.reset()
    stub_server.reply = default_reply


@pytest.fixture
def openai_kw(stub: StubLLMServer) -> dict:
    return {"api_base": stub.openai_base, "api_key": KEY}


@pytest.fixture
def anthropic_kw(stub: StubLLMServer) -> dict:
    return {"api_base": stub.url, "api_key": KEY}


@pytest.fixture
def client() -> ml.Client:
    """A fresh client, its traces flushed after the test."""
    c = ml.Client()
    yield c
    c.flush_traces()


@pytest.fixture
def default_client() -> ml.Client:
    """A fresh client installed behind the ml.* one-liners for one test (the previous one is put
    back after)."""
    previous = ml.get_default_client()
    c = ml.Client()
    ml.set_default_client(c)
    yield c
    c.flush_traces()
    ml.set_default_client(previous)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url, proc = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)
