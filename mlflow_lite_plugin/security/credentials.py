"""The one secret detector and scrubber: credentials never leave the process.

Every text that leaves (UI responses, served errors, span errors and attributes, log records) goes
through :func:`scrub`; every setting a saved model would write goes through :func:`find_secrets`.

    find_secrets("call with sk-abcdefghijklmnopqrstu")  # [Finding(kind='api_key', start=10, end=33)]
    scrub("http://admin:pw@host/x?api-key=k1")          # 'http://[redacted]@host/x?api-key=[redacted]'

Detection is by value, not only by name: provider key formats (OpenAI/Anthropic ``sk-...``, AWS
``AKIA...``, GitHub ``ghp_...``, Slack ``xox?-...``, Google ``AIza...``, Hugging Face ``hf_...``,
Stripe, Groq, GitLab), JWTs, PEM private keys, ``Bearer``/``Basic`` credentials, the userinfo of
any URL, secret query parameters (``?api-key=``), ``name=value`` pairs whose name is a credential's
(``api_key="..."`` in a source line of a stack trace), and long random-looking tokens (Shannon
entropy). Our own patterns rather than ``detect-secrets``: its plugins scan lines and return values
without offsets, need its global settings, and its entropy plugins flag every trace id and digest.
Values a caller knows are secret (the ``api_key`` a call used) are masked exactly, whatever they
look like.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

REDACTED = "[redacted]"
# Known values shorter than this would mask ordinary words ("test", "1234").
MIN_KNOWN_LENGTH = 6

# Credential names inside free text: a ``name=value`` or ``"name": "value"`` pair.
# Anchored on the name's last word (a leading ``[\w-]*`` costs a scan from every word start).
_NAME = r"(?:api[-_]?key|secret|passw(?:or)?d|pwd|token|credentials?|access[-_]?key|private[-_]?key)"
_QUOTE = r"(?:\\?[\"'])?"


@dataclass(frozen=True)
class _Pattern:
    """A detector, compiled on first use (compiling them all would slow ``import mlflow_lite_plugin``)."""

    kind: str
    source: str
    group: int = 0  # the part that is secret (the value of ``name=value``)
    lower: bool = False  # matched against the lower-cased text (case-insensitive regexes are slow)
    hints: tuple[str, ...] = ()  # substrings of the lower-cased text without which it cannot match

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.source)

    @functools.cached_property
    def hint(self) -> re.Pattern[str] | None:
        # One C-level search instead of a Python loop over the hints.
        return re.compile("|".join(map(re.escape, self.hints))) if self.hints else None

    def finditer(self, text: str, lower: str) -> Iterator[re.Match[str]]:
        if self.hint is not None and self.hint.search(lower) is None:
            return iter(())
        return self.regex.finditer(lower if self.lower else text)


_PATTERNS = (
    # Up to its end line, or to a quote: the text may be JSON.
    _Pattern(
        "private_key",
        r"-----BEGIN[A-Z ]*PRIVATE KEY-----[^\"']*?(?:-----END[A-Z ]*PRIVATE KEY-----|(?=[\"'])|\Z)",
        hints=("private key",),
    ),
    # The userinfo of any URL: a user name alone may be a key (https://<token>@host).
    _Pattern("url_userinfo", r"(?<=://)[^\s/?#@\[\]\"'<>]+(?=@[^\s@])", hints=("://",)),
    _Pattern("query_secret", rf"[?&;][\w.-]*?{_NAME}=([^&#\s\"'<>]+)", 1, True, ("=",)),
    _Pattern(
        "assignment",
        rf"{_NAME}(?![\w-]){_QUOTE}\s*[:=]\s*{_QUOTE}(?!(?:none|null|true|false|\[redacted\])\b)"
        r"([^\s\"'\\,;&)}\]]+)",
        1,
        True,
        ("key", "secret", "passw", "pwd", "token", "credential"),
    ),
    _Pattern("bearer", r"\b(?:bearer|basic)\s+(?=[^\s]*\d)([a-z0-9._~+/=-]{8,})", 1, True, ("bearer", "basic")),
    _Pattern(
        "api_key",
        r"\bsk-(?:ant-|proj-|svcacct-|or-v1-)?[A-Za-z0-9_-]{16,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}|\bxox[abposr]-[A-Za-z0-9-]{10,}"
        r"|\bAIza[0-9A-Za-z_-]{35}|\bhf_[A-Za-z0-9]{30,}|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
        r"|\bgsk_[A-Za-z0-9]{20,}|\bglpat-[A-Za-z0-9_-]{20,}",
        hints=("sk-", "akia", "asia", "gh", "xox", "aiza", "hf_", "k_live_", "k_test_", "gsk_", "glpat-"),
    ),
    _Pattern("jwt", r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}", hints=("eyj",)),
)
# Random-looking tokens: long, mixing upper case, lower case and digits (identifiers, paths and
# words rarely do), with high Shannon entropy. Hex tokens only when asked (``thorough``): error
# text is full of trace ids and digests.
_TOKEN = _Pattern("high_entropy", r"[A-Za-z0-9+_=-]{24,}")
_HEX = _Pattern("high_entropy", r"(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{32,}(?![0-9A-Za-z])")
# Most texts hold none of it: one search rules every pattern out.
_ANYTHING = _Pattern("any", "|".join(re.escape(h) for p in _PATTERNS for h in p.hints) + r"|[a-z0-9+_=-]{24,}")
# Parameter names that carry credentials (never traced, never saved). ``token`` alone or as a
# suffix (``auth_token``), not ``max_tokens``; ``key`` alone or as ``api-key``/``access_key``.
_SECRET_NAME = _Pattern(
    "name",
    r"(?i)api[-_]?key|secret|passw(?:or)?d|credential|authorization|cookie|(?:^|[-_])token$|^auth$|"
    r"^(?:(?:access|private|subscription|encryption)[-_]?)?key$|^headers$|extra_headers",
)
_MIN_ENTROPY = 4.0
_MIN_HEX_ENTROPY = 3.0


@dataclass(frozen=True)
class Finding:
    """A secret in a text: what it looks like (``kind``) and where, ``text[start:end]``."""

    kind: str
    start: int
    end: int


@functools.lru_cache(maxsize=4096)  # names repeat (parameters, environment variables) and the search is not cheap
def is_secret_name(name: str) -> bool:
    """True for a parameter name that carries credentials (``api_key``, ``auth_token``, ``headers``...)."""
    return bool(_SECRET_NAME.regex.search(name))


def entropy(text: str) -> float:
    """Shannon entropy of ``text``, in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values()) if text else 0.0


