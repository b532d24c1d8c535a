"""Stages plug into the pipeline; the package imports fast; the CLI works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.apps.cli import main

from tests.helpers import KEY, get_trace


class CannedAnswer(ml.Stage):
    """A stage that answers prompts it knows without calling the provider (like a cache)."""

    name = "canned"
    order = 300

    def __init__(self) -> None:
        self.seen_after: list[str | None] = []

    def before(self, call: ml.Call) -> ml.Response | None:
        if call.request.prompt_text == "known question":
            return ml.Response(text="canned answer", model=call.models[0].name, usage={}, cost=0.0, latency=0.0,
                               cached="canned", provider=call.models[0].provider)
        return None

    def after(self, call: ml.Call, response: ml.Response) -> None:
        self.seen_after.append(response.cached)


class Refuser(ml.Stage):
    name = "refuser"
    order = 100

    def __init__(self) -> None:
        self.released = 0

    def before(self, call: ml.Call) -> None:
        call.state["refuser"] = "reserved"
        if "forbidden" in call.request.prompt_text:
            raise ml.MlflowLiteError("refused by policy")

    def on_error(self, call: ml.Call, error: BaseException) -> None:
        if call.state.get("refuser") == "reserved":
            self.released += 1


def test_a_stage_can_answer_without_the_provider(client, stub, openai_kw):
    canned = CannedAnswer()
    client.add_stage(canned)
    hit = client.query(model="gpt-4o", prompt="known question", **openai_kw)
    miss = client.query(model="gpt-4o", prompt="other question", **openai_kw)
    assert hit.text == "canned answer" and hit.cached == "canned"
    assert miss.cached is None and miss.text.startswith("Stub answer")
    assert len(stub.requests) == 1  # only the miss reached the provider
    assert canned.seen_after == ["canned", None]  # after-hooks see every answer
    root = get_trace(hit.trace_id).data.spans
    assert len(root) == 1 and root[0].attributes["mlflow_lite.cached"] == "canned"
    # cached answers stream too, replayed as chunks
    assert list(client.stream(model="gpt-4o", prompt="known question", **openai_kw)) == ["canned ", "answer"]


def test_a_stage_can_refuse_and_clean_up(client, stub, openai_kw):
    refuser = Refuser()
    client.add_stage(refuser)
    client.add_stage(CannedAnswer())
    assert [s.name for s in client.pipeline.stages] == ["refuser", "canned", "validation", "metrics"]  # by ``order``
    with pytest.raises(ml.MlflowLiteError, match="refused by policy"):
        client.query(model="gpt-4o", prompt="forbidden thing", **openai_kw)
    stub.inject(status=500)
    with pytest.raises(ml.ProviderError):
        client.query(model="gpt-4o", prompt="allowed but provider fails", num_retries=0, **openai_kw)
    assert refuser.released == 2
    assert len(stub.requests) == 1


def test_import_is_light():
    code = (
        "import sys, time; t = time.perf_counter(); import mlflow_lite_plugin; "
        "print(time.perf_counter() - t); "
        "print([m for m in ('litellm', 'mlflow', 'torch', 'faiss', 'sentence_transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "[]"  # none of the heavy dependencies
    assert float(out[0]) < 1.5


def test_import_keeps_users_litellm_setting():
    code = "import os; import mlflow_lite_plugin; print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "False"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


def test_cli_cost():
    result = CliRunner().invoke(main, ["cost", "-m", "gpt-4o", "Your long prompt here..."])
    assert result.exit_code == 0, result.output
    assert "5 tokens" in result.output and "openai/gpt-4o" in result.output and "$0.0000125" in result.output


def test_cli_query_streams_answer_to_stdout_stats_to_stderr(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    result = CliRunner().invoke(main, ["query", "-m", "gpt-4o", "--api-base", stub.openai_base, "Hello CLI"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Stub answer from gpt-4o: Hello CLI\n"
    assert "tokens: 2 in / 6 out" in result.stderr and "trace: tr-" in result.stderr


def test_cli_query_error_exit_code(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub.inject(status=401)
    result = CliRunner().invoke(main, ["query", "-m", "gpt-4o", "--api-base", stub.openai_base, "x"])
    assert result.exit_code == 1
    assert "stub: injected 401" in result.stderr and "trace: tr-" in result.stderr


@pytest.mark.slow
def test_cli_demo_runs_offline(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'demo.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow_lite_plugin.apps.cli", "demo"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("ml.query", "Echo: How do I reset my password?", "ml.stream", "20/20 answered", "mlflow ui"):
        assert expected in out
    trace_ids = [w for w in out.split() if w.startswith("tr-")]
    assert trace_ids
    check = (
        "import mlflow, sys; t = mlflow.get_trace(sys.argv[1]); "
        "print(json.dumps([s.name for s in t.data.spans]))"
    )
    names = subprocess.run([sys.executable, "-c", "import json; " + check, trace_ids[0]],
                           capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(names) == ["mlflow_lite.query", "lite/echo (attempt 1)"]
