"""The vectors of every scope of a semantic cache, searched for neighbours above a cosine.

Each scope has its own arrays, so another scope can never be returned nor crowd this one out of
the top k, and a lookup costs nothing for the other scopes' entries. Vectors are L2-normalised
(inner product is cosine). A small scope is scanned exactly. Past ``EXACT_UP_TO`` entries a lookup
first filters on 256-bit sign sketches (random-hyperplane LSH, 32 bytes a vector, 48x less memory
to read than the vectors) and then scores only the survivors exactly. Two vectors at angle a
disagree on each sketch bit with probability a/pi, so the Hamming radius is set
``SKETCH_MARGIN`` standard deviations above the expected distance at the threshold: a neighbour
above the threshold is dropped by the filter with probability < 1e-4 whatever the data
(``tests/cache/test_semantic_index.py`` measures recall on random and clustered data).

Why not HNSW or IVF (measured on the shared 2-core machine, 384-d vectors, one thread): faiss
``IndexHNSWFlat`` (M=16) takes ~60 s to build at 100k (every load of a saved cache, and every
compaction) and at efSearch 128 finds only 0.96 of the above-threshold neighbours in 30k random
vectors; ``IndexIVFFlat`` finds 0.94 at 100k random with nprobe 64 of 512 lists (6 ms). Both are
near-perfect on clustered data. The sketch filter is linear but reads 3.2 MB at 100k (faiss's C++ popcount: ~0.3-0.7 ms
with the exact scores of its survivors), needs no training, no rebuild and no tombstones: removal
moves the scope's last row into the hole (O(1)).

Not thread-safe: :class:`~mlflow_lite_plugin.cache.semantic.SemanticCache` calls it under its own
lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

#: Entries in a scope up to which a lookup scans the vectors exactly (measured: below ~1k the
#: exact scan costs less than sketching the query and filtering).
EXACT_UP_TO = 1024
SKETCH_BITS = 256
#: Standard deviations of the Hamming distance (at the threshold) the filter radius allows.
SKETCH_MARGIN = 4.0
_CODE_BYTES = SKETCH_BITS // 8
_MIN_CAPACITY = 64
_SEED = 20_260_101  # fixed: the same vectors always get the same sketches


@dataclass(eq=False)
class _Scope:
    """One scope's rows: ``vectors[i]`` has id ``ids[i]``; rows ``size`` and up are free."""

    vectors: np.ndarray
    codes: np.ndarray  # (capacity, _CODE_BYTES) uint8 sketches
    ids: np.ndarray
    # scratch for faiss.match_hamming_thres: (query, row) pairs and distances of the survivors
    pairs: np.ndarray
    distances: np.ndarray
    size: int = 0
    rows: dict[int, int] = field(default_factory=dict)  # id -> row


