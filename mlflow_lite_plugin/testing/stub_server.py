"""A loopback HTTP server that speaks the OpenAI, Anthropic and Ollama chat wire formats.

Tests (and the benchmark, and the quickstart notebook) point LiteLLM at it, so LiteLLM's real HTTP
code runs with no API key and no internet::

    with StubLLMServer(latency=0.05) as stub:
        ml.query(model="openai/gpt-4o", prompt="hi", api_base=stub.openai_base, api_key="sk-stub")
        stub.inject(status=429, retry_after=1)           # the next request gets a 429
        stub.inject(delay=5, times=2)                     # the next two are slow
        stub.inject(status=500, every=2, times=10)        # every other request fails, 10 times

Answers are deterministic: ``"Stub answer from <model>: <last user message>"``; token counts are
whitespace words (or ``tokenizer``'s), so tests can check the usage LiteLLM reports. Every request
is recorded.

It bills exactly what it returns, like a provider: ``n`` choices (OpenAI) are ``n`` answers whose
tokens add up in ``usage.completion_tokens``; ``max_tokens`` / ``max_completion_tokens`` (OpenAI,
Anthropic) and ``options.num_predict`` (Ollama) cut each answer (``finish_reason="length"``). Every
answer is appended to ``bills`` (a :class:`Bill`): a stream with the text it wrote, also when it
broke after some text or after the end of its answer (one that broke before is not billed);
errors are not billed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[str, list[dict[str, Any]]], str]
# Tokens of a message list (the prompt) or of a text (an answer).
Tokenizer = Callable[[Any], int]


def default_reply(model: str, messages: list[dict[str, Any]]) -> str:
    user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return f"Stub answer from {model}: {_text(user.get('content'))}"


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


# What the stub charges per image part (OpenAI's low-detail price), so usage includes images.
IMAGE_TOKENS = 85


def _images(content: Any) -> int:
    """Image parts in OpenAI (image_url) or Anthropic (image) format."""
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") in ("image_url", "image"))


def count_words(text: str) -> int:
    return len(text.split())


def _word_tokens(value: Any) -> int:
    """The default tokenizer: whitespace words, plus IMAGE_TOKENS per image part of a prompt."""
    if isinstance(value, str):
        return count_words(value)
    words = sum(count_words(_text(m.get("content"))) for m in value)
    return words + IMAGE_TOKENS * sum(_images(m.get("content")) for m in value)


@dataclass(frozen=True)
class Bill:
    """What one answered request was charged, in tokens (``model`` as the request named it)."""

    model: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Fault:
    """What to do to the next ``times`` matching requests instead of answering normally."""

    status: int | None = None  # answer with this HTTP error status
    retry_after: float | None = None  # Retry-After header (with 429/503)
    delay: float = 0.0  # wait this long first (a slow provider; makes client timeouts fire)
    break_stream_after: int | None = None  # streams: drop the connection after N chunks
    times: int = 1  # how many requests it hits before it is used up
    model: str | None = None  # only requests for this model
    every: int = 1  # hit every n-th matching request (2: every other call), the rest pass
    _seen: int = 0


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]  # names lower-cased
    at: float


class StubLLMServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        reply: Reply = default_reply,
        tokenizer: Tokenizer | None = None,
    ):
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.reply = reply
        self.tokenizer: Tokenizer = tokenizer or _word_tokens
        self.requests: list[RecordedRequest] = []
        self.bills: list[Bill] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests served at once (concurrency tests)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler_class(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> StubLLMServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StubLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base(self) -> str:
        return f"{self.url}/v1"

    # -- test controls --

    def inject(self, **fault: Any) -> None:
        """Queue a :class:`Fault` (keywords as its fields) for the next matching requests."""
        with self._lock:
            self._faults.append(Fault(**fault))

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.bills.clear()
            self.max_in_flight = 0

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def _take_fault(self, model: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.model in (None, model):
                    fault._seen += 1
                    if fault._seen % fault.every:
                        return None  # this request passes; the next one is hit
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _bill(self, model: str, prompt_tokens: int, answers: list[str]) -> None:
        """Charge an answer: the prompt and the text of every choice."""
        completion = sum(self.tokenizer(text) for text in answers)
        with self._lock:
            self.bills.append(Bill(model, prompt_tokens, completion))

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest word prefix of ``text`` within ``max_tokens`` (by ``tokenizer``)."""
        if self.tokenizer(text) <= max_tokens:
            return text
        pieces = list(_pieces(text))
        kept = ""
        for piece in pieces:
            if self.tokenizer(kept + piece) > max_tokens:
                break
            kept += piece
        return kept

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _handler_class(stub: StubLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real APIs (fair latency measurements)
        # Headers and body go out in separate sends: without TCP_NODELAY, Nagle's algorithm holds
        # the body for the client's delayed ACK, adding ~40 ms to every response.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            if self.path.endswith("/models"):
                self._json(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
            elif self.path.endswith("/api/tags"):
                self._json(200, {"models": []})
            else:
                self._json(200, {"status": "ok"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._json(400, {"error": {"message": "stub: body is not JSON", "type": "invalid_request_error"}})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            stub._record(RecordedRequest("POST", self.path, body, headers, time.time()))
            if self.path.endswith("/api/show"):
                self._json(200, {"model_info": {}, "details": {}, "template": "", "capabilities": ["completion"]})
                return
            stub._enter()
            try:
                self._serve(body)
            finally:
                stub._leave()

        def _serve(self, body: dict[str, Any]) -> None:
            model = str(body.get("model", ""))
            fault = stub._take_fault(model)
            delay = stub.latency + (fault.delay if fault else 0.0)
            if delay:
                time.sleep(delay)
            if fault and fault.status:
                self._error(fault)
                return
            route = self._route()
            if route is None:
                self._json(404, {"error": {"message": f"stub: no route {self.path}", "type": "not_found"}})
                return
            route(body, fault)

        def _route(self) -> Callable[[dict[str, Any], Fault | None], None] | None:
            path = self.path.split("?")[0]
            if path.endswith("/chat/completions"):
                return self._openai
            if path.endswith("/messages"):
                return self._anthropic
            if path.endswith(("/api/chat", "/api/generate")):
                return self._ollama
            return None

        # -- wire formats --

        def _answer(self, body: dict[str, Any]) -> tuple[str, str, int, int, str]:
            """Model, answer (cut to the output limit), prompt and completion tokens, finish reason."""
            model = str(body.get("model", "stub"))
            messages = list(body.get("messages") or [])
            if "prompt" in body:  # ollama /api/generate
                messages.append({"role": "user", "content": body["prompt"]})
            if body.get("system"):  # anthropic keeps the system prompt apart
                system = body["system"]
                messages.insert(0, {"role": "system", "content": system if isinstance(system, str) else ""})
            text = stub.reply(model, messages)
            finish = "stop"
            limit = _output_limit(body)
            if limit is not None and stub.tokenizer(text) > limit:
                text, finish = stub.truncate(text, limit).rstrip(" "), "length"
            return model, text, stub.tokenizer(messages), stub.tokenizer(text), finish

        def _openai(self, body: dict[str, Any], fault: Fault | None) -> None:
            model, text, prompt_tokens, one_answer, finish = self._answer(body)
            requested = body.get("n")
            n = requested if isinstance(requested, int) and requested > 1 else 1
            completion_tokens = n * one_answer  # every choice is billed
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            ident, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
            if not body.get("stream"):
                message = {"role": "assistant", "content": text}
                choices = [{"index": i, "message": message, "finish_reason": finish} for i in range(n)]
                stub._bill(model, prompt_tokens, [text] * n)
                self._json(
                    200,
                    {
                        "id": ident,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "choices": choices,
                        "usage": usage,
                    },
                )
                return

            def chunk(delta: dict[str, Any], reason: str | None, index: int = 0) -> dict[str, Any]:
                return {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": index, "delta": delta, "finish_reason": reason}],
                }

            def events() -> Iterator[tuple[str, int, str | None]]:
                for i in range(n):
                    yield _sse(chunk({"role": "assistant", "content": ""}, None, i)), i, ""
                for piece in _pieces(text):
                    for i in range(n):
                        yield _sse(chunk({"content": piece}, None, i)), i, piece
                for i in range(n):
                    yield _sse(chunk({}, finish, i)), i, None
                if (body.get("stream_options") or {}).get("include_usage"):
                    final = chunk({}, None)
                    final["choices"], final["usage"] = [], usage
                    yield _sse(final), 0, ""
                yield "data: [DONE]\n\n", 0, ""

            self._stream("text/event-stream", events(), fault, model, prompt_tokens, n)

        def _anthropic(self, body: dict[str, Any], fault: Fault | None) -> None:
            model, text, prompt_tokens, completion_tokens, finish = self._answer(body)
            ident = f"msg_{uuid.uuid4().hex[:12]}"
            stop_reason = "max_tokens" if finish == "length" else "end_turn"
            if not body.get("stream"):
                stub._bill(model, prompt_tokens, [text])
                self._json(
                    200,
                    {
                        "id": ident,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": stop_reason,
                        "stop_sequence": None,
                        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
                    },
                )
                return

            def events() -> Iterator[tuple[str, int, str | None]]:
                start: dict[str, Any] = {"id": ident, "type": "message", "role": "assistant", "model": model}
                start["content"], start["stop_reason"] = [], None
                start["usage"] = {"input_tokens": prompt_tokens, "output_tokens": 1}
                yield _sse({"type": "message_start", "message": start}, "message_start"), 0, ""
                block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
                yield _sse(block, "content_block_start"), 0, ""
                for piece in _pieces(text):
                    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
                    yield _sse(delta, "content_block_delta"), 0, piece
                yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"), 0, ""
                end = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}}
                end["usage"] = {"output_tokens": completion_tokens}
                yield _sse(end, "message_delta"), 0, None
                yield _sse({"type": "message_stop"}, "message_stop"), 0, ""

            self._stream("text/event-stream", events(), fault, model, prompt_tokens)

        def _ollama(self, body: dict[str, Any], fault: Fault | None) -> None:
            model, text, prompt_tokens, completion_tokens, finish = self._answer(body)
            chat = self.path.endswith("/api/chat")
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

            def line(piece: str, done: bool) -> dict[str, Any]:
                out: dict[str, Any] = {"model": model, "created_at": created, "done": done}
                if chat:
                    out["message"] = {"role": "assistant", "content": piece}
                else:
                    out["response"] = piece
                if done:
                    out.update(done_reason=finish, prompt_eval_count=prompt_tokens, eval_count=completion_tokens)
                return out

            if body.get("stream") is False:
                stub._bill(model, prompt_tokens, [text])
                self._json(200, line(text, True))
                return

            def lines() -> Iterator[tuple[str, int, str | None]]:
                for piece in _pieces(text):
                    yield json.dumps(line(piece, False)) + "\n", 0, piece
                yield json.dumps(line("", True)) + "\n", 0, None

            self._stream("application/x-ndjson", lines(), fault, model, prompt_tokens)

        # -- transport --

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, fault: Fault) -> None:
            status = int(fault.status or 500)
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            kind = {429: "rate_limit_error", 401: "authentication_error"}.get(status, "server_error")
            message = f"stub: injected {status}"
            self._json(status, {"error": {"message": message, "type": kind, "code": str(status)}}, headers)

        def _stream(
            self,
            content_type: str,
            parts: Iterator[tuple[str, int, str | None]],
            fault: Fault | None,
            model: str,
            prompt_tokens: int,
            choices: int = 1,
        ) -> None:
            """Send (wire text, choice index, answer text) parts, the text None for the part that
            ends an answer; bill the answer text written, if any or if the answer ended."""
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")  # the body ends when the connection does
            self.end_headers()
            self.close_connection = True
            written, ended = [""] * choices, False
            try:
                for n, (part, index, text) in enumerate(parts):
                    if fault and fault.break_stream_after is not None and n >= fault.break_stream_after:
                        return  # drop the connection mid-stream
                    self.wfile.write(part.encode())
                    self.wfile.flush()
                    written[index] += text or ""
                    ended = ended or text is None
                    if stub.chunk_delay:
                        time.sleep(stub.chunk_delay)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: fine, that is what early-close tests do
            finally:
                if ended or any(written):
                    stub._bill(model, prompt_tokens, written)

    return Handler


def _output_limit(body: dict[str, Any]) -> int | None:
    """The request's cap on answer tokens: OpenAI/Anthropic ``max_tokens`` or
    ``max_completion_tokens``, Ollama ``options.num_predict``; None when uncapped."""
    options = body.get("options")
    if not isinstance(options, dict):
        options = {}
    for value in (body.get("max_tokens"), body.get("max_completion_tokens"), options.get("num_predict")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _pieces(text: str) -> Iterator[str]:
    words = text.split(" ")
    for i, word in enumerate(words):
        yield word if i == len(words) - 1 else word + " "


def _sse(payload: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n"
