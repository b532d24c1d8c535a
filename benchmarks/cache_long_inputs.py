"""How the semantic cache's text work grows with the question: ``normalize`` and ``verify``.

For question lengths from 500 to 8,000 characters (random words, a tenth of them capitalised), it
times ``normalize`` on one question and ``verify`` on two unrelated ones (the worst case for the
affix and name checks: nothing in common), median of ``--repeat`` runs, and prints the time per
character, which stays flat when the work is linear. The semantic cache itself never sees more
than ``MAX_QUERY_CHARS`` (2,000): longer questions skip it. No model is loaded.

    python benchmarks/cache_long_inputs.py              # defaults: --repeat 5
    python benchmarks/cache_long_inputs.py --repeat 1   # quick

The exit code is 0 whatever the numbers: this is a report, not a test.

Measured on the 2-core development machine under load (--repeat 1 for the old code), verify ms:

    chars   before (45925ef)   after
     2000            5,771       175
     4000           20,619       379
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import string
import time

from mlflow_lite_plugin.cache.semantic import MAX_QUERY_CHARS
from mlflow_lite_plugin.cache.verify import normalize, verify


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
        words.append(word.capitalize() if rng.random() < 0.1 else word)
        size += len(word) + 1
    return " ".join(words)


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    print(f"semantic cache limit: {MAX_QUERY_CHARS} characters")
    print(f"{'chars':>6} {'normalize ms':>13} {'us/char':>8} {'verify ms':>10} {'us/char':>8}")
    for chars in (500, 1000, 2000, 4000, 8000):
        a, b = _text(rng, chars), _text(rng, chars)
        t_norm = _median_seconds(functools.partial(normalize, a), args.repeat)
        t_verify = _median_seconds(functools.partial(verify, a, b, 0.99, threshold=0.7), args.repeat)
        print(
            f"{chars:>6} {t_norm * 1e3:>13.2f} {t_norm / chars * 1e6:>8.2f} "
            f"{t_verify * 1e3:>10.2f} {t_verify / chars * 1e6:>8.2f}"
        )


if __name__ == "__main__":
    main()