class VectorIndex:
    """``add``/``remove``/``search`` L2-normalised ``dim``-dimensional vectors, per scope."""

    def __init__(self, dim: int, *, exact_up_to: int | None = None):
        self.dim = dim
        self.exact_up_to = EXACT_UP_TO if exact_up_to is None else exact_up_to
        self._scopes: dict[str, _Scope] = {}
        self._scope_of: dict[int, str] = {}
        self._planes = np.random.default_rng(_SEED).standard_normal((dim, SKETCH_BITS)).astype(np.float32)

    def __len__(self) -> int:
        return len(self._scope_of)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._scope_of

    def holds(self, scope: str) -> bool:
        """Whether ``scope`` has any vector (a scope's last removal drops it)."""
        return scope in self._scopes

    def add(self, scope: str, ids: Iterable[int], vectors: np.ndarray) -> None:
        """Add ``vectors`` (one row per id) to ``scope``; an id must not be present already."""
        ids = np.fromiter(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        duplicates = [i for i in ids.tolist() if i in self._scope_of]
        if duplicates or len(set(ids.tolist())) != len(ids):
            raise ValueError(f"ids already in the index: {duplicates or ids.tolist()}")
        s = self._scopes.get(scope) or self._new_scope(0)
        self._scopes[scope] = s
        start, end = s.size, s.size + len(ids)
        if end > len(s.ids):
            self._resize(s, max(_MIN_CAPACITY, 1 << (end - 1).bit_length()))
        s.vectors[start:end] = vectors
        s.codes[start:end] = self._sketch(vectors)
        s.ids[start:end] = ids
        s.size = end
        for row, entry_id in enumerate(ids.tolist(), start):
            s.rows[entry_id] = row
            self._scope_of[entry_id] = scope

    def remove(self, ids: Iterable[int]) -> None:
        """Remove these ids (absent ones are ignored): each hole gets its scope's last row."""
        for entry_id in ids:
            scope = self._scope_of.pop(entry_id, None)
            if scope is None:
                continue
            s = self._scopes[scope]
            row, last = s.rows.pop(entry_id), s.size - 1
            if row != last:
                moved = int(s.ids[last])
                s.vectors[row], s.codes[row], s.ids[row] = s.vectors[last], s.codes[last], moved
                s.rows[moved] = row
            s.size = last
            if not s.size:
                del self._scopes[scope]
            elif s.size * 4 <= len(s.ids) and len(s.ids) > _MIN_CAPACITY:
                self._resize(s, len(s.ids) // 2)  # amortised O(1): memory follows the scope down

    def search(self, scope: str, vector: np.ndarray, k: int, *, min_score: float = -1.0) -> list[tuple[int, float]]:
        """Up to ``k`` (id, cosine) of ``scope`` with cosine >= ``min_score``, best first."""
        s = self._scopes.get(scope)
        if s is None or k < 1:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(self.dim)
        radius = self._radius(min_score)
        if s.size <= self.exact_up_to or radius >= SKETCH_BITS:
            rows = None
            scores = _scores(s.vectors[: s.size], query)
        else:
            import faiss  # already loaded by the cache that owns this index

            sketch = self._sketch(query[None, :])
            matched = faiss.match_hamming_thres(  # type: ignore[attr-defined]  # absent from faiss's stubs
                faiss.swig_ptr(sketch), faiss.swig_ptr(s.codes), 1, s.size, int(radius), _CODE_BYTES,
                faiss.swig_ptr(s.pairs), faiss.swig_ptr(s.distances),
            )  # keeps distance <= radius; C++ popcount, one pass over the sketches
            rows = s.pairs[1 : 2 * matched : 2]
            scores = _scores(s.vectors[rows], query)
        keep = np.flatnonzero(scores >= min_score)
        if len(keep) > k:
            keep = keep[np.argpartition(-scores[keep], k - 1)[:k]]
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        found = keep if rows is None else rows[keep]
        return list(zip(s.ids[found].tolist(), scores[keep].tolist(), strict=True))

    def clear(self) -> None:
        self._scopes.clear()
        self._scope_of.clear()

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector), as an int64 array of ids and a float32 array of rows (copies)."""
        scopes = list(self._scopes.values())
        ids = np.concatenate([np.zeros(0, np.int64), *(s.ids[: s.size] for s in scopes)])
        vectors = np.concatenate([np.zeros((0, self.dim), np.float32), *(s.vectors[: s.size] for s in scopes)])
        return ids, vectors

    # --- internals ---------------------------------------------------------------------------

    def _new_scope(self, capacity: int) -> _Scope:
        return _Scope(
            vectors=np.zeros((capacity, self.dim), np.float32),
            codes=np.zeros((capacity, _CODE_BYTES), np.uint8),
            ids=np.zeros(capacity, np.int64),
            pairs=np.zeros(2 * capacity, np.int64),
            distances=np.zeros(capacity, np.int32),
        )

    def _resize(self, s: _Scope, capacity: int) -> None:
        new = self._new_scope(capacity)
        s.vectors = np.concatenate([s.vectors[: s.size], new.vectors[s.size :]])
        s.codes = np.concatenate([s.codes[: s.size], new.codes[s.size :]])
        s.ids = np.concatenate([s.ids[: s.size], new.ids[s.size :]])
        s.pairs, s.distances = new.pairs, new.distances

    def _sketch(self, vectors: np.ndarray) -> np.ndarray:
        """(m, _CODE_BYTES) uint8: bit j of a row is whether it lies above random hyperplane j."""
        return np.packbits((vectors @ self._planes) > 0, axis=1)

    @staticmethod
    def _radius(min_score: float) -> float:
        """The Hamming distance a vector at cosine ``min_score`` exceeds with probability < 1e-4."""
        p = math.acos(max(-1.0, min(1.0, min_score))) / math.pi
        return SKETCH_BITS * p + SKETCH_MARGIN * math.sqrt(SKETCH_BITS * p * (1 - p))


def _scores(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``vectors @ query`` on one thread: numpy's BLAS spreads a large product over threads that
    fight the encoder's for the cores (8 ms instead of 2 at 16k rows, measured)."""
    import faiss

    out = np.empty(len(vectors), np.float32)
    pointers = (faiss.swig_ptr(a) for a in (out, query, vectors))
    faiss.fvec_inner_products_ny(*pointers, len(query), len(vectors))  # type: ignore[attr-defined]
    return out
