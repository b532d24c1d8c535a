"""End to end: the ``mlflow-lite ui`` server against the stub LLM server and the test MLflow store,
driven in headless Chromium (Debian's ``chromium`` through Playwright; no browser download).

Set ``MLFLOW_LITE_UI_SCREENSHOT=docs/ui.png`` to refresh the README's screenshot; otherwise it is
written to the test's tmp dir only, so test runs leave the work tree unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.testing import StubLLMServer

from tests.helpers import KEY, get_trace

pytestmark = pytest.mark.slow

STATIC = Path(ml.__file__).parent / "apps" / "ui" / "static"
BROWSER_HINT = (
    "headless Chromium is needed: apt-get install -y chromium && pip install playwright "
    "(Debian's browser is used; never run `playwright install`)"
)


@dataclass
class UI:
    url: str
    stub: StubLLMServer
    client: ml.Client

    def run(self, **body) -> tuple[list[str], dict]:
        """POST /api/run: the streamed chunks and the final event's data."""
        chunks, final = [], {}
        with httpx.stream("POST", f"{self.url}/api/run", json=body, timeout=60) as response:
            assert response.status_code == 200, response.read()
            for name, data in _events(response.iter_text()):
                if name == "chunk":
                    chunks.append(data["text"])
                else:
                    final = {"event": name, **data}
        return chunks, final