def find_secrets(text: str, *, known: Iterable[str] = (), thorough: bool = False) -> list[Finding]:
    """Where ``text`` holds a secret, in order, overlaps merged. ``known``: values that are secret
    whatever they look like. ``thorough`` also flags long random hex tokens (for values that are
    about to be stored, not for error text that quotes trace ids)."""
    found: list[Finding] = []
    for value in _known(known):
        start = text.find(value)
        while start >= 0:
            found.append(Finding("known", start, start + len(value)))
            start = text.find(value, start + len(value))
    lower = text.lower()
    if len(lower) != len(text):  # a few non-ASCII letters change length when lower-cased
        lower = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    if _ANYTHING.regex.search(lower) is None:
        return _merged(found)
    for pattern in _PATTERNS:
        matches = pattern.finditer(text, lower)
        found += [Finding(pattern.kind, m.start(pattern.group), m.end(pattern.group)) for m in matches]
    for match in _TOKEN.regex.finditer(text):
        token = match.group()
        if _mixed(token) and entropy(token) >= _MIN_ENTROPY:
            found.append(Finding("high_entropy", match.start(), match.end()))
    if thorough:
        hexes = _HEX.regex.finditer(text)
        found += [Finding("high_entropy", m.start(), m.end()) for m in hexes if entropy(m.group()) >= _MIN_HEX_ENTROPY]
    return _merged(found)


def scrub(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every secret :func:`find_secrets` sees replaced by ``[redacted]``."""
    if len(text) < MIN_KNOWN_LENGTH:  # too short to hold any (span attributes such as "exact")
        return text
    for finding in reversed(find_secrets(text, known=known)):
        text = text[: finding.start] + REDACTED + text[finding.end :]
    return text


def scrub_data(value: Any, known: Iterable[str] = ()) -> Any:
    """``value`` with every string in it (nested mappings and lists too) scrubbed; mapping values
    whose key is a credential's name become ``[redacted]``."""
    known = tuple(_known(known))
    if isinstance(value, str):
        return scrub(value, known)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_name(k) and v else scrub_data(v, known)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub_data(v, known) for v in value]
    return value


