"""Budget alerts: email (SMTP), a webhook (JSON POST) or a Python callback when spend crosses a
fraction of a limit.

    ml.set_alert(threshold=0.80, email="you@company.com")      # SMTP from MLFLOW_LITE_SMTP_* env
    ml.set_alert(threshold=1.0, webhook="https://hooks.slack.com/services/...")
    ml.set_alert(threshold=0.5, callback=lambda event: print(event["text"]))

An alert fires once per period (day/month), per scope and per threshold, across every process
that shares the ledger: the first process to record it in the ledger sends it (at most once: a
send that fails is logged, not retried). A threshold of 1.0 also fires when a call is refused
because the budget is exhausted. Sending happens on background threads with socket timeouts: a
slow or broken channel logs an error and never blocks or fails a call. Pending sends are given
up to :data:`EXIT_FLUSH_TIMEOUT` seconds at interpreter exit.

SMTP settings come from the arguments, else the environment: ``MLFLOW_LITE_SMTP_HOST``,
``_PORT``, ``_USER``, ``_PASSWORD``, ``_SENDER``, ``_STARTTLS`` (1/0; default: used when the
server offers it) and ``_SSL`` (1: implicit TLS, port 465).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from mlflow_lite_plugin.core.errors import ArgumentError, check_number
from mlflow_lite_plugin.core.pricing import usd
from mlflow_lite_plugin.tracing import schema

if TYPE_CHECKING:
    from email.message import EmailMessage

    from mlflow_lite_plugin.controls.budget.ledger import Ledger
    from mlflow_lite_plugin.controls.budget.periods import Period
    from mlflow_lite_plugin.tracing.tracer import NullSpan, Span

_logger = logging.getLogger(__name__)

ENV_PREFIX = "MLFLOW_LITE_SMTP_"
DEFAULT_TIMEOUT = 10.0  # seconds per send
EXIT_FLUSH_TIMEOUT = 15.0

AlertEvent = dict  # JSON-safe: what webhooks receive and callbacks are called with


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else None


def _env_flag(name: str) -> bool | None:
    value = _env(name)
    if value is None:
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Alert:
    """Notify when a budget period's spend reaches ``threshold`` (a fraction in (0, 1]) of its
    limit, through any of ``email`` (an address or a list), ``webhook`` (http(s) URL, JSON POST)
    and ``callback`` (called with the event dict, on a background thread)."""

    threshold: float = 0.8
    email: str | Sequence[str] | None = None
    webhook: str | None = None
    callback: Callable[[AlertEvent], Any] | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    sender: str | None = None
    smtp_starttls: bool | None = None  # None: when the server offers it
    smtp_ssl: bool | None = None
    timeout: float = DEFAULT_TIMEOUT
    _fired: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = self.threshold
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or not 0 < t <= 1:
            raise ArgumentError("threshold", f"must be a fraction of the limit in (0, 1], e.g. 0.8; got {t!r}")
        self.threshold = float(t)
        if self.email is None and self.webhook is None and self.callback is None:
            raise ArgumentError("email", "an alert needs at least one of email=, webhook= or callback=")
        if self.callback is not None and not callable(self.callback):
            raise ArgumentError("callback", f"must be callable, got {type(self.callback).__name__}")
        if self.webhook is not None:
            parsed = urllib.parse.urlparse(self.webhook) if isinstance(self.webhook, str) else None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ArgumentError("webhook", f"must be an http(s) URL, got {self.webhook!r}")
        if self.timeout is None:
            raise ArgumentError("timeout", "is required (seconds)")
        check_number("timeout", self.timeout, unit="seconds")
        if self.email is not None:
            self._configure_email()

    def _configure_email(self) -> None:
        recipients = [self.email] if isinstance(self.email, str) else list(self.email or [])
        if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
            raise ArgumentError("email", f"must be an email address or a list of them, got {self.email!r}")
        self.email = recipients[0] if len(recipients) == 1 else recipients
        self.smtp_host = self.smtp_host or _env("HOST")
        if not self.smtp_host:
            raise ArgumentError("smtp_host", f"email alerts need an SMTP server: smtp_host= or {ENV_PREFIX}HOST")
        if self.smtp_ssl is None:
            self.smtp_ssl = bool(_env_flag("SSL"))
        if self.smtp_starttls is None:
            self.smtp_starttls = _env_flag("STARTTLS")
        if self.smtp_port is None:
            env_port = _env("PORT")
            if env_port is not None:
                try:
                    self.smtp_port = int(env_port)
                except ValueError:
                    message = f"{ENV_PREFIX}PORT must be a port number, got {env_port!r}"
                    raise ArgumentError("smtp_port", message) from None
            else:
                self.smtp_port = 465 if self.smtp_ssl else 587 if self.smtp_starttls else 25
        port = self.smtp_port
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ArgumentError("smtp_port", f"must be a TCP port number, got {port!r}")
        self.smtp_user = self.smtp_user or _env("USER")
        self.smtp_password = self.smtp_password or _env("PASSWORD")
        self.sender = self.sender or _env("SENDER")
        if not self.sender:
            user = self.smtp_user or ""
            self.sender = user if "@" in user else f"mlflow-lite@{socket.gethostname() or 'localhost'}"

    @property
    def recipients(self) -> list[str]:
        return [self.email] if isinstance(self.email, str) else list(self.email or [])

    def channels(self) -> list[Channel]:
        channels: list[Channel] = []
        if self.email is not None:
            channels.append(EmailChannel(self))
        if self.webhook is not None:
            channels.append(WebhookChannel(self.webhook, self.timeout))
        if self.callback is not None:
            channels.append(CallbackChannel(self.callback))
        return channels


# -- channels --


class Channel(Protocol):
    name: str

    def send(self, event: AlertEvent) -> None: ...


class EmailChannel:
    name = "email"

    def __init__(self, alert: Alert):
        self.alert = alert

    def message(self, event: AlertEvent) -> EmailMessage:
        from email.message import EmailMessage  # mail and HTTP modules (~60 ms) load on the first send

        message = EmailMessage()
        message["Subject"] = event["subject"]
        message["From"] = self.alert.sender
        message["To"] = ", ".join(self.alert.recipients)
        message.set_content(_email_body(event))
        return message

    def send(self, event: AlertEvent) -> None:
        import smtplib
        import ssl

        a = self.alert
        assert a.smtp_host is not None and a.smtp_port is not None
        context = ssl.create_default_context()
        if a.smtp_ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(a.smtp_host, a.smtp_port, timeout=a.timeout, context=context)
        else:
            smtp = smtplib.SMTP(a.smtp_host, a.smtp_port, timeout=a.timeout)
        with smtp:
            smtp.ehlo()
            if not a.smtp_ssl and (a.smtp_starttls or (a.smtp_starttls is None and smtp.has_extn("starttls"))):
                smtp.starttls(context=context)
                smtp.ehlo()
            if a.smtp_user:
                smtp.login(a.smtp_user, a.smtp_password or "")
            smtp.send_message(self.message(event))


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout

    def send(self, event: AlertEvent) -> None:
        import urllib.request

        request = urllib.request.Request(
            self.url,
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "mlflow-lite-plugin"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # http(s) only: checked
            response.read()


class CallbackChannel:
    name = "callback"

    def __init__(self, callback: Callable[[AlertEvent], Any]):
        self.callback = callback

    def send(self, event: AlertEvent) -> None:
        self.callback(dict(event))


# -- events --


def alert_event(
    alert: Alert, *, scope: str, period: Period, limit: float, spent: float, refused: bool = False
) -> AlertEvent:
    pct = f"{alert.threshold * 100:g}%"
    if refused:
        headline = f"the {period.name} LLM budget is exhausted, calls are being refused"
    else:
        headline = f"{pct} of the {period.name} LLM budget used"
    text = (
        f"mlflow-lite budget alert ({scope}): {headline}: {usd(spent)} spent of the {usd(limit)} limit "
        f"({spent / limit:.0%}); it resets at {period.end.isoformat()}."
    )
    return {
        "event": "budget_alert",
        "threshold": alert.threshold,
        "fraction": spent / limit,
        "spent": spent,
        "limit": limit,
        "remaining": max(0.0, limit - spent),
        "refused": refused,
        "period": period.name,
        "period_key": period.key,
        "period_start": period.start.isoformat(),
        "resets_at": period.end.isoformat(),
        "scope": scope,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "fired_at": datetime.now(timezone.utc).isoformat(),
        "subject": f"[mlflow-lite] Budget alert: {headline} ({usd(spent)} of {usd(limit)})",
        "text": text,  # Slack/Teams/Mattermost incoming webhooks display "text"
    }


def _email_body(event: AlertEvent) -> str:
    return "\n".join(
        [
            event["text"],
            "",
            f"Spent:      {usd(event['spent'])}",
            f"Limit:      {usd(event['limit'])}",
            f"Remaining:  {usd(event['remaining'])}",
            f"Threshold:  {event['threshold']:.0%}",
            f"Period:     {event['period']} ({event['period_start']} to {event['resets_at']})",
            f"Scope:      {event['scope']}",
            f"Resets at:  {event['resets_at']}",
            f"Host:       {event['host']} (pid {event['pid']})",
            "",
            "Sent once per period and threshold by mlflow-lite-plugin.",
        ]
    )


def fire_crossed(
    alerts: Sequence[Alert],
    ledger: Ledger,
    *,
    scope: str,
    period: Period,
    limit: float,
    spent: float,
    span: Span | NullSpan | None = None,
    refused: bool = False,
) -> list[AlertEvent]:
    """Fire every alert whose threshold ``spent`` reached (or, on a refusal, the 1.0 alerts) and
    that no process fired yet for this scope and period. Returns the events sent."""
    fired = []
    fraction = spent / limit if limit > 0 else math.inf
    for alert in alerts:
        crossed = alert.threshold <= fraction + 1e-12 or (refused and alert.threshold >= 1.0)
        bucket = (scope, period.key)
        if not crossed or bucket in alert._fired:  # known fired: skip the ledger write
            continue
        first = ledger.mark_alert_fired(scope, period.key, alert.threshold)
        alert._fired.add(bucket)
        if not first:
            continue
        event = alert_event(alert, scope=scope, period=period, limit=limit, spent=spent, refused=refused)
        channels = alert.channels()
        if span is not None:
            span.add_event(
                "budget_alert",
                {
                    "threshold": alert.threshold,
                    "scope": scope,
                    "period": period.name,
                    "spent_usd": spent,
                    "limit_usd": limit,
                    "refused": refused,
                    "channels": ", ".join(c.name for c in channels),
                },
            )
            span.set_attributes({schema.BUDGET_ALERT_FIRED: alert.threshold})
        dispatch(channels, event)
        fired.append(event)
    return fired


# -- background delivery --

_pending: set[threading.Thread] = set()
_pending_lock = threading.Condition()


def dispatch(channels: Sequence[Channel], event: AlertEvent) -> None:
    """Send ``event`` through each channel on its own daemon thread; failures are logged."""
    for channel in channels:
        thread = threading.Thread(
            target=_deliver, args=(channel, event), name=f"mlflow-lite-alert-{channel.name}", daemon=True
        )
        with _pending_lock:
            _pending.add(thread)
        thread.start()


def _deliver(channel: Channel, event: AlertEvent) -> None:
    try:
        channel.send(event)
        _logger.info("Budget alert sent via %s: %s", channel.name, event["text"])
    except Exception as exc:
        _logger.error(
            "Budget alert via %s failed (calls are not affected): %s: %s", channel.name, type(exc).__name__, exc
        )
    finally:
        with _pending_lock:
            _pending.discard(threading.current_thread())
            _pending_lock.notify_all()


def flush_alerts(timeout: float = 30.0) -> bool:
    """Wait until every alert being sent is delivered or failed; False if some are still going."""
    import time

    deadline = time.monotonic() + timeout
    with _pending_lock:
        while _pending and time.monotonic() < deadline:
            _pending_lock.wait(max(0.0, deadline - time.monotonic()))
        return not _pending


atexit.register(flush_alerts, EXIT_FLUSH_TIMEOUT)

__all__ = ["Alert", "AlertEvent", "CallbackChannel", "EmailChannel", "WebhookChannel", "fire_crossed", "flush_alerts"]
