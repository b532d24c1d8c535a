"""Credentials never leave the process: one scrubber for every error that leaves (UI JSON, served
``/invocations`` errors, span error attributes and exception events, logs), and a detector by name
and by value that refuses to save a model holding a secret."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.testing import free_port

from tests.helpers import get_trace

PROMPT = "Answer the customer: {question}"


class KeyEchoServer:
    """A loopback OpenAI-style endpoint that refuses every call with 401, quoting the key it was
    sent, as some providers and proxies do."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}",
                                             "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def echo() -> Iterator[KeyEchoServer]:
    server = KeyEchoServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _trace_text(trace_id: str) -> str:
    return json.dumps(get_trace(trace_id).to_dict())


# -- the detector and the scrubber --


def test_scrub_masks_credentials_and_keeps_ordinary_text():
    from mlflow_lite_plugin.security.credentials import find_secrets, scrub

    cases = {
        "GET http://admin:pw@tracking.example/api failed": "GET http://[redacted]@tracking.example/api failed",
        "redis://:hunter2@localhost:6379/0": "redis://[redacted]@localhost:6379/0",
        "https://Xk29fLq01Mz83@api.example/v1": "https://[redacted]@api.example/v1",
        "http://h/v1?api-key=abc123&x=1": "http://h/v1?api-key=[redacted]&x=1",
        'ml.query(model="gpt-4o", api_key="hunter2hunter2")': 'ml.query(model="gpt-4o", api_key="[redacted]")',
        '{"password": "pw12", "max_tokens": 5}': '{"password": "[redacted]", "max_tokens": 5}',
        "Authorization: Bearer abc123def456": "Authorization: Bearer [redacted]",
        "key sk-proj-abcdefghijklmnopqrst1234": "key [redacted]",
        "aws AKIAIOSFODNN7EXAMPLE here": "aws [redacted] here",
        "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789": "gh [redacted]",
        "slack xoxb-1234567890-abcdefghij": "slack [redacted]",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N": "jwt [redacted]",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- end": "[redacted] end",
        "token Qx7fK2pL9mZ3vB8nR4tY6wE1aS5dF0gH": "token [redacted]",
    }
    for text, expected in cases.items():
        assert scrub(text) == expected, text
    ordinary = [
        "trace tr-0123456789abcdef0123456789abcdef failed after 3 attempts",
        "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/litellm/main.py",
        "openai/gpt-4o: max_tokens=5, prompt_tokens=12; Basic authentication failed",
        "mlflow_lite_plugin.tracing.export.ProcessWriter",
    ]
    for text in ordinary:
        assert scrub(text) == text
    assert scrub("the key is plainword99 here", known=["plainword99"]) == "the key is [redacted] here"
    [finding] = find_secrets("use sk-abcdefghijklmnopqrstu now")
    assert (finding.kind, finding.start, finding.end) == ("api_key", 4, 28)


# -- the web UI --


@pytest.fixture
def ui_with_password_in_tracking_uri(monkeypatch):
    """The UI app whose tracking store is an MLflow server behind a password, unreachable."""
    from fastapi.testclient import TestClient

    from mlflow_lite_plugin.apps.ui.app import create_app

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    password = "pw-" + uuid.uuid4().hex[:8]
    # The environment, not mlflow.set_tracking_uri: an explicitly set URI outlives the test and
    # hides the MLFLOW_TRACKING_URI later tests set.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://admin:{password}@127.0.0.1:{free_port()}")
    client = ml.Client()
    client.set_tracing(enabled=False)
    app = create_app(client, experiment="secrets-ui")
    yield TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False), password


def test_ui_errors_never_show_the_tracking_password(ui_with_password_in_tracking_uri, caplog):
    http, password = ui_with_password_in_tracking_uri
    with caplog.at_level(logging.WARNING):
        listed = http.get("/api/traces")  # a handled store error: 400 quoting MLflow's message
        dashboard = http.get("/api/dashboard")  # an unexpected one: a 500 with a message
    assert listed.status_code == 400 and "[redacted]@127.0.0.1" in listed.json()["detail"]
    assert dashboard.status_code == 500 and "[redacted]@127.0.0.1" in dashboard.json()["detail"]
    for body in (listed.text, dashboard.text, caplog.text):
        assert password not in body


