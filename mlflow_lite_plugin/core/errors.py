"""Exceptions raised by mlflow-lite-plugin.

Everything we raise derives from :class:`MlflowLiteError`. Bad arguments are also ``ValueError``
(or ``TypeError``) so generic handlers keep working; provider failures keep the provider's
message, status code and the MLflow trace id of the failed call.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow_lite_plugin.core.response import Response
    from mlflow_lite_plugin.tracing.tracer import TraceRef


class MlflowLiteError(Exception):
    """Base class of every error raised by mlflow-lite-plugin."""


class ArgumentError(MlflowLiteError, ValueError):
    """A bad argument, raised before any network call. ``argument`` names it."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument


def did_you_mean(name: object, known: Iterable[str], *, cutoff: float = 0.6) -> str:
    """The sentence a misspelt name's error ends with, `` Did you mean 'ttl'?``, naming the known
    name closest to it (difflib's ratio, at least ``cutoff``); "" when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=cutoff)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_number(name: str, value: Any, *, allow_zero: bool = False, unit: str = "") -> None:
    """Raise ArgumentError unless ``value`` is None or a finite real number > 0 (>= 0 with
    ``allow_zero``); booleans are not numbers here."""
    if value is None:
        return
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not real or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ArgumentError(name, f"must be a {kind} number{' of ' + unit if unit else ''}, got {value!r}")


class TracedError(MlflowLiteError):
    """An error that belongs to a traced call; ``trace_id`` is that call's MLflow trace, ``cost``
    what the failed call was billed in USD (0.0 when it failed before any answer, None when an
    answered attempt has no known price): the figure its trace and the budget's ledger hold."""

    _trace: TraceRef | None = None
    cost: float | None = 0.0

    @property
    def trace_id(self) -> str | None:
        return self._trace.trace_id if self._trace is not None else None


class ProviderError(TracedError):
    """The model provider failed. ``transient`` errors (429, 5xx, timeouts, connection) are retried."""

    transient = False

    def __init__(
        self,
        message: str,
        *,
        model: str,
        status_code: int | None = None,
        provider: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{model}: {message}")
        self.provider_message = message
        self.model = model
        self.status_code = status_code
        self.provider = provider
        self.retry_after = retry_after


class ProviderTimeoutError(ProviderError):
    transient = True


class ProviderConnectionError(ProviderError):
    transient = True


class ProviderRateLimitError(ProviderError):
    """The provider answered 429. ``retry_after`` holds its Retry-After, in seconds, if sent."""

    transient = True


class ProviderUnavailableError(ProviderError):
    """5xx from the provider."""

    transient = True


class ProviderAuthError(ProviderError):
    """401/403, or no API key at all: a missing or wrong API key. Never retried."""


class ProviderBadRequestError(ProviderError):
    """4xx other than auth and rate limits: the request itself is wrong. Never retried."""


class RequestEncodingError(ArgumentError, TracedError):
    """LiteLLM could not build or encode the request (content of the wrong type, NaN in a
    parameter...): the call's own fault, found before anything was sent, so never retried."""

    transient = False

    def __init__(self, message: str, *, model: str):
        super().__init__("request", f"{model}: {message}")
        self.model = model


class ValidationError(TracedError):
    """The answer failed validation (``on_fail="raise"``, or ``"retry"`` with every attempt spent).

    ``response`` is the answer that failed (``response.validation`` lists its errors); for a stream
    stopped early, ``read`` is how many characters of the answer arrived before it stopped and
    ``path`` the JSON path of the violation, if any.
    """

    def __init__(self, response: Response, *, read: int | None = None, path: str | None = None):
        validation = response.validation
        errors = list(getattr(validation, "errors", []) or [])
        attempts = getattr(validation, "attempts", 1)
        where = f" after {read} characters of the stream" if read is not None else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"The answer failed validation{tries}{where}: " + "; ".join(errors))
        self.response = response
        self.validation = validation
        self.errors = errors
        self.read = read
        self.path = path


def _status_class(status: int | None) -> type[ProviderError]:
    if status == 429:
        return ProviderRateLimitError
    if status in (401, 403):
        return ProviderAuthError
    if status == 408:
        return ProviderTimeoutError
    if status is not None and status >= 500:
        return ProviderUnavailableError
    if status is not None and 400 <= status < 500:
        return ProviderBadRequestError
    return ProviderError


def _retry_after(exc: BaseException) -> float | None:
    response: Any = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None  # an HTTP date: rare for LLM APIs, fall back to backoff


_CONNECTION_ERRORS = frozenset({"APIConnectionError", "ConnectError", "ConnectionRefusedError", "RemoteProtocolError"})


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def local_request_error(exc: BaseException, model: str) -> RequestEncodingError | None:
    """The error if LiteLLM failed on the request itself, before sending it, else None.

    LiteLLM wraps such failures as a connection error or a 500; what tells them apart is the root
    cause: a plain TypeError/ValueError of its own (a json encoder's "Out of range float values",
    "'int' object is not iterable" from a message transformation), with no HTTP or socket error
    anywhere in the chain."""
    if isinstance(exc, MlflowLiteError):
        return None
    causes = _causes(exc)
    root = causes[-1]
    if root is exc or type(root) not in (TypeError, ValueError):
        return None
    if any(_is_transport(e) for e in causes):
        return None
    return RequestEncodingError(f"the request could not be encoded for the provider: {root}", model=model)


def _is_transport(exc: BaseException) -> bool:
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError) or module in ("httpx", "httpcore", "aiohttp", "h11", "ssl")


def _missing_credentials(causes: list[BaseException], message: str) -> bool:
    """The OpenAI SDK (LiteLLM's client for OpenAI and compatible APIs) refuses to start a
    request without a key by raising its base ``OpenAIError``, which LiteLLM reports as a 500."""
    local = any(type(e).__name__ == "OpenAIError" and type(e).__module__ == "openai" for e in causes)
    return local and bool(_CREDENTIALS.search(message))


_CREDENTIALS = re.compile(r"api[_ ]?key|credential", re.I)


def _auth_message(message: str, model: str) -> str:
    """The provider's message, plus the environment variables LiteLLM looked for and did not find."""
    import litellm  # loaded already (a provider call just failed); errors sits below the module that loads it

    try:
        missing = litellm.validate_environment(model).get("missing_keys") or []
    except Exception:  # naming the variable is a courtesy; the error must still be raised
        missing = []
    if not missing:
        return message
    names = " or ".join(missing)
    return f"{message} (LiteLLM takes the key from api_key= or the environment variable {names}, which is not set)"


def from_provider_exception(exc: BaseException, model: str) -> ProviderError:
    """Map a LiteLLM/httpx exception to our typed error, keeping the provider's message."""
    if isinstance(exc, ProviderError):
        return exc
    # LiteLLM reports a refused connection as a 500; the SDK/httpx cause below says what it was.
    causes = _causes(exc)
    chain = [type(e).__name__ for e in causes]
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    message = getattr(exc, "message", None) or str(exc) or chain[0]
    if any("Timeout" in name for name in chain):
        cls: type[ProviderError] = ProviderTimeoutError
    elif any(name in _CONNECTION_ERRORS for name in chain):
        cls = ProviderConnectionError
    elif _missing_credentials(causes, message):
        cls, status = ProviderAuthError, 401  # what LiteLLM itself reports for other providers
    else:
        cls = _status_class(status)
    if cls is ProviderAuthError:
        message = _auth_message(message, model)
    return cls(
        message,
        model=model,
        status_code=status,
        provider=getattr(exc, "llm_provider", None),
        retry_after=_retry_after(exc),
    )
