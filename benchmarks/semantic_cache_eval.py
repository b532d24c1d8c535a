"""Semantic-cache quality: plain cosine vs cosine + verification, on labelled question pairs.

    python benchmarks/semantic_cache_eval.py            # dev set + our extra set, every encoder
    python benchmarks/semantic_cache_eval.py --encoder torch,onnx
    python benchmarks/semantic_cache_eval.py --sweep    # verified method over thresholds (dev only)

Each pair is ``{"cached": ..., "query": ..., "should_hit": bool}``. Plain cosine is reported at
ITS best thresholds (highest precision with recall >= 0.6, and best F1), chosen per data set, so
the baseline gets every advantage. The verified method runs end to end through
``SemanticCache`` (store ``cached``, look up ``query``) at its default threshold, one scope per
pair. The default threshold was tuned on the dev set only; the extra set is reported untouched.

Each encoder (``torch``, ``onnx``: what runs the model) is scored on both sets,
then a side-by-side table adds its encode speed (p50 of one sentence and of a batch of 32,
rounds interleaved across encoders so machine noise hits all alike) as a ratio to torch. An
encoder "keeps quality" when the verified cache keeps precision 1.0 and loses no hit vs torch
on both sets: only such a one may be what ``encoder="auto"`` runs.
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
from mlflow_lite_plugin.cache.encoders import AUTO, ENCODERS, TORCH, check_encoder, unavailable  # noqa: E402
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


def cosines(pairs: list[dict], encoder: str) -> np.ndarray:
    embedder = get_embedder(None, encoder)
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


def run_verified(pairs: list[dict], threshold: float, encoder: str = TORCH) -> list[tuple[bool, float, str]]:
    """(hit?, cosine of the hit, reason) through the real cache, one scope per pair."""
    cache = SemanticCache(threshold=threshold, encoder=encoder)
    out = []
    for i, pair in enumerate(pairs):
        cache.store(f"pair-{i}", pair["cached"], {"answer": i})
        hit = cache.lookup(f"pair-{i}", pair["query"])
        assert hit is None or hit.value == {"answer": i}, "a hit crossed scopes"
        out.append((hit is not None, hit.score if hit else 0.0, hit.reason if hit else ""))
    return out


def rejection_reason(pair: dict, cos: float, threshold: float, encoder: str) -> str:
    embed_words = get_embedder(None, encoder).embed_words
    return verify(pair["cached"], pair["query"], cos, threshold=threshold, embed_words=embed_words)[1]


def report(name: str, path: Path, threshold: float, encoder: str) -> Scores:
    pairs = load_pairs(path)
    labels = [bool(p["should_hit"]) for p in pairs]
    cos = cosines(pairs, encoder)
    counts = f"{len(pairs)} pairs: {sum(labels)} should hit, {len(labels) - sum(labels)} should miss"
    print(f"\n=== {name}, encoder {encoder}: {path} ({counts})")
    (t_p, s_p), (t_f, s_f) = plain_cosine_thresholds(cos, labels)
    print(f"plain cosine, max precision with recall>={MIN_RECALL} (t={t_p:.3f}): {s_p.row()}")
    print(f"plain cosine, best F1                      (t={t_f:.3f}): {s_f.row()}")
    started = time.perf_counter()
    verified = run_verified(pairs, threshold, encoder)
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
        kind = rejection_reason(pair, float(c), threshold, encoder).split(":")[0].split(" ")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    print(f"missed paraphrases (false negatives): {len(missed)} by rule {dict(sorted(reasons.items()))}")
    return s_v


def encode_speed(encoders: list[str], texts: list[str], rounds: int) -> dict[str, tuple[float, float]]:
    """p50 seconds of embedding one sentence and a batch of 32, per encoder, rounds interleaved."""
    embedders = {e: get_embedder(None, e) for e in encoders}
    one, batch = [texts[0]], texts[:32]
    times: dict[str, tuple[list[float], list[float]]] = {e: ([], []) for e in encoders}
    for e in encoders:  # warm up: first calls allocate
        embedders[e].embed(batch)
    for _ in range(rounds):
        for e in encoders:
            for sample, sink in ((one, times[e][0]), (batch, times[e][1])):
                started = time.perf_counter()
                embedders[e].embed(sample)
                sink.append(time.perf_counter() - started)
    return {e: (float(np.median(a)), float(np.median(b))) for e, (a, b) in times.items()}


def side_by_side(scores: dict[str, dict[str, Scores]], speed: dict[str, tuple[float, float]]) -> None:
    base_one, base_batch = speed[TORCH]
    print("\n=== encoders side by side (verified cache at the default threshold)")
    print("| encoder | dev P | dev R | extra P | extra R | 1 sentence p50 | vs torch | batch of 32 p50 | vs torch "
          "| keeps quality |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for encoder, by_set in scores.items():
        kept = all(s.precision == 1.0 and s.recall >= scores[TORCH][k].recall for k, s in by_set.items())
        one, batch = speed[encoder]
        dev, extra = by_set["dev"], by_set["extra"]
        print(f"| {encoder} | {dev.precision:.3f} | {dev.recall:.3f} | {extra.precision:.3f} | {extra.recall:.3f} "
              f"| {one * 1e3:.1f} ms | {one / base_one:.2f}x | {batch * 1e3:.1f} ms | {batch / base_batch:.2f}x "
              f"| {'yes' if kept else 'NO'} |")


def sweep(path: Path) -> None:
    """Verified method at several thresholds (for tuning the default: dev set only)."""
    pairs = load_pairs(path)
    labels = [bool(p["should_hit"]) for p in pairs]
    cos = cosines(pairs, TORCH)
    embed_words = get_embedder(None, TORCH).embed_words
    print(f"threshold sweep of the verified method on {path}")
    for t in np.arange(0.50, 0.951, 0.025):
        predicted = [verify(p["cached"], p["query"], float(c), threshold=float(t), embed_words=embed_words)[0]
                     for p, c in zip(pairs, cos, strict=True)]
        print(f"  t={t:.3f}: {score(predicted, labels).row()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--sweep", action="store_true", help="threshold sweep on the dev set only")
    concrete = [e for e in ENCODERS if e != AUTO]
    parser.add_argument("--encoder", default=",".join(concrete),
                        help=f"comma-separated encoders to compare (torch is always the baseline); default: all of "
                             f"{', '.join(concrete)} that are installed")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per encoder for the speed columns")
    args = parser.parse_args()
    if args.sweep:
        sweep(DEV)
        return
    asked = [check_encoder(e.strip()) for e in args.encoder.split(",") if e.strip()]
    encoders = list(dict.fromkeys([TORCH, *(e for e in asked if e != AUTO)]))
    for e in [e for e in encoders if unavailable(e)]:
        print(f"skipping {e}: {unavailable(e)}")
        encoders.remove(e)
    print(f"semantic cache eval: model all-MiniLM-L6-v2 (bundled), default threshold {args.threshold:.3f}")
    scores = {
        e: {
            "dev": report("dev set", DEV, args.threshold, e),
            "extra": report("extra set (ours, written before tuning, never tuned on)", EXTRA, args.threshold, e),
        }
        for e in encoders
    }
    texts = [p["query"] for p in load_pairs(DEV)]
    side_by_side(scores, encode_speed(encoders, texts, args.rounds))


if __name__ == "__main__":
    main()
