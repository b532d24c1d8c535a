"""Throughput of a served warm-cache ``mlflow_lite`` model versus a no-op pyfunc model.

Both models are served the same way, at the same time: ``mlflow models serve --env-manager
local`` with the same number of uvicorn workers. They are driven by the same concurrent HTTP load
in alternating rounds (``--rounds``; no-op, then lite, then no-op...), so that both see the machine
in the same state: ``--concurrency`` client threads, each with a keep-alive session, sending
``--requests`` single-row ``dataframe_records`` payloads in all (split over the rounds), after a
warm-up. A lite round ends when its traces are written, so trace writing never overlaps a no-op
round. The script prints requests/s of each
server, their ratio (target: the served LLM app keeps at least 0.8x of the no-op throughput, i.e.
our per-request work is small next to MLflow's own serving cost) and client-side p50/p95
latencies.

1. ``mlflow_lite``: ``ml.save_model`` with an exact cache and a semantic cache warmed from
   ``cache_data`` (20 support questions). Requests are the cached questions and one paraphrase of
   each, so every request is answered from the cache: the first time a text is seen by the
   semantic cache (a cached question matches its normalised text, a paraphrase costs an embedding
   and a FAISS search), then from the exact cache, where semantic hits are kept.
   Its ``api_base`` is a dead loopback port: a miss would fail the request, and the run stops.
   Every request is traced into the benchmark's private sqlite MLflow store, as deployed: under
   ``mlflow models serve`` the model's traces are written by an exporter child process, in
   batches (``mlflow_lite_plugin/tracing/export.py``; ``--trace-export thread`` for the in-process
   writer instead).
2. ``no-op``: a ``mlflow.pyfunc.PythonModel`` whose ``predict`` returns the input strings.

The store is fresh when the servers start (nothing has opened it), as on a first deployment: the
lite server's exporter creates its schema while the first requests come in. After the start-up
requests and after each lite round, the script waits (``--trace-wait``) until the lite server has
written one trace per request, and reports "traces written N/N" and how long its trace writing
lagged behind; a trace missing at the end exits with 1. The script reads the store only through
``tracing.store.open_store`` (under the exporter's lock), so its own reads never race the schema creation.

Nothing here needs a network or an API key. Everything is written to a temporary directory that
is deleted at the end. Run from the repository root::

    python benchmarks/serve.py                                  # --requests 800 --rounds 4 --concurrency 4
    python benchmarks/serve.py --requests 100 --rounds 2 --concurrency 2   # quick

Diagnostics (where the time goes):

    --pool questions | paraphrases   only cached questions (no embedding) or only paraphrases
    --omp-threads 1                  OMP_NUM_THREADS=1 in both servers (torch and faiss each ship
                                     their own libgomp; their spinning thread pools contend)
    --trace-sampling 0               MLFLOW_TRACE_SAMPLING_RATIO=0 in the lite server (cost of tracing)
    --trace-export thread            MLFLOW_LITE_TRACE_EXPORT=thread in the lite server (traces written
                                     by a thread of the server process, not by the exporter process)

The exit code is 0 whatever the ratio (this is a report, not a test); it is 1 if a request failed,
a server did not start or a trace was not written.
"""

from __future__ import annotations

import os
import tempfile

# A private MLflow store, set before mlflow or mlflow_lite_plugin are imported; the servers write
# their traces there too. The working directory moves there (MLflow's default ./mlruns).
WORKDIR = tempfile.mkdtemp(prefix="mlflow-lite-serve-bench-")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{WORKDIR}/bench.db"
os.chdir(WORKDIR)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402
import requests  # noqa: E402

from mlflow_lite_plugin.testing import free_port  # noqa: E402

RATIO_TARGET = 0.8
STARTUP_TIMEOUT_S = 180
PROMPT = "Answer the customer: {question}"

