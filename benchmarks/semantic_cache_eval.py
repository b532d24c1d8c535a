"""Semantic-cache quality: plain cosine vs cosine + verification, on labelled question pairs.

    python benchmarks/semantic_cache_eval.py            # dev set + our extra set
    python benchmarks/semantic_cache_eval.py --sweep    # verified method over thresholds (dev only)

Each pair is ``{"cached": ..., "query": ..., "should_hit": bool}``. Plain cosine is reported at
ITS best thresholds (highest precision with recall >= 0.6, and best F1), chosen per data set, so
the baseline gets every advantage. The verified method runs end to end through
``SemanticCache`` (store ``cached``, look up ``query``) at its default threshold, one scope per
pair. The default threshold was tuned on the dev set only; the extra set is reported untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlflow_lite_plugin.cache.embeddings import get_embedder  # noqa: E402
from mlflow_lite_plugin.cache.semantic import DEFAULT_THRESHOLD, SemanticCache  # noqa: E402
from mlflow_lite_plugin.cache.verify import verify  # noqa: E402

DEV = Path(os.environ.get("SEMANTIC_DEV_PAIRS", "/work/shared/data/semantic_cache_dev.jsonl"))
EXTRA = ROOT / "tests" / "data" / "semantic_extra_pairs.jsonl"
MIN_RECALL = 0.6


@dataclass
class Scores:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def row(self) -> str:
        return (
            f"P={self.precision:.3f} R={self.recall:.3f} F1={self.f1:.3f}  "
            f"(TP={self.tp} FP={self.fp} FN={self.fn} TN={self.tn})"
        )


def score(predicted: list[bool], labels: list[bool]) -> Scores:
    pairs = list(zip(predicted, labels, strict=True))
    return Scores(
        tp=sum(p and y for p, y in pairs),
        fp=sum(p and not y for p, y in pairs),
        fn=sum(not p and y for p, y in pairs),
        tn=sum(not p and not y for p, y in pairs),
    )


def load_pairs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cosines(pairs: list[dict]) -> np.ndarray:
    embedder = get_embedder(None)
    a = embedder.embed([p["cached"] for p in pairs])
    b = embedder.embed([p["query"] for p in pairs])
    return np.sum(a * b, axis=1)


def plain_cosine_thresholds(cos: np.ndarray, labels: list[bool]) -> tuple[tuple[float, Scores], tuple[float, Scores]]:
    """(threshold, scores) maximising precision s.t. recall >= 0.6, and maximising F1."""
    results = [(float(t), score([c >= t for c in cos], labels)) for t in sorted(set(cos.tolist()))]
    feasible = [r for r in results if r[1].recall >= MIN_RECALL]
    best_precision = max(feasible, key=lambda r: (r[1].precision, r[1].recall))
    best_f1 = max(results, key=lambda r: (r[1].f1, r[1].precision))
    return best_precision, best_f1


def run_verified(pairs: list[dict], threshold: float) -> list[tuple[bool, float, str]]:
    """(hit?, cosine of the hit, reason) through the real cache, one scope per pair."""
    cache = SemanticCache(threshold=threshold)
    out = []
    for i, pair in enumerate(pairs):
        cache.store(f"pair-{i}", pair["cached"], {"answer": i})
        hit = cache.lookup(f"pair-{i}", pair["query"])
        assert hit is None or hit.value == {"answer": i}, "a hit crossed scopes"
        out.append((hit is not None, hit.score if hit else 0.0, hit.reason if hit else ""))
    return out


def rejection_reason(pair: dict, cos: float, threshold: float) -> str:
    embed_words = get_embedder(None).embed_words
    return verify(pair["cached"], pair["query"], cos, threshold=threshold, embed_words=embed_words)[1]


def report(name: str, path: Path, threshold: float) -> None:
    pairs = load_pairs(path)
    labels = [bool(p["should_hit"]) for p in pairs]
    cos = cosines(pairs)
    counts = f"{len(pairs)} pairs: {sum(labels)} should hit, {len(labels) - sum(labels)} should miss"
    print(f"\n=== {name}: {path} ({counts})")
    (t_p, s_p), (t_f, s_f) = plain_cosine_thresholds(cos, labels)
    print(f"plain cosine, max precision with recall>={MIN_RECALL} (t={t_p:.3f}): {s_p.row()}")
    print(f"plain cosine, best F1                      (t={t_f:.3f}): {s_f.row()}")
    started = time.perf_counter()
    verified = run_verified(pairs, threshold)
    elapsed = time.perf_counter() - started
    s_v = score([v[0] for v in verified], labels)
    print(f"verified cache, default threshold          (t={threshold:.3f}): {s_v.row()}  [{elapsed:.1f}s]")
    false_pos = [(p, c, v) for p, c, v, y in zip(pairs, cos, verified, labels, strict=True) if v[0] and not y]
    print(f"false positives of the verified cache: {len(false_pos)}")
    for pair, c, v in false_pos:
        print(f"  FP cos={c:.3f} | {pair['cached']!r} -> {pair['query']!r} | accepted: {v[2]}")
    missed = [(p, c) for p, c, v, y in zip(pairs, cos, verified, labels, strict=True) if not v[0] and y]
    reasons: dict[str, int] = {}
    for pair, c in missed:
        kind = rejection_reason(pair, float(c), threshold).split(":")[0].split(" ")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    print(f"missed paraphrases (false negatives): {len(missed)} by rule {dict(sorted(reasons.items()))}")


def sweep(path: Path) -> None:
    """Verified method at several thresholds (for tuning the default: dev set only)."""
    pairs = load_pairs(path)
    labels = [bool(p["should_hit"]) for p in pairs]
    cos = cosines(pairs)
    embed_words = get_embedder(None).embed_words
    print(f"threshold sweep of the verified method on {path}")
    for t in np.arange(0.50, 0.951, 0.025):
        predicted = [verify(p["cached"], p["query"], float(c), threshold=float(t), embed_words=embed_words)[0]
                     for p, c in zip(pairs, cos, strict=True)]
        print(f"  t={t:.3f}: {score(predicted, labels).row()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--sweep", action="store_true", help="threshold sweep on the dev set only")
    args = parser.parse_args()
    if args.sweep:
        sweep(DEV)
        return
    print(f"semantic cache eval: model all-MiniLM-L6-v2 (bundled), default threshold {args.threshold:.3f}")
    report("dev set", DEV, args.threshold)
    report("extra set (ours, written before tuning, never tuned on)", EXTRA, args.threshold)


if __name__ == "__main__":
    main()