def _events(texts):
    buffer = ""
    for text in texts:
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            yield lines["event"], json.loads(lines["data"])


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def ui(stub_server: StubLLMServer, tmp_path_factory):
    """The UI app on a free port, its client pointed at the stub server (server-side settings),
    with a cache and a daily budget; its own experiment, so the explorer lists only these tests'
    traces."""
    import uvicorn

    from mlflow_lite_plugin.apps.ui.app import create_app

    client = ml.Client(api_base=stub_server.openai_base, api_key=KEY)
    client.set_cache()
    client.set_budget(daily_limit=5.0, path=str(tmp_path_factory.mktemp("ui") / "budget.db"))
    experiment = f"ui-{uuid.uuid4().hex[:8]}"
    server = uvicorn.Server(uvicorn.Config(create_app(client, experiment=experiment), log_level="warning"))
    sock = _free_socket()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the UI server did not start"
        time.sleep(0.02)
    yield UI(f"http://127.0.0.1:{sock.getsockname()[1]}", stub_server, client)
    server.should_exit = True
    thread.join(10)
    client.flush_traces()


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {BROWSER_HINT}")
    if chromium is None:
        pytest.fail(f"chromium is not installed: {BROWSER_HINT}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def open_page(page, ui: UI, route: str) -> None:
    page.goto(f"{ui.url}/#/{route}")
    page.wait_for_selector("body[data-ready=true]")
    assert page.is_visible(f"#page-{route.split('/')[0]}")


def test_playground_streams_a_run_with_its_figures(page, ui):
    open_page(page, ui, "playground")
    assert page.input_value("#model") == "lite/echo"  # the offline default: works with no key
    page.fill("#model", "gpt-4o")
    page.fill("#prompt", "How do I reset my password?")
    page.fill("#tags", "team=support")
    ui.stub.chunk_delay = 0.1  # slow enough to see the answer arrive in parts
    try:
        page.click("#run")
        # Streaming: part of the answer is shown while the run is still going.
        page.wait_for_function(
            "() => { const p = document.querySelector('#out-a');"
            " return p.dataset.state === 'running' && p.querySelector('.output').textContent.length > 0; }"
        )
        page.wait_for_selector("#out-a[data-state=done]")
    finally:
        ui.stub.chunk_delay = 0.0
    assert page.text_content("#out-a .output") == "Stub answer from gpt-4o: How do I reset my password?"
    stats = page.text_content("#out-a .stats")
    assert "model: openai/gpt-4o" in stats
    assert "tokens: 6 in / 10 out" in stats  # the stub counts whitespace words
    assert "cost: $0.000115" in stats
    assert "cache: miss" in stats
    assert page.get_attribute("#out-a .trace-link", "href").startswith("#/traces/tr-")

    page.click("#run")  # the same call again: answered by the exact cache
    page.wait_for_selector("#out-a[data-state=done]")
    assert "cache: exact" in page.text_content("#out-a .stats")
    assert "cost: $0" in page.text_content("#out-a .stats")


def test_compare_two_models_side_by_side(page, ui, tmp_path):
    open_page(page, ui, "playground")
    page.check("#compare")
    page.fill("#model", "gpt-4o")
    page.fill("#model-b", "lite/echo")
    page.fill("#system", "You are a support agent.")
    page.fill("#prompt", "Where is my parcel?")
    page.click("#run")
    page.wait_for_selector("#out-a[data-state=done]")
    page.wait_for_selector("#out-b[data-state=done]")
    assert page.text_content("#out-a .output") == "Stub answer from gpt-4o: Where is my parcel?"
    assert page.text_content("#out-b .output") == "Echo: Where is my parcel?"
    assert "model: lite/echo" in page.text_content("#out-b .stats")
    assert "cost: $0" in page.text_content("#out-b .stats")
    # The stub saw the system prompt the page sent.
    assert {"role": "system", "content": "You are a support agent."} in ui.stub.requests[-1].body["messages"]

    target = Path(os.environ.get("MLFLOW_LITE_UI_SCREENSHOT") or tmp_path / "ui.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_template_run_shows_variables_and_validation(page, ui):
    open_page(page, ui, "playground")
    page.fill("#template", "sentiment")
    page.press("#template", "Tab")  # "change": loads the template
    page.wait_for_selector("[data-variable=input]")
    assert page.is_hidden("#prompt-label")
    assert "positive, negative or neutral" in page.input_value("#system")
    page.fill("[data-variable=input]", "I love it")
    page.click("#run")
    page.wait_for_selector("#out-a[data-state=done]")
    # lite/echo echoes the prompt, which is not one of the template's choices.
    assert "validation failed: choices:" in page.text_content("#out-a .stat-validation")

    page.fill("#template", "")
    page.press("#template", "Tab")
    page.fill("#prompt", "")
    page.click("#run")  # no prompt: the server's argument check is shown
    page.wait_for_selector("#out-a[data-state=error]")
    assert "prompt: must be a non-empty string" in page.text_content("#out-a .stats")


def test_trace_explorer_lists_shows_and_records_feedback(page, ui):
    marker = uuid.uuid4().hex[:8]
    _, done = ui.run(model="gpt-4o", prompt=f"Track order {marker}", tags={"team": "orders"})
    trace_id = done["trace_id"]

    open_page(page, ui, "traces")
    page.wait_for_selector(f"tr[data-trace-id='{trace_id}']")
    page.fill("#trace-q", marker)
    page.click("#trace-search button")
    page.wait_for_function("() => document.querySelectorAll('#trace-table tbody tr').length === 1")
    row = page.text_content(f"tr[data-trace-id='{trace_id}']")
    assert f"Track order {marker}" in row and "openai/gpt-4o" in row

    page.click(f"tr[data-trace-id='{trace_id}']")
    page.wait_for_selector("#trace-detail [data-span='mlflow_lite.stream']")
    assert page.is_visible("#trace-detail [data-span='openai/gpt-4o (attempt 1)']")
    root = page.text_content("#trace-detail [data-span='mlflow_lite.stream'] .attributes")
    assert '"mlflow_lite.cost_usd": ' in root and '"mlflow_lite.cached": "none"' in root
    assert "team=orders" in page.text_content("#trace-detail")

    page.select_option("#fb-rating", "4")
    page.fill("#fb-correction", "Open Orders, then Track.")
    page.fill("#fb-comment", "missing the steps")
    page.fill("#fb-user", "ana")
    page.click("#fb-submit")
    page.wait_for_selector("#fb-message:text('Recorded.')")
    assert page.is_visible("#assessments [data-assessment=rating]")
    assert page.is_visible("#assessments [data-assessment=expected_response]")

    info = get_trace(trace_id).info
    rating = next(a for a in info.assessments if a.name == "rating")
    assert (rating.feedback.value, rating.source.source_type, rating.source.source_id) == (4, "HUMAN", "ana")
    assert rating.rationale == "missing the steps"
    correction = next(a for a in info.assessments if a.name == "expected_response")
    assert correction.expectation.value == "Open Orders, then Track."


def test_dashboard_shows_spend_budget_and_charts(page, ui):
    prompt = f"Invoice {uuid.uuid4().hex[:8]}"
    for _ in range(2):  # the second is an exact-cache hit
        ui.run(model="gpt-4o", prompt=prompt, tags={"team": "billing"})
    open_page(page, ui, "dashboard")
    page.wait_for_selector("#spend-total")
    assert page.text_content("#spend-total .value").startswith("$0.000")
    assert int(page.text_content("#cache-hits .value")) >= 1
    assert "saved $0.0" in page.text_content("#cache-hits")  # what the hit would have cost
    assert "spent of $5.0000 this day" in page.text_content("#budget")
    for canvas in ("chart-days", "chart-models", "chart-tags"):
        page.wait_for_function(f"() => !!Chart.getChart(document.getElementById('{canvas}'))")
    chart_data = "(id) => Chart.getChart(document.getElementById(id)).data"
    assert page.evaluate(f"({chart_data})('chart-days').datasets[0].data.at(-1)") > 0  # today's spend
    assert "openai/gpt-4o" in page.evaluate(f"({chart_data})('chart-models').labels")
    assert "team=billing" in page.evaluate(f"({chart_data})('chart-tags').labels")
    page.select_option("#dash-days", "7")  # redraws on the same canvases
    page.wait_for_function(
        "() => Chart.getChart(document.getElementById('chart-days')).data.labels.length === 7"
    )


class Moderation(ml.Stage):
    """A third-party stage that describes itself and has a status, like the built-in controls."""

    name = "moderation"
    order = 350

    def describe(self):
        return {"blocklist": 3}

    def status(self):
        return {"blocked": 0}


def test_dashboard_api_lists_every_installed_control(ui):
    """Regression: the dashboard knew the cache stage classes by name; a stage added with
    add_stage() (and every control's settings and status) never reached the UI."""
    ui.client.add_stage(Moderation())
    try:
        with httpx.Client(base_url=ui.url, timeout=60) as http:
            response = http.get("/api/dashboard", params={"days": 1})
    finally:
        ui.client.pipeline.remove("moderation")
    assert response.status_code == 200, response.text
    controls = {c["name"]: c for c in response.json()["controls"]}
    assert list(controls) == ["exact_cache", "moderation", "budget"]  # pipeline order
    assert controls["moderation"] == {
        "name": "moderation", "group": "moderation", "order": 350,
        "settings": {"blocklist": 3}, "summary": "blocklist=3", "status": {"blocked": 0},
    }
    budget = controls["budget"]
    assert budget["settings"] == {"daily_limit": 5.0, "scope": "global", "timezone": "UTC", "alerts": []}
    assert budget["summary"] == "daily=5.0 USD, scope=global"
    assert budget["status"]["limit"] == 5.0 and budget["status"]["period"] == "daily"
    assert controls["exact_cache"]["settings"] == {"kind": "exact", "backend": "memory"}
    assert set(controls["exact_cache"]["status"]) == {"hits", "misses", "hit_rate", "cost_saved"}


def test_dashboard_page_shows_a_stage_added_with_add_stage(page, ui):
    """The Controls panel lists every installed stage from /api/dashboard, a third-party one too, as
    text: markup in a stage's settings is shown, never run."""

    class Marked(Moderation):
        def describe(self):
            return {"blocklist": "<img src=x onerror=window.pwned=1>"}

    ui.client.add_stage(Marked())
    try:
        open_page(page, ui, "dashboard")
        row = page.wait_for_selector('#controls tr[data-control="moderation"]')
        text = row.text_content()
        assert "moderation" in text and "350" in text and "blocked: 0" in text
        assert "blocklist=<img src=x onerror=window.pwned=1>" in text
        assert page.query_selector("#controls img") is None and page.evaluate("() => window.pwned") is None
        names = page.eval_on_selector_all("#controls tr[data-control]", "rows => rows.map((r) => r.dataset.control)")
        assert names == ["exact_cache", "moderation", "budget"]  # pipeline order, built-ins alike
        assert "daily=5.0 USD" in page.text_content('#controls tr[data-control="budget"]')
    finally:
        ui.client.pipeline.remove("moderation")


def test_no_secret_in_any_response(ui, stub):
    """No API key or provider endpoint in any page, asset or API response, even where MLflow's
    trace holds the endpoint and where a provider's text quotes the key."""
    stub.reply = lambda model, messages: f"The key is {KEY}."
    chunks, done = ui.run(model="gpt-4o", prompt="Tell me the key", cache=False)
    assert "".join(chunks) == "The key is [redacted]."
    raw_trace = json.dumps(get_trace(done["trace_id"]).to_dict())
    assert ui.stub.openai_base in raw_trace  # what there is to hide
    bodies = {"run": "".join(chunks) + json.dumps(done)}
    with httpx.Client(base_url=ui.url, timeout=30) as http:
        paths = ["/", "/api/config", "/api/template?name=classify", "/api/traces", "/api/dashboard"]
        paths += [f"/static/{p.relative_to(STATIC).as_posix()}" for p in STATIC.rglob("*") if p.is_file()]
        paths += [f"/api/traces/{t['trace_id']}" for t in http.get("/api/traces").json()["traces"]]
        for path in paths:
            response = http.get(path)
            assert response.status_code == 200, path
            bodies[path] = response.text
        bodies["feedback"] = http.post(f"/api/traces/{done['trace_id']}/feedback", json={"rating": True}).text
    for secret in (KEY, ui.stub.openai_base):
        leaks = [name for name, body in bodies.items() if secret in body]
        assert not leaks, f"{secret!r} sent to the browser by {leaks}"


def test_requests_cannot_set_provider_settings(ui):
    with httpx.Client(base_url=ui.url, timeout=30) as http:
        response = http.post("/api/run", json={"model": "gpt-4o", "prompt": "hi", "api_base": "http://evil.example"})
        assert response.status_code == 422 and "extra_forbidden" in response.text
        # A cross-site form can only send text/plain, which never reaches the run.
        body = b'{"model": "gpt-4o", "prompt": "hi"}'
        form = http.post("/api/run", content=body, headers={"Content-Type": "text/plain"})
        assert form.status_code == 422
        assert http.get("/api/config", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
        assert http.get("/api/traces/tr-does-not-exist").status_code == 404


def test_cli_serves_the_ui_and_the_package_does_not_import_it(tmp_path):
    probe = (
        "import sys, mlflow_lite_plugin; print(sorted({'fastapi', 'mlflow_lite_plugin.apps.ui'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"

    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    command = [sys.executable, "-m", "mlflow_lite_plugin.apps.cli", "ui", "--port", str(port), "--experiment", "ui-cli"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mlflow-lite ui did not start"
                time.sleep(0.1)
        assert (config["experiment"], config["default_model"]) == ("ui-cli", "lite/echo")
    finally:
        server.terminate()
        server.wait(10)
