"""Test helpers: a loopback LLM server for tests, benchmarks and notebooks (no API key needed)."""

from .stub_server import Fault, RecordedRequest, StubLLMServer

__all__ = ["Fault", "RecordedRequest", "StubLLMServer"]
