"""Traces are never lost: not on a fresh store that several processes open at once, not when a
write fails for a moment. These drive the real exporter child (``python -m
mlflow_lite_plugin.tracing.export``) and a real ``mlflow models serve``, each on its own fresh sqlite
store, and count what reached the store."""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import requests

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.testing import free_port
from mlflow_lite_plugin.tracing.batch import mlflow_trace_id


def _record(uri: str, marker: str, text: str) -> dict:
    """One trace as the caller's process sends it to the exporter (``tracing.batch.trace_record``)."""
    now = time.time_ns()
    return {
        "key": secrets.token_hex(16), "tracking_uri": uri, "experiment_id": "0",
        "tags": {"test_marker": marker}, "feedback": [], "run_id": None,
        "spans": [{"span_id": secrets.token_hex(8), "parent_id": None, "name": "mlflow_lite.query",
                   "type": "CHAT_MODEL", "start_ns": now - 1_000_000, "end_ns": now, "inputs": {"prompt": text},
                   "outputs": {"text": text}, "attributes": {}, "events": [], "error": None}],
    }


class _Exporter:
    """An exporter child fed by hand; its acknowledgements and its log lines are collected."""

    def __init__(self, **env_vars: str) -> None:
        env = dict(os.environ, **env_vars)
        env.pop("MLFLOW_TRACKING_URI", None)  # each record names its store
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow_lite_plugin.tracing.export"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.acks: queue.Queue[dict] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, lambda line: self.acks.put(json.loads(line))),
                         daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.log.append), daemon=True).start()

    @staticmethod
    def _read(stream, handle) -> None:
        for line in stream:
            handle(line.decode(errors="replace"))

    def send(self, records: list[dict]) -> None:
        self.proc.stdin.write("".join(json.dumps(r) + "\n" for r in records).encode())
        self.proc.stdin.flush()

    def wait_acks(self, n: int, timeout: float = 180) -> dict[str, str | None]:
        """key -> trace id (None: given up) of the next ``n`` acknowledgements."""
        acks, deadline = {}, time.monotonic() + timeout
        while len(acks) < n:
            try:
                ack = self.acks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{len(acks)}/{n} traces acknowledged in {timeout} s; exporter log:\n{self.log_text()}")
            acks[ack["key"]] = ack["trace_id"]
        return acks

    def log_text(self) -> str:
        return "".join(self.log)[-4000:]

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the child writes what it holds, then exits
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the exporter did not exit after its pipe closed:\n{self.log_text()}")


