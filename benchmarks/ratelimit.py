"""Rate limiter: the window guarantee and the achieved rate under saturation, and its overhead.

1. Saturation: ``--threads`` threads call the offline model as fast as they can for
   ``--duration`` seconds through ``set_rate_limit(requests_per_minute=--rpm)``. Prints the most
   calls admitted in any 60 s window (must be <= the limit) and the achieved rate after the first
   window's burst (target: within 10% of the limit).
2. Overhead: ``ml.query`` on the offline model with and without a limiter that never makes it wait,
   interleaved; prints p50 per call and the difference.

Rerun from the repository root (no network, no API key)::

    python benchmarks/ratelimit.py                    # 75 s of saturation at 120 rpm
    python benchmarks/ratelimit.py --duration 20 --rpm 600
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import mlflow_lite_plugin as ml

WINDOW = 60.0


class Admissions(ml.Stage):
    name, order = "admissions", 460  # right after the rate limiter

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    def before(self, call: ml.Call) -> None:
        with self.lock:
            self.times.append(time.monotonic())


def saturate(rpm: float, threads: int, duration: float) -> None:
    client = ml.Client(model="lite/echo", tracing=False)
    client.set_rate_limit(requests_per_minute=rpm)
    admissions = Admissions()
    client.add_stage(admissions)
    stop = time.monotonic() + duration

    def worker() -> None:
        while time.monotonic() < stop:
            client.query("saturate")

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(duration + WINDOW)
    times = sorted(admissions.times)
    busiest = max(sum(1 for t in times if s <= t < s + WINDOW) for s in times)
    steady = (len(times) - 1) / (times[-1] - times[0]) * 60
    print(f"saturation: {threads} threads for {duration:.0f} s against {rpm:g} requests/min")
    print(f"  admitted {len(times)} calls; most in any {WINDOW:.0f} s window: {busiest} (limit {rpm:g}) "
          f"-> {'PASS' if busiest <= rpm else 'FAIL'}")
    print(f"  achieved rate: {steady:.1f}/min ({steady / rpm:.3f} of the limit, "
          f"target within 10%) -> {'PASS' if abs(steady / rpm - 1) <= 0.10 else 'FAIL'}")


def overhead(n: int) -> None:
    plain = ml.Client(model="lite/echo", tracing=False)
    limited = ml.Client(model="lite/echo", tracing=False)
    limited.set_rate_limit(requests_per_minute=10**9)  # never waits: pure bookkeeping cost
    for c in (plain, limited):
        c.query("warm up")
    samples: dict[str, list[float]] = {"without limiter": [], "with limiter": []}
    for i in range(n):
        for name, client in (("without limiter", plain), ("with limiter", limited))[:: 1 if i % 2 else -1]:
            start = time.perf_counter()
            client.query(f"overhead {i}")
            samples[name].append(time.perf_counter() - start)
    p50 = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    print(f"overhead: {n} interleaved calls each on the offline model")
    for name, value in p50.items():
        print(f"  p50 {name:<16} {value:.3f} ms")
    print(f"  limiter cost per call (p50 difference): {p50['with limiter'] - p50['without limiter']:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rpm", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--duration", type=float, default=75.0, help="seconds of saturation (> 60 to see full windows)")
    parser.add_argument("--n", type=int, default=300, help="calls per path for the overhead measurement")
    args = parser.parse_args()
    overhead(args.n)
    saturate(args.rpm, args.threads, args.duration)


if __name__ == "__main__":
    main()
