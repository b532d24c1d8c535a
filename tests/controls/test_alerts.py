"""Budget alerts: email to a real SMTP server on loopback, webhook JSON, callbacks; once per
period per threshold (also across processes); a broken channel never blocks or fails a call."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.controls.budget.alerts import Alert, flush_alerts
from mlflow_lite_plugin.controls.budget.stage import (
    Budget,
    BudgetExceededError,
    BudgetStage,
    SQLiteLedger,
    set_alert,
    usd,
)
from mlflow_lite_plugin.testing import free_port

from tests.helpers import get_trace

UTC = timezone.utc
ECHO = "lite/echo"
LIMIT = 0.1  # each echo call below costs $0.013 and reserves $0.019


class _Collector:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        message = message_from_bytes(envelope.content, policy=default_policy)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    collector = _Collector()
    controller = Controller(collector, hostname="127.0.0.1", port=free_port())
    controller.start()
    collector.port = controller.port
    yield collector
    controller.stop()


class _Hooks:
    def __init__(self) -> None:
        self.received: list[dict] = []
        self.delay = 0.0
        self.status = 200


@pytest.fixture
def webhook_server():
    hooks = _Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(hooks.delay)
            hooks.received.append({"body": json.loads(body), "content_type": self.headers["Content-Type"]})
            self.send_response(hooks.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hooks.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield hooks
    server.shutdown()
    server.server_close()


def _client(tmp_path, *alerts: Alert, clock=None, tracing=False, limit=LIMIT, client=None):
    c = client or ml.Client(tracing=tracing)
    c.set_model_price(ECHO, input_per_million=1000, output_per_million=1000)
    stage = BudgetStage(Budget(daily_limit=limit), SQLiteLedger(tmp_path / "budget.db"), alerts=alerts, clock=clock)
    c.add_stage(stage)
    return c, stage


def _spend(c: ml.Client, calls: int) -> list:
    answers = []
    for _ in range(calls):
        with contextlib.suppress(BudgetExceededError):  # past the limit: refused, not answered
            answers.append(c.query(model=ECHO, prompt="hello world", max_tokens=10))
    return answers


def test_email_alert_reaches_a_real_smtp_server_once(tmp_path, smtp_server):
    alert = Alert(
        0.5, email="you@company.com", smtp_host="127.0.0.1", smtp_port=smtp_server.port, sender="llm@corp.test"
    )
    c, stage = _client(tmp_path, alert)
    _spend(c, 12)  # crosses 50% around the 4th call, then keeps spending until refused
    assert flush_alerts(10)
    assert len(smtp_server.messages) == 1
    mail_from, rcpt_tos, message = smtp_server.messages[0]
    assert (mail_from, rcpt_tos) == ("llm@corp.test", ["you@company.com"])
    subject, body = message["Subject"], message.get_content()
    assert "50% of the daily LLM budget used" in subject and "of $0.10" in subject
    assert "Limit:      $0.10" in body and "Spent:      $0.052" in body  # 4 calls of $0.013
    assert "Resets at:" in body and stage.periods()[0][0].end.isoformat() in body


def test_email_settings_from_the_environment(tmp_path, smtp_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_LITE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("MLFLOW_LITE_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("MLFLOW_LITE_SMTP_SENDER", "budget@env.test")
    alert = Alert(0.2, email=["a@corp.test", "b@corp.test"])
    assert (alert.smtp_host, alert.smtp_port, alert.sender) == ("127.0.0.1", smtp_server.port, "budget@env.test")
    c, _ = _client(tmp_path, alert)
    _spend(c, 3)
    assert flush_alerts(10)
    assert [(m[0], m[1]) for m in smtp_server.messages] == [("budget@env.test", ["a@corp.test", "b@corp.test"])]


def test_webhook_alert_posts_json_once(tmp_path, webhook_server):
    c, _ = _client(tmp_path, Alert(0.8, webhook=webhook_server.url))
    answers = _spend(c, 15)
    assert flush_alerts(10)
    assert len(webhook_server.received) == 1
    hook = webhook_server.received[0]
    event = hook["body"]
    assert hook["content_type"] == "application/json"
    assert event["event"] == "budget_alert" and event["threshold"] == 0.8 and event["limit"] == LIMIT
    assert event["period"] == "daily" and event["scope"] == "global" and event["refused"] is False
    assert 0.08 <= event["spent"] <= LIMIT and event["spent"] == pytest.approx(0.013 * 7)
    assert usd(event["spent"]) in event["text"] and "$0.10" in event["text"]
    assert sum(r.cost for r in answers) <= LIMIT


def test_callbacks_fire_once_per_period_per_threshold(tmp_path):
    events = []
    clock = _Clock(datetime(2024, 6, 1, 12, tzinfo=UTC))
    c, _ = _client(tmp_path, *(Alert(t, callback=events.append) for t in (0.25, 0.5, 1.0)), clock=clock)
    _spend(c, 20)  # many calls after every threshold was crossed, and refusals
    assert flush_alerts(10)
    assert sorted(e["threshold"] for e in events) == [0.25, 0.5, 1.0]
    exhausted = next(e for e in events if e["threshold"] == 1.0)
    assert exhausted["refused"] is True and "exhausted" in exhausted["text"]  # fired by the first refusal
    clock.now = datetime(2024, 6, 2, 12, tzinfo=UTC)  # a new period: each threshold fires again
    _spend(c, 20)
    assert flush_alerts(10)
    assert sorted(e["threshold"] for e in events) == [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    assert {e["period_key"] for e in events} == {"daily:2024-06-01@UTC", "daily:2024-06-02@UTC"}


def test_alerts_shared_by_clients_of_one_ledger_fire_once(tmp_path):
    events = []
    first, _ = _client(tmp_path, Alert(0.5, callback=events.append))
    second, _ = _client(tmp_path, Alert(0.5, callback=events.append))
    for _ in range(4):
        _spend(first, 1)
        _spend(second, 1)
    assert flush_alerts(10)
    assert len(events) == 1


def test_alert_appears_on_the_trace(client, tmp_path):
    c, _ = _client(tmp_path, Alert(0.1, callback=lambda e: None), client=client)
    r = c.query(model=ECHO, prompt="hello world", max_tokens=10)  # $0.013 of $0.10: crosses 10%
    root = get_trace(r.trace_id).data.spans[0]
    alert = next(e for e in root.events if e.name == "budget_alert")
    assert alert.attributes["threshold"] == 0.1 and alert.attributes["channels"] == "callback"
    assert root.attributes["mlflow_lite.budget.alert_fired"] == 0.1


def test_a_failing_channel_never_blocks_or_fails_a_call(tmp_path, webhook_server, caplog):
    webhook_server.delay = 2.0  # a slow webhook...
    closed_port = free_port()  # ...and an SMTP server that is down
    broken = Alert(
        0.1,
        email="you@company.com",
        smtp_host="127.0.0.1",
        smtp_port=closed_port,
        webhook=webhook_server.url,
        callback=lambda event: 1 / 0,
        timeout=0.5,
    )
    c, stage = _client(tmp_path, broken)
    with caplog.at_level("ERROR", logger="mlflow_lite_plugin.controls.budget.alerts"):
        started = time.perf_counter()
        r = c.query(model=ECHO, prompt="hello world", max_tokens=10)
        elapsed = time.perf_counter() - started
        assert r.text == "Echo: hello world" and elapsed < 1.0
        assert stage.status()["spent"] == pytest.approx(r.cost)
        assert flush_alerts(10)
    assert "Budget alert via email failed" in caplog.text
    assert "Budget alert via webhook failed" in caplog.text and "timed out" in caplog.text
    assert "Budget alert via callback failed" in caplog.text and "ZeroDivisionError" in caplog.text


def test_alert_delivery_failure_is_not_retried_on_later_calls(tmp_path, webhook_server, caplog):
    webhook_server.status = 500
    c, _ = _client(tmp_path, Alert(0.1, webhook=webhook_server.url))
    with caplog.at_level("ERROR", logger="mlflow_lite_plugin.controls.budget.alerts"):
        _spend(c, 5)
        assert flush_alerts(10)
    assert len(webhook_server.received) == 1 and caplog.text.count("Budget alert via webhook failed") == 1


_PROCESS_SCRIPT = textwrap.dedent(
    """
    import os, pathlib, sys, time
    import mlflow_lite_plugin as ml
    from mlflow_lite_plugin.controls.budget.alerts import Alert
    from mlflow_lite_plugin.controls.budget.stage import Budget, BudgetExceededError, BudgetStage, SQLiteLedger
    from mlflow_lite_plugin.core.model_names import litellm_module

    path, smtp_port, webhook, barrier = sys.argv[1], int(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4])
    alert = Alert(0.5, email="ops@corp.test", smtp_host="127.0.0.1", smtp_port=smtp_port, webhook=webhook)
    client = ml.Client(tracing=False)
    client.set_model_price("lite/echo", input_per_million=1000, output_per_million=1000)
    client.add_stage(BudgetStage(Budget(daily_limit=0.1), SQLiteLedger(path), alerts=[alert]))
    litellm_module(); client.count_tokens("warm up", model="lite/echo")
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.01)
    for i in range(8):
        try:
            client.query(model="lite/echo", prompt="hello world", max_tokens=10)
        except BudgetExceededError:
            pass
    # the interpreter waits for alerts being sent at exit
    """
)


@pytest.mark.slow
def test_alerts_fire_once_across_two_processes(tmp_path, smtp_server, webhook_server):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    args = [str(tmp_path / "shared.db"), str(smtp_server.port), webhook_server.url, str(barrier)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROCESS_SCRIPT, *args], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errors]
    assert len(smtp_server.messages) == 1 and len(webhook_server.received) == 1
    assert webhook_server.received[0]["body"]["threshold"] == 0.5


# -- configuration --


class _Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"threshold": 0, "callback": print}, "threshold"),
        ({"threshold": 1.5, "callback": print}, "threshold"),
        ({"threshold": True, "callback": print}, "threshold"),
        ({"threshold": 0.8}, "email"),
        ({"email": "not-an-address", "smtp_host": "x"}, "email"),
        ({"email": "you@company.com"}, "smtp_host"),
        ({"email": "you@company.com", "smtp_host": "x", "smtp_port": 70000}, "smtp_port"),
        ({"webhook": "ftp://example.com/hook"}, "webhook"),
        ({"callback": "print"}, "callback"),
        ({"callback": print, "timeout": 0}, "timeout"),
    ],
)
def test_bad_alert_settings(kwargs, argument, monkeypatch):
    monkeypatch.delenv("MLFLOW_LITE_SMTP_HOST", raising=False)
    with pytest.raises(ml.ArgumentError) as info:
        Alert(**kwargs)
    assert info.value.argument == argument


def test_set_alert_needs_a_budget_and_replaces_by_threshold(tmp_path):
    c = ml.Client(tracing=False)
    with pytest.raises(ml.ArgumentError, match="set_budget"):
        set_alert(c.pipeline, threshold=0.8, callback=print)
    _, stage = _client(tmp_path, client=c)
    set_alert(c.pipeline, threshold=0.8, callback=print)
    set_alert(c.pipeline, threshold=0.5, callback=print)
    replacement = set_alert(c.pipeline, threshold=0.8, webhook="http://127.0.0.1:9/hook")
    assert [a.threshold for a in stage.alerts] == [0.5, 0.8] and stage.alerts[1] is replacement
    assert "hunter2" not in repr(Alert(email="a@b.c", smtp_host="h", smtp_password="hunter2"))
