"""The pipeline runner, driven through the public hooks (ml.Stage, client.add_stage): stage order,
each hook's place in a call, the async twin, short-circuits, and the cost a failure carries."""

from __future__ import annotations

import asyncio

import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin import StopStream  # what the README tells a stage to raise

from tests.helpers import get_trace

ECHO = "lite/echo"  # the offline model: no network, $0


class Recorder(ml.Stage):
    """Logs every hook it sees as ``(name, hook)`` into a log shared by the stages of a test."""

    def __init__(self, name: str, order: int, log: list):
        self.name, self.order, self.log = name, order, log

    def before(self, call):
        self.log.append((self.name, "before"))

    def after(self, call, response):
        self.log.append((self.name, "after"))

    def on_error(self, call, error):
        self.log.append((self.name, "on_error"))


def _client_with(*stages: ml.Stage, **defaults) -> ml.Client:
    client = ml.Client(tracing=False, **defaults)
    for stage in stages:
        client.add_stage(stage)
    return client


def test_before_runs_by_order_and_after_in_reverse_whatever_the_adding_order():
    log: list = []
    client = _client_with(Recorder("c", 230, log), Recorder("a", 210, log), Recorder("b", 220, log))
    assert client.query("hi", model=ECHO).text == "Echo: hi"
    assert log == [("a", "before"), ("b", "before"), ("c", "before"), ("c", "after"), ("b", "after"), ("a", "after")]


def test_adding_a_stage_of_the_same_name_replaces_it():
    log: list = []
    client = _client_with(Recorder("x", 210, log), Recorder("x", 220, log))
    client.query("once", model=ECHO)
    assert log == [("x", "before"), ("x", "after")]


def test_a_stage_answer_short_circuits_the_provider_and_later_stages(stub, openai_kw):
    log: list = []

    class Answers(Recorder):
        def before(self, call):
            super().before(call)
            return ml.Response(text="from the stage", model="openai/gpt-4o", usage={"prompt_tokens": 0,
                               "completion_tokens": 0, "total_tokens": 0}, cost=0.0, latency=0.0)

    client = _client_with(Recorder("early", 210, log), Answers("answers", 220, log), Recorder("late", 230, log),
                          **openai_kw)
    r = client.query("anything", model="gpt-4o")
    assert r.text == "from the stage" and stub.requests == []
    # stages after the answering one never look; every stage sees the answer (caches store it, ledgers settle)
    assert log == [("early", "before"), ("answers", "before"),
                   ("late", "after"), ("answers", "after"), ("early", "after")]


def test_a_refusal_runs_every_on_error_and_propagates_unchanged():
    log: list = []

    class Refuses(Recorder):
        def before(self, call):
            super().before(call)
            raise ml.ArgumentError("prompt", "refused by a stage")

    class BrokenCleanup(Recorder):
        def on_error(self, call, error):
            super().on_error(call, error)
            raise RuntimeError("a bug in cleanup")  # must not hide the real error

    client = _client_with(Recorder("a", 210, log), Refuses("refuses", 220, log), BrokenCleanup("c", 230, log))
    with pytest.raises(ml.ArgumentError, match="refused by a stage"):
        client.query("no", model=ECHO)
    assert log == [("a", "before"), ("refuses", "before"),
                   ("a", "on_error"), ("refuses", "on_error"), ("c", "on_error")]


def test_a_failure_after_the_answer_carries_what_was_billed(client, stub, openai_kw):
    seen: dict = {}

    class FailsAfter(ml.Stage):
        name, order = "fails_after", 210

        def after(self, call, response):
            seen["cost"] = response.cost
            raise RuntimeError("after failed")

        def on_error(self, call, error):
            seen["spent"] = call.spent

    client.add_stage(FailsAfter())
    with pytest.raises(RuntimeError, match="after failed"):
        client.query("billed", model="gpt-4o", **openai_kw)
    assert len(stub.requests) == 1 and seen["cost"] > 0
    assert seen["spent"] == pytest.approx(seen["cost"])  # the answered attempt was paid for


def test_reject_turns_a_paid_answer_into_an_error_with_its_cost_and_trace(client, stub, openai_kw):
    class Rejects(ml.Stage):
        name, order = "rejects", 210

        def reject(self, call, response):
            return ml.ValidationError(response)

    client.add_stage(Rejects())
    with pytest.raises(ml.ValidationError) as info:
        client.query("rejected", model="gpt-4o", **openai_kw)
    error = info.value
    assert error.response.text == "Stub answer from gpt-4o: rejected"
    assert error.cost == pytest.approx(error.response.cost) and error.cost > 0
    root = get_trace(error.trace_id).data.spans[0]
    assert root.status.status_code.value == "ERROR" and "ValidationError" in root.attributes["mlflow_lite.error"]


def test_reask_asks_the_provider_again_with_the_stages_followups(stub, openai_kw):
    class AsksTwice(ml.Stage):
        name, order = "asks_twice", 210

        def reask(self, call, response):
            if call.reasks:
                return False
            call.followups.append({"role": "assistant", "content": response.text})
            call.followups.append({"role": "user", "content": "say it again"})
            return True

    client = _client_with(AsksTwice(), **openai_kw)
    r = client.query("first", model="gpt-4o")
    assert len(stub.requests) == 2 and r.text == "Stub answer from gpt-4o: say it again"
    assert [m["content"] for m in stub.requests[1].body["messages"]][-2:] == ["Stub answer from gpt-4o: first",
                                                                              "say it again"]


def test_on_chunk_sees_each_chunk_and_stop_stream_ends_it_there():
    chunks: list[str] = []

    class StopsAtThird(ml.Stage):
        name, order = "stops", 210

        def on_chunk(self, call, chunk):
            chunks.append(chunk)
            if len(chunks) == 3:
                raise StopStream("enough", {"test.stopped_at": 3})

    client = _client_with(StopsAtThird())
    stream = client.stream("one two three four five six", model=ECHO)
    received = list(stream)
    assert len(received) == 2 and received == chunks[:2]  # the stopping chunk is not delivered
    assert stream.response.finish_reason == "cancelled"


def test_on_chunk_passes_every_chunk_of_a_full_stream():
    chunks: list[str] = []

    class Sees(ml.Stage):
        name, order = "sees", 210

        def on_chunk(self, call, chunk):
            chunks.append(chunk)

    client = _client_with(Sees())
    stream = client.stream("one two three", model=ECHO)
    assert "".join(stream) == "Echo: one two three" and "".join(chunks) == "Echo: one two three"
    assert len(chunks) > 1 and stream.response.finish_reason == "stop"


def test_the_async_path_awaits_abefore_and_a_plain_before_still_runs():
    log: list = []

    class Waits(ml.Stage):
        name, order = "waits", 210

        def before(self, call):
            log.append("sync before")

        async def abefore(self, call):
            await asyncio.sleep(0)
            log.append("abefore")

    client = _client_with(Waits(), Recorder("plain", 220, log))
    assert asyncio.run(client.aquery("async", model=ECHO)).text == "Echo: async"
    assert log == ["abefore", ("plain", "before"), ("plain", "after")]
    log.clear()
    client.query("sync", model=ECHO)
    assert log == ["sync before", ("plain", "before"), ("plain", "after")]