# (cached question, its answer, a paraphrase that the semantic cache must match)
FAQ = [
    ("How do I reset my password?", "Use the Forgot password link on the sign-in page.",
     "What's the process to reset my password?"),
    ("How do I change my email address?", "Open Settings > Account and edit the email field.",
     "How can I change the email address on my account?"),
    ("How do I cancel my subscription?", "Go to Billing and choose Cancel subscription.",
     "What is the way to cancel my subscription?"),
    ("Where can I download my invoices?", "Invoices are under Billing > Invoices.",
     "Where are my invoices available for download?"),
    ("How do I enable two-factor authentication?", "Turn it on in Settings > Security.",
     "How can I turn on two-factor authentication?"),
    ("How do I delete my account?", "Contact support from Settings > Account > Delete.",
     "What's the way to delete my account?"),
    ("How do I add a team member?", "Invite them from the Team page.",
     "How can I add a member to my team?"),
    ("What payment methods do you accept?", "Cards, PayPal and bank transfer.",
     "Which payment methods are accepted?"),
    ("How do I change my billing address?", "Edit it in Billing > Details.",
     "What's the process to change my billing address?"),
    ("How do I export my data?", "Use Settings > Data > Export.",
     "What's the process for exporting my data?"),
    ("How do I contact customer support?", "Write to support from the Help menu.",
     "How can I get in touch with customer support?"),
    ("How do I upgrade my plan?", "Choose a plan on the Billing page.",
     "What's the way to upgrade my plan?"),
    ("Can I get a refund?", "Refunds are possible within 30 days of purchase.",
     "Is it possible to get a refund?"),
    ("How do I change the language of the app?", "Pick a language in Settings > Preferences.",
     "How can I switch the app's language?"),
    ("How do I turn off email notifications?", "Unsubscribe in Settings > Notifications.",
     "How can I disable email notifications?"),
    ("Where can I find my API usage?", "See the Usage tab of the dashboard.",
     "Where is my API usage shown?"),
    ("How do I rename a project?", "Open the project settings and edit its name.",
     "What's the process to rename a project?"),
    ("How do I restore a deleted file?", "Deleted files stay in Trash for 30 days.",
     "How can I get back a deleted file?"),
    ("Is my data encrypted?", "Yes, at rest and in transit.",
     "Do you encrypt my data?"),
    ("How do I sign out of all devices?", "Use Settings > Security > Sign out everywhere.",
     "What's the way to sign out of all devices?"),
]


# -- the two models --


def save_lite_model(path: Path, dead_base: str) -> None:
    import mlflow_lite_plugin as ml

    ml.save_model(
        path,
        model="gpt-4o",
        prompt=PROMPT,
        system="You are helpful.",
        params={"api_base": dead_base},
        num_retries=0,  # a miss fails at once instead of retrying a dead port
        cache={"ttl": 3600},
        cache_data=pd.DataFrame({"question": [q for q, _, _ in FAQ], "answer": [a for _, a, _ in FAQ]}),
    )


def save_noop_model(path: Path) -> None:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
            return model_input["question"].astype(str).tolist()

    signature = ModelSignature(inputs=Schema([ColSpec("string", "question")]), outputs=Schema([ColSpec("string")]))
    mlflow.pyfunc.save_model(str(path), python_model=Echo(), signature=signature)


# -- serving --



@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path
    startup_s: float = 0.0

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def serve(name: str, model_path: Path, workers: int, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = Path(WORKDIR) / f"{name}.log"
    env = dict(os.environ, OPENAI_API_KEY="sk-bench-unused", **(extra_env or {}))
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_path), "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(name, f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name}: mlflow models serve exited with {proc.returncode}\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/ping", timeout=2).status_code == 200:
                server.startup_s = time.perf_counter() - start
                return server
        except requests.RequestException:
            pass
        time.sleep(0.25)
    stop(server)
    raise RuntimeError(f"{name}: no /ping answer within {STARTUP_TIMEOUT_S} s\n{server.log_tail()}")