# -- saving a model --


def _save(path: Path, **settings):
    ml.save_model(path, model="openai/gpt-4o", prompt=PROMPT, **settings)
    return path


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({"params": {"api_base": "https://{key}@llm.example/v1"}}, "params.api_base"),
        ({"params": {"api_base": "https://llm.example/v1?api-key={key}"}}, "params.api_base"),
        ({"params": {"extra_body": {"token": "{key}"}}}, "params.extra_body.token"),
        ({"params": {"extra_body": {"note": "sk-live-{key}"}}}, "params.extra_body.note"),
        ({"metadata": {"owner": "sk-live-{key}"}}, "metadata.owner"),
        ({"metadata": {"api_key": "{key}"}}, "metadata.api_key"),
        ({"system": "Use the key sk-live-{key} when asked."}, "system"),
        ({"extra_pip_requirements": ["--extra-index-url https://{key}@pypi.example/simple"]},
         "extra_pip_requirements[0]"),
    ],
)
def test_save_refuses_secrets_by_value_and_by_name(tmp_path, settings, where):
    key = uuid.uuid4().hex[:20] + "Zq9"
    filled = json.loads(json.dumps(settings).replace("{key}", key))
    with pytest.raises(MlflowException) as refused:
        _save(tmp_path / "leaky", **filled)
    message = str(refused.value)
    assert f"{where} holds a credential" in message and key not in message
    assert not (tmp_path / "leaky").exists()  # refused before anything is written


def test_log_model_refuses_secret_metadata_before_logging():
    key = "sk-live-" + uuid.uuid4().hex
    # Not mlflow.set_experiment: it sets MLFLOW_EXPERIMENT_ID for the whole process, and later
    # tests' subprocesses on other stores would look for that experiment.
    experiment = mlflow.create_experiment(f"secrets-log-model-{uuid.uuid4().hex[:8]}")
    with (
        mlflow.start_run(experiment_id=experiment) as run,
        pytest.raises(MlflowException, match=r"metadata\.token holds a credential"),
    ):
        ml.log_model(name="leaky", model="gpt-4o", prompt=PROMPT, metadata={"token": key})
    assert key not in json.dumps(mlflow.get_run(run.info.run_id).to_dictionary())
    assert not mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")


def test_a_legit_save_writes_no_key_in_any_file(tmp_path, monkeypatch, stub):
    key = "sk-live-" + uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", key)
    path = _save(
        tmp_path / "bot",
        params={"api_base": stub.openai_base, "temperature": 0, "extra_body": {"user": "support"}},
        metadata={"owner": "support-team", "ticket": "OPS-1234"},
        input_example=pd.DataFrame({"question": ["How do I reset my password?"]}),
    )
    assert mlflow.pyfunc.load_model(str(path)).predict({"question": "hi"})[0].startswith("Stub answer")
    written = [f for f in Path(path).rglob("*") if f.is_file()]
    assert "MLmodel" in {f.name for f in written} and "mlflow_lite.yaml" in {f.name for f in written}
    for file in written:
        assert key.encode() not in file.read_bytes(), file


# -- served errors --


def test_served_errors_never_quote_the_key(tmp_path, monkeypatch, echo):
    key = "plain-" + uuid.uuid4().hex[:10]  # not shaped like a key: masked as the environment's value
    monkeypatch.setenv("OPENAI_API_KEY", key)
    path = _save(tmp_path / "bot", params={"api_base": echo.base, "num_retries": 0})
    bot = mlflow.pyfunc.load_model(str(path))
    with pytest.raises(MlflowException) as failed:
        bot.predict({"question": "hi"})
    assert "Incorrect API key provided: [redacted]" in failed.value.message and key not in failed.value.message
    details = bot.predict({"question": "hi"}, params={"return_details": True})
    assert "[redacted]" in details["error"][0] and key not in details["error"][0]
    ml.flush_traces()


# -- traces --


def test_a_key_hard_coded_on_the_calling_line_stays_out_of_the_trace(client, echo):
    with pytest.raises(ml.ProviderAuthError) as failed:
        client.query(model="openai/gpt-4o", prompt="hi", api_base=echo.base, api_key="sk-live-hardcoded0123456789abcdef", num_retries=0)  # noqa: E501
    trace = _trace_text(failed.value.trace_id)
    assert "Incorrect API key provided: [redacted]" in trace
    assert "exception.stacktrace" in trace  # the stack trace is kept, scrubbed
    assert "hardcoded0123456789abcdef" not in trace


