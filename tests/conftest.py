"""Shared fixtures: a private MLflow store, the loopback LLM stub, and fresh clients."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
from mlflow_lite_plugin.testing import StubLLMServer, free_port  # noqa: E402

KEY = "sk-stub-not-a-real-key"


@pytest.fixture(scope="session")
def store_dir() -> Path:
    return _STORE


@pytest.fixture(scope="session")
def _stub_server():
    with StubLLMServer() as server:
        yield server


@pytest.fixture
def stub(_stub_server: StubLLMServer) -> StubLLMServer:
    """The loopback LLM server, with no faults queued, no latency, the default reply and an
    empty request log."""
    from mlflow_lite_plugin.testing.stub_server import default_reply

    _stub_server.reset()
    _stub_server.latency = 0.0
    _stub_server.chunk_delay = 0.0
    _stub_server.reply = default_reply
    yield _stub_server
    _stub_server.reset()
    _stub_server.reply = default_reply


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
def default_client(monkeypatch: pytest.MonkeyPatch) -> ml.Client:
    """A fresh client installed behind the ml.* one-liners for one test."""
    import mlflow_lite_plugin.client as client_module

    c = ml.Client()
    monkeypatch.setattr(client_module, "_default", c)
    yield c
    c.flush_traces()


@contextmanager
def running_mlflow_server(workdir: Path, env: dict[str, str], *options: str) -> Iterator[str]:
    """``mlflow server`` (``options`` such as ``--app-name basic-auth``) on a free port with its
    own sqlite store and artifacts under ``workdir``; yields its URL, stops its process group."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", *options,
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", str(workdir / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # The job runner (a huey consumer) serves prompt optimisation, which no test uses; without it
    # the server starts in half the time.
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not answer within 120 s:\n{log.read_text()[-4000:]}")
                time.sleep(0.25)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the server runs uvicorn in a child process
            try:
                os.killpg(proc.pid, sig)
                proc.wait(5)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def process_alive(pid: int) -> bool:
    """Linux: whether ``pid`` runs (a zombie has exited; it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows the "(command)" field


def assert_process_exits(pid: int, message: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(pid), message


def get_trace(trace_id: str):
    """Read a trace back from the store (after MLflow's async export)."""
    import mlflow

    mlflow.flush_trace_async_logging()
    trace = mlflow.get_trace(trace_id)
    assert trace is not None, f"trace {trace_id} was not written"
    return trace


def _start_redis(workdir) -> tuple[str, subprocess.Popen]:
    """A real redis-server on a free loopback port (installed by .ci/run). Missing: fail, not skip."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run .ci/run (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0", proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url, proc = _start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)
