"""Hit/miss counters and the cost the caches saved (per client, per process)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from mlflow_lite_plugin.core.pipeline import Call
from mlflow_lite_plugin.core.response import Response


class CacheStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: dict[str, int] = defaultdict(int)
        self._misses: dict[str, int] = defaultdict(int)
        self._saved: dict[str, float] = defaultdict(float)
        self._calls_hit = 0
        self._calls_missed = 0

    def lookup(self, kind: str, hit: bool, saved_cost: float | None = None) -> None:
        """One lookup in the ``kind`` cache."""
        with self._lock:
            if hit:
                self._hits[kind] += 1
                self._saved[kind] += saved_cost or 0.0
            else:
                self._misses[kind] += 1

    def answered(self, call: Call, response: Response) -> None:
        """Count a finished call once overall, however many caches it went through."""
        if call.state.setdefault("cache_counted", False):
            return
        call.state["cache_counted"] = True
        with self._lock:
            if response.cached:
                self._calls_hit += 1
            else:
                self._calls_missed += 1

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()
            self._misses.clear()
            self._saved.clear()
            self._calls_hit = self._calls_missed = 0

    def snapshot(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``hit_rate``, ``cost_saved`` over calls, and the same per cache kind."""
        with self._lock:
            kinds = sorted(set(self._hits) | set(self._misses))
            by_kind = {k: _row(self._hits[k], self._misses[k], self._saved[k]) for k in kinds}
            overall = _row(self._calls_hit, self._calls_missed, sum(self._saved.values()))
        return {**overall, "by_kind": by_kind}


def _row(hits: int, misses: int, saved: float) -> dict[str, Any]:
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_rate": hits / total if total else 0.0, "cost_saved": saved}
