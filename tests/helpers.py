"""Helpers shared by the tests (fixtures stay in ``conftest.py``): the stub's API key, real
servers started on free loopback ports, and trace read-back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlflow_lite_plugin.testing import free_port

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
KEY = "sk-stub-not-a-real-key"


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


def start_redis(workdir) -> tuple[str, subprocess.Popen]:
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