def secret_settings(value: Any, path: str = "") -> Iterator[str]:
    """Where a setting about to be saved holds a credential: a key named like one (``api_key``,
    ``extra_body.token``), or a value that looks like one (a key, a URL with userinfo or a secret
    query parameter, a random token). Yields paths such as ``params.extra_body.token``."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if is_secret_name(str(key)) and item:
                yield where
            else:
                yield from secret_settings(item, where)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from secret_settings(item, f"{path}[{i}]")
    elif isinstance(value, str) and any(_stored_secret(value, f) for f in find_secrets(value, thorough=True)):
        yield path


def secret_values(value: Any, secret: bool = False) -> list[str]:
    """The strings held under credential names in ``value`` (``api_key``, ``headers`` values...),
    at any depth: what a call knows to be secret."""
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in secret_values(v, secret or is_secret_name(str(k)))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in secret_values(v, secret)]
    return [value] if secret and isinstance(value, str) else []


def secret_env_values() -> list[str]:
    """Values of this process's credential environment variables (``OPENAI_API_KEY``, ``*_TOKEN``...)."""
    for _ in range(5):
        try:
            environ = dict(os.environ)
            break
        except (KeyError, RuntimeError):  # another thread changed the environment while it was read
            continue
    else:
        return []
    return [v for k, v in environ.items() if is_secret_name(k) and len(v) >= MIN_KNOWN_LENGTH]


def _stored_secret(text: str, finding: Finding) -> bool:
    # A conventional user name in a URL (git@, user@) is not a secret; a password or a key is.
    if finding.kind == "url_userinfo":
        userinfo = text[finding.start : finding.end]
        return ":" in userinfo or not re.fullmatch(r"[a-z][a-z._-]{0,15}", userinfo)
    return True


def _known(values: Iterable[str]) -> list[str]:
    # Longest first, so a secret that contains another is masked whole.
    if not values:
        return []
    return sorted({v for v in values if isinstance(v, str) and len(v) >= MIN_KNOWN_LENGTH}, key=len, reverse=True)


def _mixed(token: str) -> bool:
    return any(c.isupper() for c in token) and any(c.islower() for c in token) and any(c.isdigit() for c in token)


def _merged(found: list[Finding]) -> list[Finding]:
    merged: list[Finding] = []
    for finding in sorted(found, key=lambda f: (f.start, -f.end)):
        if merged and finding.start <= merged[-1].end:
            last = merged[-1]
            if finding.end > last.end:
                merged[-1] = Finding(last.kind, last.start, finding.end)
        else:
            merged.append(finding)
    return merged


# -- logs --


class SecretFilter(logging.Filter):
    """Scrubs a log record in place (message, arguments, exception and stack text); never drops it."""

    def filter(self, record: logging.LogRecord) -> bool:
        known = secret_env_values()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let logging report it as usual
            return True
        record.msg, record.args = scrub(message, known), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # Formatters print exc_text when set; without exc_info no handler formats the raw one.
            record.exc_text, record.exc_info = scrub(record.exc_text, known), None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, known)
        return True


class _ScrubbingHandler(logging.Handler):
    """Sits on the package's logger: records of its child loggers (``mlflow_lite_plugin.tracing.tracer``)
    pass its handlers before their ancestors', and a logger's own filters only see records logged
    on it. It scrubs them in place for the handlers above, and prints what Python's last-resort
    handler would have printed if no other handler is configured (its presence hides that one)."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(SecretFilter())

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level and not self._others(record):
            last.handle(record)

    def _others(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False


def install_log_filter(name: str = "mlflow_lite_plugin") -> None:
    """Scrub every record of logger ``name`` and its children (idempotent)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, SecretFilter) for f in logger.filters):
        logger.addFilter(SecretFilter())
    if not any(isinstance(h, _ScrubbingHandler) for h in logger.handlers):
        logger.addHandler(_ScrubbingHandler())


install_log_filter()