def stop(server: Server) -> None:
    """SIGTERM to the server's process group (CLI + uvicorn), SIGKILL if it does not exit."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.proc.wait(wait)
            time.sleep(0.5)  # let the uvicorn child follow
            os.killpg(server.proc.pid, 0)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


# -- load --


def payload(question: str, **params: Any) -> str:
    body: dict[str, Any] = {"dataframe_records": [{"question": question}]}
    if params:
        body["params"] = params
    return json.dumps(body)


HEADERS = {"Content-Type": "application/json"}


def post(session: requests.Session, url: str, body: str) -> dict[str, Any]:
    response = session.post(f"{url}/invocations", data=body, headers=HEADERS, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:1500]}")
    return response.json()


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)  # per request kind
    errors: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def merge(self, other: LoadResult) -> LoadResult:
        kinds = {*self.latencies, *other.latencies}
        latencies = {k: self.latencies.get(k, []) + other.latencies.get(k, []) for k in kinds}
        return LoadResult(self.requests + other.requests, self.seconds + other.seconds, latencies,
                          self.errors + other.errors)

    def all_latencies(self) -> list[float]:
        return [x for values in self.latencies.values() for x in values]


def drive(server: Server, pool: list[tuple[str, str, str]], requests_per_thread: int, concurrency: int,
          warmup: int) -> LoadResult:
    """``concurrency`` threads, each sends ``requests_per_thread`` requests cycling through ``pool``
    (kind, question, expected answer) from its own offset, after ``warmup`` untimed requests each."""
    result = LoadResult(requests_per_thread * concurrency, 0.0, {kind: [] for kind, _, _ in pool})
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1, timeout=900)

    def worker(index: int) -> None:
        session = requests.Session()
        latencies: dict[str, list[float]] = {kind: [] for kind, _, _ in pool}
        try:
            for i in range(warmup):
                _, question, _ = pool[(index + i) % len(pool)]
                post(session, server.url, payload(question))
        except Exception as exc:
            with lock:
                result.errors.append(f"warm-up: {exc}")
        barrier.wait()
        for i in range(requests_per_thread):
            kind, question, expected = pool[(index * 7 + i) % len(pool)]
            start = time.perf_counter()
            try:
                answer = post(session, server.url, payload(question))["predictions"]
            except Exception as exc:
                with lock:
                    result.errors.append(str(exc))
                break
            latencies[kind].append(time.perf_counter() - start)
            if answer != [expected]:
                with lock:
                    result.errors.append(f"{question!r}: expected {[expected]!r}, got {answer!r}")
                break
        with lock:
            for kind, values in latencies.items():
                result.latencies[kind].extend(values)
        barrier.wait()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()  # everyone warmed up
    start = time.perf_counter()
    barrier.wait()  # everyone done
    result.seconds = time.perf_counter() - start
    for t in threads:
        t.join()
    return result


def check_lite_cache(server: Server) -> dict[str, int]:
    """Every question of the lite pool must be answered from the cache (asked once each, with
    ``return_details``); returns how many hits of each kind. Raises on a miss (the provider is a
    dead port, so a miss is an error anyway)."""
    kinds: dict[str, int] = {}
    with requests.Session() as session:
        for question, answer, paraphrase in FAQ:
            for text in (question, paraphrase):
                [row] = post(session, server.url, payload(text, return_details=True))["predictions"]
                if row.get("error") or row.get("text") != answer or not row.get("cached"):
                    raise RuntimeError(f"{text!r} was not answered from the cache: {row}")
                kinds[row["cached"]] = kinds.get(row["cached"], 0) + 1
    return kinds


# -- report --


def percentile(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def count_traces() -> int:
    """Traces in the benchmark store (the served model writes to MLflow's default experiment)."""
    import mlflow

    from mlflow_lite_plugin.tracing.store import open_store

    open_store(mlflow.get_tracking_uri())  # not at the same time as the exporter creates its schema
    experiment = mlflow.get_experiment_by_name("Default")
    if experiment is None:
        return 0
    return len(mlflow.search_traces(locations=[experiment.experiment_id], return_type="list",
                                    max_results=100_000, include_spans=False))


def wait_for_traces(expected: int, timeout: float) -> tuple[int, float]:
    """Poll the store until ``expected`` traces are there (or ``timeout``); (count, seconds)."""
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < timeout:
        with contextlib.suppress(Exception):  # the server may be writing: try again
            count = count_traces()
        if count >= expected:
            break
        time.sleep(1.0)
    return count, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=800, help="timed requests per client thread, over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of no-op and lite load")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per client thread")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of each server")
    parser.add_argument("--pool", choices=("mixed", "questions", "paraphrases"), default="mixed",
                        help="lite requests: the cached questions and their paraphrases (default), or one kind")
    parser.add_argument("--omp-threads", type=int, default=None,
                        help="set OMP_NUM_THREADS in both servers (default: unset, as deployed)")
    parser.add_argument("--trace-sampling", type=float, default=None,
                        help="MLFLOW_TRACE_SAMPLING_RATIO of the lite server (diagnostic; default: unset, all traced)")
    parser.add_argument("--trace-export", choices=("thread", "process"), default=None,
                        help="MLFLOW_LITE_TRACE_EXPORT of the lite server (default: unset, i.e. process when served)")
    parser.add_argument("--trace-wait", type=float, default=120.0,
                        help="seconds to wait after the load for the lite server's traces to be written")
    args = parser.parse_args()
    if args.omp_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.omp_threads)  # inherited by the servers

    dead_base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    lite_path, noop_path = Path(WORKDIR) / "lite", Path(WORKDIR) / "noop"
    print(f"Saving the models in {WORKDIR} ...", flush=True)
    save_lite_model(lite_path, dead_base)
    save_noop_model(noop_path)

    lite_pool = [("cached question", q, a) for q, a, _ in FAQ] * (args.pool != "paraphrases") + \
        [("paraphrase", p, a) for _, a, p in FAQ] * (args.pool != "questions")
    noop_pool = [("echo", q, q) for _, q, _ in lite_pool]
    pools = {"no-op pyfunc": noop_pool, "mlflow_lite": lite_pool}
    lite_env = {}
    if args.trace_sampling is not None:
        lite_env["MLFLOW_TRACE_SAMPLING_RATIO"] = str(args.trace_sampling)
    if args.trace_export is not None:
        lite_env["MLFLOW_LITE_TRACE_EXPORT"] = args.trace_export
    traced = args.trace_sampling is None
    store = Path(WORKDIR) / "bench.db"
    if store.exists():
        raise RuntimeError(f"{store} exists: the benchmark starts on a fresh store")
    servers: dict[str, Server] = {}
    results: dict[str, LoadResult] = {}
    traces: tuple[int, int, float] | None = None  # (written, expected, seconds waited after the last round)
    try:
        for name, path, env in (("no-op pyfunc", noop_path, {}), ("mlflow_lite", lite_path, lite_env)):
            print(f"\n=== {name}: mlflow models serve --env-manager local --workers {args.workers} ===", flush=True)
            servers[name] = server = serve(name, path, args.workers, env)
            print(f"up in {server.startup_s:.1f} s; warming up ...", flush=True)
            first = time.perf_counter()
            post(requests.Session(), server.url, payload(pools[name][-1][1]))  # loads the embedding model
            print(f"first request: {ms(time.perf_counter() - first)} ms", flush=True)
        kinds = check_lite_cache(servers["mlflow_lite"])
        print(f"cache check: all {sum(kinds.values())} pool questions are cache hits, by kind: {kinds}", flush=True)
        sent = 1 + sum(kinds.values())  # lite requests so far, one trace each
        if traced:
            written, waited = wait_for_traces(sent, args.trace_wait)
            traces = (written, sent, waited)
            print(f"start-up on a fresh store: traces written {written}/{sent}, {waited:.1f} s after the requests",
                  flush=True)
        # Rounds alternate the servers, so both see the same machine; a lite round ends when its
        # traces are written, so its exporter never runs during a no-op round.
        per_thread = max(1, args.requests // args.rounds)
        for round_number in range(1, args.rounds + 1):
            line = []
            for name in ("no-op pyfunc", "mlflow_lite"):
                result = drive(servers[name], pools[name], per_thread, args.concurrency, args.warmup)
                if result.errors:
                    server = servers[name]
                    print(f"{name}: {len(result.errors)} request(s) failed, first: {result.errors[0]}\n"
                          f"{server.log_tail()}", file=sys.stderr)
                    return 1
                results[name] = results[name].merge(result) if name in results else result
                line.append(f"{name} {result.rps:.1f} req/s")
                if name == "mlflow_lite":
                    sent += result.requests + args.warmup * args.concurrency
                    if traced:
                        written, waited = wait_for_traces(sent, args.trace_wait)
                        traces = (written, sent, waited)
                        line.append(f"traces written {written}/{sent}, {waited:.1f} s after the round")
            print(f"round {round_number}: " + "; ".join(line), flush=True)
    finally:
        for server in servers.values():
            stop(server)

    noop, lite = results["no-op pyfunc"], results["mlflow_lite"]
    ratio = lite.rps / noop.rps
    rows = [
        ("no-op pyfunc", "all", noop.rps, noop.all_latencies()),
        ("mlflow_lite", "all", lite.rps, lite.all_latencies()),
    ]
    if len(lite.latencies) > 1:
        rows += [("mlflow_lite", kind[:13], None, values) for kind, values in lite.latencies.items()]
    omp = f", OMP_NUM_THREADS={args.omp_threads}" if args.omp_threads is not None else ""
    if args.pool != "mixed":
        omp += f", lite pool: {args.pool} only"
    if args.trace_sampling is not None:
        omp += f", lite MLFLOW_TRACE_SAMPLING_RATIO={args.trace_sampling}"
    if args.trace_export is not None:
        omp += f", lite MLFLOW_LITE_TRACE_EXPORT={args.trace_export}"
    print(f"\n=== Summary: {args.rounds} rounds x {args.concurrency} client threads x {per_thread} requests, "
          f"{args.workers} uvicorn worker(s), {os.cpu_count()} CPUs{omp} ===")
    print(f"{'server':<14} {'requests':<13} {'req/s':>8} {'n':>6} {'p50 ms':>8} {'p95 ms':>8}")
    for server_name, kind, rps, values in rows:
        rps_text = f"{rps:.1f}" if rps is not None else ""
        print(f"{server_name:<14} {kind:<13} {rps_text:>8} {len(values):>6} "
              f"{ms(percentile(values, 50)):>8} {ms(percentile(values, 95)):>8}")
    verdict = "PASS" if ratio >= RATIO_TARGET else "FAIL"
    print(f"\nthroughput ratio mlflow_lite / no-op: {ratio:.2f}x (target >= {RATIO_TARGET}x): {verdict}")
    if traces is not None:
        written, expected, waited = traces
        state = "all written" if written >= expected else f"gave up after {args.trace_wait:.0f} s: TRACES LOST"
        print(f"mlflow_lite traces written {written}/{expected} (every request, from a fresh store), "
              f"{waited:.1f} s after the last round ({state})")
        if written < expected:
            return 1
    return 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        os.chdir(tempfile.gettempdir())
        shutil.rmtree(WORKDIR, ignore_errors=True)
    sys.exit(code)