@pytest.fixture(scope="module")
def _made_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with MLflow's schema, made once (that takes seconds): tests copy it."""
    db = tmp_path_factory.mktemp("made-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def made_store(_made_store: Path, tmp_path: Path) -> tuple[str, Path]:
    """(URI, file) of a private copy of a store that has its schema."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_made_store, db)
    return f"sqlite:///{db}", db


def _stored_trace_ids(uri: str, marker: str) -> set[str]:
    traces = mlflow.MlflowClient(uri).search_traces(locations=["0"], filter_string=f"tags.test_marker = '{marker}'",
                                                     max_results=1000, include_spans=False)
    return {t.info.trace_id for t in traces}


def test_exporters_opening_a_fresh_store_at_once_write_every_trace(tmp_path: Path):
    """Two exporters (the exporters of a server's two workers) get their first traces at the
    same moment, on a store that does not exist yet: MLflow creates its schema once, and every
    trace is written (the issue: one process's migration broke the other's, and its batch was dropped)."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    marker = uuid.uuid4().hex
    exporters = [_Exporter() for _ in range(2)]
    try:
        batches = [[_record(uri, marker, f"exporter {i} trace {j}") for j in range(10)] for i in range(2)]
        for exporter, batch in zip(exporters, batches, strict=True):
            exporter.send(batch)
        for exporter, batch in zip(exporters, batches, strict=True):
            acks = exporter.wait_acks(len(batch))
            assert all(acks.values()), f"traces given up: {acks}\n{exporter.log_text()}"
    finally:
        for exporter in exporters:
            exporter.close()
    expected = {mlflow_trace_id(r["key"]) for batch in batches for r in batch}
    assert _stored_trace_ids(uri, marker) == expected


def test_a_batch_that_fails_twice_is_written_when_the_store_recovers(made_store: tuple[str, Path]):
    """The store's schema is not the one MLflow expects for a while (as while another process
    migrates it: ``alembic_version`` is behind): the exporter's writes fail, and its batch is
    written once the store is whole again, not dropped at the first failure."""
    uri, db = made_store
    database = sqlite3.connect(db)
    [(head,)] = database.execute("SELECT version_num FROM alembic_version").fetchall()
    with database:
        database.execute("UPDATE alembic_version SET version_num = 'a8c4a736bde6'")  # an older revision
    marker = uuid.uuid4().hex
    exporter = _Exporter()
    try:
        batch = [_record(uri, marker, f"retried {i}") for i in range(5)]
        exporter.send(batch)
        deadline = time.monotonic() + 120
        while sum("Could not write" in line for line in exporter.log) < 2 and exporter.acks.empty():
            assert time.monotonic() < deadline, f"no failed write in 120 s:\n{exporter.log_text()}"
            assert exporter.proc.poll() is None, f"the exporter exited:\n{exporter.log_text()}"
            time.sleep(0.05)
        with database:
            database.execute("UPDATE alembic_version SET version_num = ?", (head,))
        acks = exporter.wait_acks(len(batch))
        assert all(acks.values()), f"traces given up: {acks}\n{exporter.log_text()}"
        failures = [line for line in exporter.log if "Could not write" in line]
        assert len(failures) >= 2 and "out-of-date database schema" in failures[0], exporter.log_text()
        assert "trying again" in failures[0]
    finally:
        database.close()
        exporter.close()
    assert _stored_trace_ids(uri, marker) == {mlflow_trace_id(r["key"]) for r in batch}


def test_the_exporter_keeps_writing_after_its_parent_is_gone(made_store: tuple[str, Path]):
    """Its parent died with batches in the pipe: the first acknowledgement hits a broken pipe,
    and the exporter still writes the batches after it (it used to die on that write)."""
    uri, _ = made_store
    marker = uuid.uuid4().hex
    exporter = _Exporter()
    records = [_record(uri, marker, f"orphan {i}") for i in range(450)]  # three batches of at most 200
    exporter.send(records)
    exporter.proc.stdout.close()  # nobody reads the acknowledgements any more
    exporter.close()
    assert exporter.proc.returncode == 0, exporter.log_text()
    assert _stored_trace_ids(uri, marker) == {mlflow_trace_id(r["key"]) for r in records}


def test_a_store_that_cannot_take_span_batches_is_not_retried(tmp_path: Path):
    """A permanent error (MLflow's file store has no ``log_spans``) drops the batch at once, with
    the warning that names the way out, instead of trying it again for seconds."""
    marker = uuid.uuid4().hex
    exporter = _Exporter(MLFLOW_ALLOW_FILE_STORE="true")
    try:
        exporter.send([_record((tmp_path / "mlruns").as_uri(), marker, f"file store {i}") for i in range(3)])
        acks = exporter.wait_acks(3)
    finally:
        exporter.close()
    assert list(acks.values()) == [None] * 3
    log = exporter.log_text()
    assert "MLFLOW_LITE_TRACE_EXPORT=thread" in log and "dropped after 1 attempt(s) (3 dropped in all)" in log, log
    assert "trying again" not in log


# -- a served model on a fresh store --


def _trace_rows(db: Path) -> int:
    """Traces in the store, read with plain SQL: opening it with MLflow would create its schema,
    racing the server under test."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as database:
            return database.execute("SELECT count(*) FROM trace_info").fetchone()[0]
    except sqlite3.Error:  # not created yet, or being migrated
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("export", ["process", "thread"])
def test_served_replicas_on_a_fresh_store_write_every_trace_of_their_first_requests(export: str, tmp_path: Path):
    """Two replicas (``mlflow models serve``) start on a store that does not exist yet and get
    requests the moment they answer /ping: their writers (exporter children, or MLflow's export in
    the server) open the fresh store at once, and every request's trace is written."""
    db = tmp_path / "mlflow.db"
    model = tmp_path / "model"
    ml.save_model(model, model="lite/echo", prompt="Q: {question}")
    assert not db.exists()
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{db}", MLFLOW_ENABLE_ASYNC_TRACE_LOGGING="true",
               MLFLOW_LITE_TRACE_EXPORT=export)
    env.pop("PYTEST_CURRENT_TEST", None)
    servers: list[tuple[str, subprocess.Popen, Path]] = []
    for replica in range(2):
        port, log = free_port(), tmp_path / f"serve-{replica}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model),
                                     "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
                                     "--workers", "1"],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
        servers.append((f"http://127.0.0.1:{port}", proc, log))

    def logs() -> str:
        return "\n".join(log.read_text(errors="replace")[-4000:] for _, _, log in servers)

    n = 20  # per replica
    rows: list[dict] = []
    try:
        deadline = time.monotonic() + 180
        for url, proc, _ in servers:
            while True:
                assert proc.poll() is None, f"a server exited:\n{logs()}"
                assert time.monotonic() < deadline, f"no /ping answer in 180 s:\n{logs()}"
                try:
                    if requests.get(f"{url}/ping", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.05)
        assert not db.exists(), "the store was opened before any trace: this test needs it fresh"

        def ask(url: str, i: int) -> None:
            body = {"dataframe_records": [{"question": f"first {i}"}], "params": {"return_details": True}}
            response = requests.post(f"{url}/invocations", json=body, timeout=120)
            assert response.status_code == 200, response.text
            rows.extend(response.json()["predictions"])

        threads = [threading.Thread(target=ask, args=(url, i)) for url, _, _ in servers for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(rows) == 2 * n, logs()
        deadline = time.monotonic() + 180
        while _trace_rows(db) < 2 * n and time.monotonic() < deadline:
            time.sleep(0.5)
        written = _trace_rows(db)
    finally:
        for _, proc, _ in servers:
            os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in servers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert written == 2 * n, f"{written}/{2 * n} traces written\n{logs()}"
    if export == "process":  # the ids the rows returned are the ids written
        stored = {t.info.trace_id for t in mlflow.MlflowClient(f"sqlite:///{db}").search_traces(
            locations=["0"], max_results=1000, include_spans=False)}
        assert stored == {row["trace_id"] for row in rows}
    assert "already exists" not in logs()
