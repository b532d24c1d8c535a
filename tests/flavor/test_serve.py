"""The ``mlflow_lite`` flavor behind a real ``mlflow models serve`` scoring server.

One server process is shared by the module (startup loads MLflow, LiteLLM and the embedding model:
seconds on 2 cores). It serves the registry alias ``models:/<name>@champion`` of a model logged
with ``ml.log_model(registered_model_name=...)``, so every HTTP test also covers the registry path;
a model saved to a plain directory is checked in-process with ``mlflow.pyfunc.load_model``.

The served model answers a warm-cache row from its bundled semantic cache (no provider request)
and everything else from the loopback stub LLM server. The server gets its API key from its
environment, never from the model files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.testing import StubLLMServer, free_port

from tests.helpers import KEY, assert_process_exits
from tests.served_app import KNOWN, KNOWN_ANSWER, PARAPHRASE, PROMPT, SYSTEM, model_settings, stub_answer

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 120





@dataclass
class Served:
    """A running ``mlflow models serve`` process and how to talk to it."""

    url: str
    proc: subprocess.Popen
    log: Path  # the server's stdout + stderr
    model_uri: str

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no server log: {exc})"

    def post(self, payload: dict | str | bytes, content_type: str = "application/json") -> requests.Response:
        body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        return requests.post(f"{self.url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=60)

    def explain(self, response: requests.Response) -> str:
        return f"HTTP {response.status_code}: {response.text[:2000]}\n--- server log (tail) ---\n{self.log_tail()}"

    def predictions(self, payload: dict) -> list:
        response = self.post(payload)
        assert response.status_code == 200, self.explain(response)
        body = response.json()
        assert set(body) == {"predictions"}, self.explain(response)
        return body["predictions"]


def start_server(model_uri: str, workdir: Path, env: dict[str, str]) -> Served:
    """``mlflow models serve`` in its own process group; waits for ``/ping``; fails with its log."""
    port = free_port()
    log = workdir / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", proc, log, model_uri)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_server(served)
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{served.log_tail()}")
        try:
            if requests.get(f"{served.url}/ping", timeout=2).status_code == 200:
                return served
        except requests.RequestException:
            pass
        time.sleep(0.25)
    stop_server(served)
    pytest.fail(f"mlflow models serve did not answer /ping within {STARTUP_TIMEOUT_S} s:\n{served.log_tail()}")


def stop_server(served: Served) -> None:
    """SIGTERM to the server's process group (the CLI, its uvicorn worker and the trace exporter),
    as a deployment stops a replica; SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(served.proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        try:
            while time.monotonic() < deadline:
                served.proc.poll()  # reaps the CLI, so only live members keep the group
                os.killpg(served.proc.pid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            break


@pytest.fixture(scope="module")
def registered(stub_server: StubLLMServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The app logged in a run and registered; version 1 carries the alias ``champion``."""
    artifacts = tmp_path_factory.mktemp("serve-artifacts")
    name = f"support_bot_{uuid.uuid4().hex[:8]}"
    experiment_id = mlflow.create_experiment(f"serve-tests-{name}", artifact_location=artifacts.as_uri())
    with mlflow.start_run(experiment_id=experiment_id):
        info = ml.log_model(name="support_bot", registered_model_name=name, **model_settings(stub_server.openai_base))
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", info.registered_model_version)
    return {"name": name, "info": info, "artifacts": artifacts, "uri": f"models:/{name}@champion"}


@pytest.fixture(scope="module")
def server(registered: dict, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """One scoring server for the module, serving ``models:/<name>@champion``."""
    workdir = tmp_path_factory.mktemp("serve")
    env = dict(os.environ)
    env["OPENAI_API_KEY"] = KEY  # from the serving environment, never from the model
    env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]  # the tests' temporary sqlite store
    env["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "true"  # MLflow's default in a real deployment
    env.pop("PYTEST_CURRENT_TEST", None)
    served = start_server(registered["uri"], workdir, env)
    yield served
    stop_server(served)


def records(*questions: str, **params) -> dict:
    payload: dict = {"dataframe_records": [{"question": q} for q in questions]}
    if params:
        payload["params"] = params
    return payload


def chat_requests(stub: StubLLMServer) -> list:
    return stub.requests_to("/chat/completions")


# -- the scoring protocol --


def test_dataframe_records_and_split_answer_from_the_warm_cache(server: Served, stub: StubLLMServer):
    assert server.predictions(records(PARAPHRASE)) == [KNOWN_ANSWER]
    split = {"dataframe_split": {"columns": ["question"], "data": [[KNOWN], [PARAPHRASE]]}}
    assert server.predictions(split) == [KNOWN_ANSWER, KNOWN_ANSWER]
    assert stub.requests == [], "a warm-cache question reached the provider"


def test_unknown_question_reaches_the_provider(server: Served, stub: StubLLMServer):
    question = "How do I export my invoices as a CSV file?"
    assert server.predictions(records(question)) == [stub_answer(question)]
    [request] = chat_requests(stub)
    assert request.body["model"] == "gpt-4o"
    assert request.body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT.format(question=question)},
    ]
    assert request.headers.get("authorization") == f"Bearer {KEY}"  # the key came from the server's env

    # A batch mixes both, in input order; only the new question is sent.
    other = "Which payment methods do you accept?"
    split = {"dataframe_split": {"columns": ["question"], "data": [[PARAPHRASE], [other]]}}
    assert server.predictions(split) == [KNOWN_ANSWER, stub_answer(other)]
    assert len(chat_requests(stub)) == 2


def test_params_in_the_payload_reach_the_provider(server: Served, stub: StubLLMServer):
    question = "Can I change my billing address?"
    payload = records(question, temperature=0.3, max_tokens=64)
    assert server.predictions(payload) == [stub_answer(question)]
    [request] = chat_requests(stub)
    assert request.body["temperature"] == 0.3
    assert request.body["max_tokens"] == 64


def test_return_details_gives_structured_rows(server: Served, stub: StubLLMServer):
    question = "Do you offer a student discount?"
    rows = server.predictions(records(PARAPHRASE, question, return_details=True))
    assert len(rows) == 2 and all(isinstance(r, dict) for r in rows), rows
    cached, fresh = rows
    for row in rows:
        assert {"text", "model", "cost", "latency", "total_tokens", "cached", "trace_id", "error"} <= set(row)
        assert row["error"] is None
        assert row["model"] == "openai/gpt-4o"
        assert str(row["trace_id"]).startswith("tr-")
    assert cached["text"] == KNOWN_ANSWER
    assert cached["cached"] in ("semantic", "exact")  # exact once an earlier test asked the same paraphrase
    assert cached["cost"] == 0.0 and cached["total_tokens"] == 0
    assert fresh["text"] == stub_answer(question)
    assert fresh["cached"] == ""
    assert fresh["total_tokens"] > 0 and fresh["cost"] > 0
    assert len(chat_requests(stub)) == 1

    # The served call is traced into the store the server points at.
    deadline = time.monotonic() + 60
    while (trace := _find_trace(fresh["trace_id"])) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert trace is not None, f"trace {fresh['trace_id']} never reached the store\n{server.log_tail()}"
    assert KEY not in json.dumps(trace.to_dict()), "the API key was written into a trace"


def _find_trace(trace_id: str):
    try:
        return mlflow.get_trace(trace_id)
    except MlflowException:
        return None


@pytest.mark.parametrize(
    "payload, content_type, reason",
    [
        pytest.param({"dataframe_records": [{"query": KNOWN}]}, "application/json", "question", id="missing-column"),
        pytest.param('{"dataframe_records": [{"question": ', "application/json", "JSON", id="malformed-json"),
        pytest.param({"rows": [{"question": KNOWN}]}, "application/json", "dataframe_records", id="unknown-format-key"),
        pytest.param(
            {"dataframe_records": [{"question": None}]}, "application/json", "'question' is empty", id="empty-value"
        ),
        pytest.param("question\nHow?", "text/plain", "content type", id="unsupported-content-type"),
    ],
)
def test_bad_payloads_get_a_4xx_with_the_reason(server: Served, stub: StubLLMServer, payload, content_type, reason):
    response = server.post(payload, content_type)
    assert 400 <= response.status_code < 500, server.explain(response)
    assert reason.lower() in response.text.lower(), server.explain(response)
    assert stub.requests == []
    assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200  # still serving


# -- registry and paths --


def test_registry_alias_is_what_the_server_serves(server: Served, registered: dict, stub: StubLLMServer):
    version = MlflowClient().get_model_version_by_alias(registered["name"], "champion")
    assert str(version.version) == str(registered["info"].registered_model_version)
    assert server.model_uri == f"models:/{registered['name']}@champion"
    assert server.predictions(records(KNOWN)) == [KNOWN_ANSWER]
    assert stub.requests == []

    # The alias also loads in-process, as an mlflow_lite app and as a pyfunc.
    app = ml.flavor.load_model(registered["uri"])
    assert app.config["system"] == SYSTEM and app.variables == ["question"]


def test_a_saved_directory_loads_as_pyfunc(tmp_path: Path, stub: StubLLMServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    path = tmp_path / "support_bot"
    ml.save_model(path, **model_settings(stub.openai_base))
    bot = mlflow.pyfunc.load_model(str(path))
    frame = pd.DataFrame({"question": [PARAPHRASE, "Where can I download the mobile app?"]})
    assert list(bot.predict(frame)) == [KNOWN_ANSWER, stub_answer("Where can I download the mobile app?")]
    assert len(chat_requests(stub)) == 1


# -- secrets --


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_no_secret_is_written(server: Served, registered: dict, tmp_path: Path, stub: StubLLMServer):
    path = tmp_path / "saved"
    ml.save_model(path, **model_settings(stub.openai_base))
    downloaded = Path(mlflow.artifacts.download_artifacts(registered["uri"], dst_path=str(tmp_path / "downloaded")))
    assert (downloaded / "MLmodel").is_file() and (path / "semantic_cache" / "index.faiss").is_file()
    for root in (path, downloaded, registered["artifacts"]):
        assert _files_holding(root, KEY) == [], f"the API key was written under {root}"
    assert KEY not in server.log.read_text(errors="replace"), "the server logged the API key"

    secret = "sk-live-0123456789abcdef"
    with pytest.raises(MlflowException, match="api_key"):
        ml.save_model(tmp_path / "with_key", **{**model_settings(stub.openai_base), "params": {"api_key": secret}})
    assert not (tmp_path / "with_key").exists() or _files_holding(tmp_path / "with_key", secret) == []
    experiment_id = mlflow.get_experiment_by_name(f"serve-tests-{registered['name']}").experiment_id
    with mlflow.start_run(experiment_id=experiment_id), pytest.raises(MlflowException, match="api_key"):
            ml.log_model(name="leaky", model="gpt-4o", prompt=PROMPT, params={"api_key": secret})
    assert _files_holding(registered["artifacts"], secret) == []


def test_a_password_in_a_url_parameter_is_refused(tmp_path: Path):
    secret = "sk-pw-0123456789abcdef"
    with pytest.raises(MlflowException, match="api_base"):
        ml.save_model(tmp_path / "m", model="gpt-4o", prompt=PROMPT, params={"api_base": f"http://user:{secret}@127.0.0.1:9/v1"})


# -- trace export when served --


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every live process under ``pid``."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = commands.get(child, "")
        todo += children.get(child, [])
    return found


def _exporters(pid: int) -> list[int]:
    return [child for child, cmd in _descendants(pid).items() if "mlflow_lite_plugin.tracing.export" in cmd]


def test_a_served_model_writes_traces_from_an_exporter_process_that_stops_with_it(
    registered: dict, stub: StubLLMServer, tmp_path: Path
):
    """Under ``mlflow models serve`` the traces are written by the exporter child (not by a thread
    of the server), and stopping the server the usual way (SIGTERM to its group) leaves no
    exporter behind and loses no trace."""
    env = dict(os.environ, OPENAI_API_KEY=KEY, MLFLOW_ENABLE_ASYNC_TRACE_LOGGING="true")
    env.pop("MLFLOW_LITE_TRACE_EXPORT", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    served = start_server(registered["uri"], tmp_path, env)
    try:
        questions = [f"Is there a plan for {n} seats?" for n in range(5)]
        rows = served.predictions(records(*questions, return_details=True))  # ids known before the write
        deadline = time.monotonic() + 20
        while not (exporters := _exporters(served.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the writer starts the exporter with its first batch
        assert len(exporters) == 1, _descendants(served.proc.pid)
    finally:
        stop_server(served)
    assert_process_exits(exporters[0], "the exporter outlived the server", timeout=20)
    for row in rows:
        trace = _find_trace(row["trace_id"])
        assert trace is not None, f"trace {row['trace_id']} was lost when the server stopped"
        root = trace.data.spans[0]
        assert root.name == "mlflow_lite.query" and trace.info.tags["mlflow_lite.model"] == "gpt-4o"
