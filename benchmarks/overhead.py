"""Overhead of ``ml.query`` versus a raw ``litellm.completion``, against a local stub LLM server.

Three measurements, printed side by side, then a summary table:

1. Per-call latency: N interleaved calls (raw LiteLLM, then ours, order alternating each round)
   against ``StubLLMServer(latency=0.05)``, timed with ``time.perf_counter``; p50/p95 and the
   ratios ours/raw. Tracing is ON for ours (the default: traces are written by a background
   thread) into a private sqlite MLflow store; the number of traces written is reported.
2. Import time of ``mlflow_lite_plugin`` in fresh interpreters (median of 5), and which heavy
   modules (litellm, mlflow, torch, faiss, sentence_transformers) the import pulls in.
3. Cold start: a new process imports (raw) ``litellm`` or (ours) ``mlflow_lite_plugin`` and gets
   one answer from the stub. The parent times Popen -> the child's ``ANSWER`` line (time to first
   answer, the target metric) and Popen -> process exit (for ours this includes writing the trace
   at interpreter exit). The children share a sqlite store whose tables were created beforehand,
   so table creation is not timed.

Nothing here needs a network or an API key. Everything MLflow writes goes to a temporary directory
that is deleted at the end. Rerun from the repository root with::

    python benchmarks/overhead.py                          # defaults: --n 200 --cold-runs 5
    python benchmarks/overhead.py --n 40 --cold-runs 2     # quick
    python benchmarks/overhead.py --profile                # + cProfile of ml.query (top 15)

The exit code is 0 whatever the numbers: this is a report, not a test.
"""

from __future__ import annotations

import os
import tempfile

# A private MLflow store, set before mlflow or mlflow_lite_plugin are imported. The working
# directory moves there too: MLflow puts default artifact locations under ./mlruns.
WORKDIR = tempfile.mkdtemp(prefix="mlflow-lite-bench-")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{WORKDIR}/bench.db"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # raw LiteLLM children: no price-map fetch
os.chdir(WORKDIR)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import mlflow_lite_plugin as ml  # noqa: E402
from mlflow_lite_plugin.core.model_names import litellm_module  # noqa: E402
from mlflow_lite_plugin.testing import StubLLMServer  # noqa: E402

EXPERIMENT = "overhead-benchmark"
API_KEY = "sk-bench"
RAW_MODEL = "openai/gpt-4o"
OUR_MODEL = "gpt-4o"
HEAVY_MODULES = ("litellm", "mlflow", "torch", "faiss", "sentence_transformers")
MUST_NOT_IMPORT = ("litellm", "torch", "faiss", "sentence_transformers")

P50_RATIO_TARGET = 1.05
IMPORT_TARGET_S = 1.5
COLD_RATIO_TARGET = 1.10

IMPORT_SNIPPET = f"""
import json, sys, time
start = time.perf_counter()
import mlflow_lite_plugin
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "modules": [m for m in {HEAVY_MODULES!r} if m in sys.modules]}}))
"""

COLD_CHILD = f"""
import sys
mode, api_base = sys.argv[1], sys.argv[2]
prompt = "Cold start: how do I reset my password?"
if mode == "raw":
    import litellm
    messages = [{{"role": "user", "content": prompt}}]
    raw = litellm.completion(
        model={RAW_MODEL!r}, messages=messages, api_base=api_base, api_key={API_KEY!r}, max_retries=0
    )
    text = raw.choices[0].message.content
else:
    import mlflow_lite_plugin as ml
    text = ml.query(model={OUR_MODEL!r}, prompt=prompt, api_base=api_base, api_key={API_KEY!r}).text
print("ANSWER", text, flush=True)
"""


# -- small helpers --


def percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile (inclusive method, interpolated)."""
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def timed(fn: Callable[[], Any]) -> float:
    """Seconds taken by ``fn()``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def header(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


@dataclass
class Row:
    metric: str
    raw: str
    ours: str
    ratio: str
    target: str
    result: str


# -- 1. per-call latency --


def raw_call(litellm: Any, api_base: str, prompt: str) -> Any:
    messages = [{"role": "user", "content": prompt}]
    return litellm.completion(model=RAW_MODEL, messages=messages, api_base=api_base, api_key=API_KEY, max_retries=0)


def our_call(api_base: str, prompt: str) -> ml.Response:
    return ml.query(model=OUR_MODEL, prompt=prompt, api_base=api_base, api_key=API_KEY)


def count_traces(experiment: str, expected: int) -> int:
    import mlflow

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return 0
    traces = mlflow.search_traces(
        locations=[found.experiment_id], return_type="list", max_results=expected + 100, include_spans=False
    )
    return len(traces)


def measure_latency(api_base: str, n: int, warmup: int, latency: float) -> list[Row]:
    header(f"1. Per-call latency: {n} interleaved calls, stub latency {latency * 1e3:.0f} ms, tracing ON")
    litellm = litellm_module()
    ml.set_experiment(EXPERIMENT)
    for i in range(warmup):
        raw_call(litellm, api_base, f"warm-up {i}")
        our_call(api_base, f"warm-up {i}")
    samples: dict[str, list[float]] = {"raw": [], "ours": []}
    for i in range(n):
        prompt = f"Question {i}: how do I reset my password?"
        calls = {
            "raw": functools.partial(raw_call, litellm, api_base, prompt),
            "ours": functools.partial(our_call, api_base, prompt),
        }
        for name in ("raw", "ours") if i % 2 == 0 else ("ours", "raw"):  # alternate who goes first
            samples[name].append(timed(calls[name]))

    stats = {name: (percentile(v, 50) * 1e3, percentile(v, 95) * 1e3) for name, v in samples.items()}
    p50_ratio = stats["ours"][0] / stats["raw"][0]
    p95_ratio = stats["ours"][1] / stats["raw"][1]
    print(f"{'':6} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'min ms':>9} {'max ms':>9}")
    for name, values in samples.items():
        ms = [v * 1e3 for v in values]
        p50, p95 = stats[name]
        print(f"{name:6} {p50:9.2f} {p95:9.2f} {statistics.mean(ms):9.2f} {min(ms):9.2f} {max(ms):9.2f}")
    print(f"ratio ours/raw: p50 {p50_ratio:.3f} (target <= {P50_RATIO_TARGET}), p95 {p95_ratio:.3f} (informational)")

    flush_s = timed(ml.flush_traces)
    expected = warmup + n
    written = count_traces(EXPERIMENT, expected)
    print(f"flush_traces() after the loop took {flush_s * 1e3:.0f} ms")
    print(f"traces in experiment {EXPERIMENT!r}: {written} (expected {expected}: {warmup} warm-up + {n} timed)")
    return [
        Row("p50 per call (ms)", f"{stats['raw'][0]:.2f}", f"{stats['ours'][0]:.2f}", f"{p50_ratio:.3f}",
            f"<= {P50_RATIO_TARGET}", verdict(p50_ratio <= P50_RATIO_TARGET)),
        Row("p95 per call (ms)", f"{stats['raw'][1]:.2f}", f"{stats['ours'][1]:.2f}", f"{p95_ratio:.3f}", "-", "info"),
        Row("traces written", "-", f"{written}/{expected}", "-", "all", verdict(written == expected)),
    ]  # fmt: skip


# -- 2. import time --


def import_once() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", IMPORT_SNIPPET], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_import(runs: int) -> list[Row]:
    header(f"2. Import time of mlflow_lite_plugin: {runs} fresh interpreters")
    results = [import_once() for _ in range(runs)]
    for i, result in enumerate(results, 1):
        print(f"run {i}: {result['seconds'] * 1e3:7.1f} ms  heavy modules imported: {result['modules'] or 'none'}")
    median = statistics.median(r["seconds"] for r in results)
    imported = {m for r in results for m in r["modules"]}
    forbidden = sorted(imported & set(MUST_NOT_IMPORT))
    fast = median <= IMPORT_TARGET_S
    mlflow_imported = "yes" if "mlflow" in imported else "no"
    print(f"median: {median * 1e3:.1f} ms (target <= {IMPORT_TARGET_S * 1e3:.0f} ms) -> {verdict(fast)}")
    extra = f" (imported: {', '.join(forbidden)})" if forbidden else ""
    print(f"imports none of {', '.join(MUST_NOT_IMPORT)}: {verdict(not forbidden)}{extra}")
    print(f"mlflow imported by `import mlflow_lite_plugin` (informational): {mlflow_imported}")
    return [
        Row("import time, median (s)", "-", f"{median:.3f}", "-", f"<= {IMPORT_TARGET_S}", verdict(fast)),
        Row("import pulls no litellm/torch/faiss/s-t", "-", ", ".join(forbidden) or "none", "-", "none",
            verdict(not forbidden)),
        Row("import pulls mlflow", "-", mlflow_imported, "-", "-", "info"),
    ]  # fmt: skip


# -- 3. cold start --


@dataclass
class ColdRun:
    first_answer: float  # Popen -> ANSWER line read
    total: float  # Popen -> process exited


def cold_env(tracking_uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def cold_run(mode: str, api_base: str, env: dict[str, str]) -> ColdRun:
    """One child process; raises if it does not print its answer."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", COLD_CHILD, mode, api_base],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        first_answer = None
        for line in child.stdout:
            if line.startswith("ANSWER"):
                first_answer = time.perf_counter() - start
                break
        child.stdout.read()  # drain whatever follows until the child exits
        code = child.wait()
        total = time.perf_counter() - start
        if first_answer is None or code != 0:
            stderr.seek(0)
            raise RuntimeError(f"cold-start child ({mode}) failed with exit code {code}:\n{stderr.read()[-3000:]}")
    return ColdRun(first_answer, total)


def count_cold_traces(tracking_uri: str) -> int:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    return len(client.search_traces(locations=["0"], max_results=1000, include_spans=False))


def measure_cold_start(api_base: str, runs: int) -> list[Row]:
    header(f"3. Cold start (new process: import + first answer), {runs} runs each, alternating")
    tracking_uri = f"sqlite:///{WORKDIR}/cold.db"
    env = cold_env(tracking_uri)
    setup_s = timed(lambda: cold_run("ours", api_base, env))  # creates the store's tables, untimed
    print(f"store prepared by one throwaway traced run ({setup_s:.2f} s, not counted)")
    raw: list[ColdRun] = []
    ours: list[ColdRun] = []
    for i in range(runs):
        order = (("raw", raw), ("ours", ours)) if i % 2 == 0 else (("ours", ours), ("raw", raw))
        for mode, results in order:
            results.append(cold_run(mode, api_base, env))
            run = results[-1]
            print(f"run {i + 1} {mode:4}: first answer {run.first_answer:6.3f} s, exit {run.total:6.3f} s", flush=True)

    first = (statistics.median(r.first_answer for r in raw), statistics.median(r.first_answer for r in ours))
    total = (statistics.median(r.total for r in raw), statistics.median(r.total for r in ours))
    first_ratio, total_ratio = first[1] / first[0], total[1] / total[0]
    print(f"median time to first answer: raw {first[0]:.3f} s, ours {first[1]:.3f} s, ratio {first_ratio:.3f} "
          f"(target <= {COLD_RATIO_TARGET}) -> {verdict(first_ratio <= COLD_RATIO_TARGET)}")
    print(f"median time to process exit: raw {total[0]:.3f} s, ours {total[1]:.3f} s, ratio {total_ratio:.3f} "
          f"(ours includes writing its trace at exit; informational)")
    written = count_cold_traces(tracking_uri)
    print(f"traces in the cold-start store: {written} (expected {runs + 1}: {runs} timed + 1 setup)")
    return [
        Row("cold start, first answer (s)", f"{first[0]:.3f}", f"{first[1]:.3f}", f"{first_ratio:.3f}",
            f"<= {COLD_RATIO_TARGET}", verdict(first_ratio <= COLD_RATIO_TARGET)),
        Row("cold start, total incl. trace flush (s)", f"{total[0]:.3f}", f"{total[1]:.3f}", f"{total_ratio:.3f}",
            "-", "info"),
    ]  # fmt: skip


# -- optional profile --


def profile_query(api_base: str, calls: int) -> None:
    header(f"Profile: cProfile of {calls} ml.query calls (top 15 by cumulative time, then ours only)")
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(calls):
        our_call(api_base, f"profile {i}")
    profiler.disable()
    ml.flush_traces()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(15)
    stats.print_stats("mlflow_lite_plugin", 15)  # where our own code spends its time
    print(out.getvalue())


# -- summary --


def print_summary(rows: list[Row]) -> None:
    header("Summary")
    columns = ("metric", "raw", "ours", "ratio ours/raw", "target", "result")
    cells = [columns, *((r.metric, r.raw, r.ours, r.ratio, r.target, r.result) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    print(line(columns))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="interleaved calls per path (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per path (default 5)")
    parser.add_argument("--latency", type=float, default=0.05, help="stub server latency in seconds (default 0.05)")
    parser.add_argument("--import-runs", type=int, default=5, help="fresh interpreters for import time (default 5)")
    parser.add_argument("--cold-runs", type=int, default=5, help="cold-start processes per path (default 5)")
    parser.add_argument("--profile", action="store_true", help="also cProfile ml.query and print the top 15")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, MLflow store in {WORKDIR}")
    started = time.perf_counter()
    try:
        with StubLLMServer(latency=args.latency) as stub:
            print(f"stub server {stub.openai_base}, latency {args.latency * 1e3:.0f} ms")
            rows = measure_latency(stub.openai_base, args.n, args.warmup, args.latency)
            rows += measure_import(args.import_runs)
            rows += measure_cold_start(stub.openai_base, args.cold_runs)
            if args.profile:
                profile_query(stub.openai_base, max(20, args.n // 4))
        print_summary(rows)
        print(f"\ntotal benchmark time: {time.perf_counter() - started:.0f} s")
    finally:
        os.chdir(tempfile.gettempdir())
        shutil.rmtree(WORKDIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
