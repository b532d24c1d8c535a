"""Test helpers: a loopback LLM server for tests, benchmarks and notebooks (no API key needed)."""

import socket

from mlflow_lite_plugin.testing.stub_server import Fault, RecordedRequest, StubLLMServer


def free_port() -> int:
    """A TCP port free on loopback right now (for servers the tests and benchmarks start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


__all__ = ["Fault", "RecordedRequest", "StubLLMServer", "free_port"]