@pytest.mark.parametrize("export", ["thread", "process"])
def test_the_calls_own_key_is_masked_in_its_trace_whatever_it_looks_like(echo, export):
    key = "plainword" + uuid.uuid4().hex[:6]
    client = ml.Client()
    client.set_tracing(export=export)
    try:
        with pytest.raises(ml.ProviderAuthError) as failed:
            client.query(model="openai/gpt-4o", prompt="hi", api_base=echo.base, api_key=key, num_retries=0)
        assert key in str(failed.value)  # the caller's own exception is theirs to see
        trace = _trace_text(failed.value.trace_id)
    finally:
        client.flush_traces()
    assert "mlflow_lite.error" in trace and "[redacted]" in trace
    assert key not in trace


def test_live_spans_are_scrubbed_too(client, echo):
    """Inside the caller's span our spans are written as the call runs; a key-shaped value in a
    parameter not named like a credential is masked in the span inputs too."""
    key, other = "plainword" + uuid.uuid4().hex[:6], "sk-live-" + uuid.uuid4().hex
    with mlflow.start_span("caller") as outer, pytest.raises(ml.ProviderAuthError):
        client.query(model="openai/gpt-4o", prompt="hi", api_base=echo.base, api_key=key,
                     extra_body={"note": other}, num_retries=0)
    trace = _trace_text(outer.trace_id)
    assert "Incorrect API key provided: [redacted]" in trace and "note" in trace
    assert key not in trace and other not in trace


def test_chain_spans_record_step_errors_scrubbed(echo):
    key = "plainword" + uuid.uuid4().hex[:6]
    chain = ml.Chain([ml.Step("ask", prompt="{input}", model="openai/gpt-4o", api_base=echo.base, api_key=key,
                              num_retries=0)], client=ml.Client())
    with pytest.raises(ml.ChainStepError) as failed:
        chain.run("hi")
    assert key in str(failed.value)  # the caller's own exception
    trace = _trace_text(failed.value.trace_id)
    assert "Incorrect API key provided: [redacted]" in trace and key not in trace


# -- logs --


def test_package_logs_are_scrubbed(caplog):
    url = "http://admin:pw-" + uuid.uuid4().hex[:6] + "@tracking.example"
    with caplog.at_level(logging.WARNING):
        logging.getLogger("mlflow_lite_plugin.tracing.tracer").warning("Could not write to %s", url)
        try:
            raise RuntimeError(f"store {url} refused")
        except RuntimeError:
            logging.getLogger("mlflow_lite_plugin").exception("failed")
    assert caplog.text.count("http://[redacted]@tracking.example") == 2
    assert url not in caplog.text


def test_package_logs_are_scrubbed_without_logging_configured():
    """Python's last-resort handler still prints the package's warnings, scrubbed."""
    code = ("import logging, mlflow_lite_plugin; "
            "logging.getLogger('mlflow_lite_plugin.x').warning('store http://u:hunter22@h.example down')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "store http://[redacted]@h.example down" in done.stderr and "hunter22" not in done.stderr


def test_reading_the_credential_environment_survives_other_threads_changing_it(monkeypatch):
    """Scrubbing reads os.environ on every traced error; a thread setting or removing variables at
    that moment (MLflow does, during predict) made the read raise KeyError."""
    import os
    import time

    from mlflow_lite_plugin.security import credentials

    monkeypatch.setenv("MLFLOW_LITE_TEST_API_KEY", "sk-test-environment-value-0123456789")
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            os.environ[f"MLFLOW_LITE_TEST_CHURN_{i % 50}"] = "x"
            os.environ.pop(f"MLFLOW_LITE_TEST_CHURN_{(i + 25) % 50}", None)
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        end, reads = time.monotonic() + 2, 0
        while time.monotonic() < end:
            assert "sk-test-environment-value-0123456789" in credentials.secret_env_values()
            reads += 1
    finally:
        stop.set()
        worker.join()
        for i in range(50):
            os.environ.pop(f"MLFLOW_LITE_TEST_CHURN_{i}", None)
    assert reads > 100
