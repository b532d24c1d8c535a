"""Semantic response cache: sentence embeddings in FAISS, every candidate checked by ``verify``.

A hit needs (1) the same opaque ``scope`` (model, system prompt, params, tenant: computed by the
caller), (2) a neighbour in embedding space and (3) the verifier's approval, which rejects
near-misses such as negations, other numbers or names, swapped roles and other minimal edits.
Entries expire after ``ttl`` seconds and the least-recently-used ones are evicted beyond
``max_entries``. A question longer than ``max_query_chars`` is neither looked up nor stored: the
model embeds only its first 256 word pieces, and normalising and verifying it would cost far more
than the call it might save. ``save``/``load`` write a FAISS index plus a JSON entries file (no
pickle) that holds the index's SHA-256, so a cache can be shipped as an MLflow model artifact and a
changed or corrupted index is refused.

torch, sentence-transformers and faiss are imported on first use, never at import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_lite_plugin.cache.embeddings import Embedder, EmbeddingModelError, canonical_model_name, get_embedder
from mlflow_lite_plugin.cache.encoders import AUTO, check_encoder
from mlflow_lite_plugin.cache.index import VectorIndex
from mlflow_lite_plugin.cache.verify import normalize
from mlflow_lite_plugin.cache.verify import verify as verify_pair
from mlflow_lite_plugin.core.errors import MlflowLiteError
from mlflow_lite_plugin.core.offload import offload

if TYPE_CHECKING:  # pragma: no cover - typing only
    import faiss

logger = logging.getLogger(__name__)

#: Cosine a reworded (non-identical) question needs. Chosen on the dev set only: verified precision
#: there is 1.0 at every threshold in [0.5, 0.95] (its near-misses are caught structurally), so the
#: default is the highest threshold that keeps dev recall >= 0.75 (the 0.6 target plus ~1.5 SE).
DEFAULT_THRESHOLD = 0.725
INDEX_FILE = "index.faiss"
ENTRIES_FILE = "entries.json"
FORMAT = "mlflow-lite-semantic-cache"
FORMAT_VERSION = 1
#: Longest question (characters) the cache embeds. all-MiniLM-L6-v2 truncates at 256 word pieces
#: (~1,000-1,500 characters of English): beyond ~2,000 the embedding no longer sees the question.
MAX_QUERY_CHARS = 2_000
_CHECKSUM = "sha256"
# Neighbours verified per lookup: the best-scoring one can be a rejected near-miss while a true
# paraphrase sits just below it.
_CANDIDATES = 5


class SemanticCacheError(MlflowLiteError, ValueError):
    """A saved semantic cache is missing, corrupted or incompatible; ``path`` names the file."""

    def __init__(self, path: str | os.PathLike[str], message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)


@dataclass
class SemanticHit:
    value: dict  # what was stored
    query: str  # the cached query text
    score: float  # cosine similarity (1.0 for the same question after normalisation)
    reason: str  # why verification accepted it


@dataclass(frozen=True)
class Probe:
    """What a lookup found: the ``hit`` (None: a miss), and what to store the answer with: the
    question's normalised ``key`` and its ``vector``, when it was embedded (not for an empty
    scope or the same question after normalising)."""

    hit: SemanticHit | None
    key: str | None = None
    vector: np.ndarray | None = None


@dataclass
class _Entry:
    id: int
    scope: str
    query: str
    key: str  # normalised query: an exact-match shortcut and the de-duplication key
    value: dict
    created_at: float
    last_used: float


def _faiss() -> Any:
    import faiss  # heavy, optional: only when a cache is actually used

    # One query against a small flat index gains nothing from threads, and faiss's OpenMP pool
    # fights torch's over the same cores in a serving process (10-20x slower searches measured).
    faiss.omp_set_num_threads(1)
    return faiss


def _new_index(dim: int) -> faiss.Index:
    """The saved form of the vectors (every version reads it): searching uses a VectorIndex."""
    faiss = _faiss()
    # Inner product on L2-normalised vectors is cosine; the ID map names each vector's entry.
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


class SemanticCache:
    """Thread-safe semantic cache; see the module docstring."""

    def __init__(
        self,
        *,
        model: str | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        ttl: float | None = None,
        max_entries: int = 100_000,
        verify: bool = True,
        max_query_chars: int = MAX_QUERY_CHARS,
        encoder: str = AUTO,
    ):
        if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
        if ttl is not None and (not isinstance(ttl, (int, float)) or not ttl > 0):
            raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, got {max_entries!r}")
        if not isinstance(max_query_chars, int) or isinstance(max_query_chars, bool) or max_query_chars < 1:
            raise ValueError(f"max_query_chars must be a positive int, got {max_query_chars!r}")
        self.model = canonical_model_name(model)
        self._model_source = model
        # what runs the model; not saved: every encoder embeds into the same space (cosine > 0.99)
        self.encoder = check_encoder(encoder)
        self.threshold = float(threshold)
        self.ttl = float(ttl) if ttl is not None else None
        self.max_entries = max_entries
        self.verify = bool(verify)
        self.max_query_chars = max_query_chars
        # Guards every field below; the VectorIndex is not thread-safe and is only used under it.
        self._lock = threading.RLock()
        self._embedder: Embedder | None = None
        self._dim: int | None = None
        self._index: VectorIndex | None = None  # one per cache, per-scope inside; made at the first add
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._by_key: dict[tuple[str, str], int] = {}
        self._ages: deque[tuple[float, int]] = deque()  # (created_at, id), oldest first: TTL purge
        self._next_id = 0

    # --- public API ---------------------------------------------------------------------------

    def fits(self, query: str) -> bool:
        """Whether ``query`` is short enough to be looked up and stored (see ``max_query_chars``)."""
        return len(query) <= self.max_query_chars

    @staticmethod
    def normalized(query: str) -> str:
        """The form two questions must share to be "the same question" (pass it on as ``key=``)."""
        return normalize(query)

    def lookup(self, scope: str, query: str, *, key: str | None = None) -> SemanticHit | None:
        """The cached value of a question that means the same as ``query`` in ``scope``, or None
        (also for a question longer than ``max_query_chars``). ``key``: ``normalized(query)``,
        when the caller already has it (a call that looks up and then stores normalises once)."""
        return self.probe(scope, query, key=key).hit

    def probe(self, scope: str, query: str, *, key: str | None = None) -> Probe:
        """:meth:`lookup`, keeping the question's embedding (if it was computed) for
        :meth:`store`: a miss that is then stored is embedded once."""
        _check_text("scope", scope)
        _check_text("query", query)
        if not self.fits(query):
            logger.debug("semantic lookup skipped: %d characters > %d", len(query), self.max_query_chars)
            return Probe(None)
        key = normalize(query) if key is None else key
        with self._lock:
            self._purge_expired()
            if self._index is None or not self._index.holds(scope):
                return Probe(None, key)
            exact = self._by_key.get((scope, key)) if key else None  # "???" and "!!!" are not one question
            if exact is not None:
                hit = self._hit(exact, 1.0, "same question after normalising case, punctuation and inflection")
                return Probe(hit, key)
        vector = self._embed([query])  # outside the lock: encoding is the slow part
        candidates = self._search(scope, vector)
        for entry_id, cached_query, score in candidates:
            accepted, reason = self._accept(cached_query, query, score)
            logger.debug("semantic candidate %r for %r: %.3f %s (%s)", cached_query, query, score, accepted, reason)
            if accepted:
                with self._lock:
                    self._purge_expired()
                    if entry_id in self._entries:  # not evicted or expired meanwhile
                        return Probe(self._hit(entry_id, score, reason), key, vector)
        return Probe(None, key, vector)

    async def aprobe(self, scope: str, query: str, *, key: str | None = None) -> Probe:
        """:meth:`probe` for asyncio: normalising, embedding, searching and verifying run in the
        package's worker threads (the embedding batched with other callers'), never on the loop."""
        return await offload(self.probe, scope, query, key=key)

    def store(
        self, scope: str, query: str, value: dict, *, key: str | None = None, vector: np.ndarray | None = None
    ) -> bool:
        """Cache ``value`` (a JSON-serialisable dict) as the answer to ``query`` in ``scope``.

        Returns False, storing nothing, for a question longer than ``max_query_chars``. ``key``:
        ``normalized(query)`` and ``vector``: its embedding (:attr:`Probe.vector`), when the
        caller already has them."""
        _check_text("scope", scope)
        _check_text("query", query)
        if not isinstance(value, dict):
            raise TypeError(f"value must be a dict, got {type(value).__name__}")
        if not self.fits(query):
            logger.debug("semantic store skipped: %d characters > %d", len(query), self.max_query_chars)
            return False
        key = normalize(query) if key is None else key
        try:
            # A deep copy the caller cannot mutate, and a guarantee that save() can write it.
            value = _copy(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"value must be JSON-serialisable: {exc}") from exc
        if vector is None:
            vector = self._embed([query])
        now = time.time()
        with self._lock:
            self._purge_expired()
            old = self._by_key.get((scope, key))
            if old is not None:
                self._remove([old])
            self._add(_Entry(self._next_id, scope, query, key, value, now, now), vector)
            self._next_id += 1
            self._evict_over_capacity()
        return True

    async def astore(
        self, scope: str, query: str, value: dict, *, key: str | None = None, vector: np.ndarray | None = None
    ) -> bool:
        """:meth:`store` for asyncio (in the package's worker threads)."""
        return await offload(self.store, scope, query, value, key=key, vector=vector)

    def clear(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.clear()
            self._entries.clear()
            self._by_key.clear()
            self._ages.clear()

    def __len__(self) -> int:
        with self._lock:
            self._purge_expired()
            return len(self._entries)

    def entries(self) -> list[dict]:
        """Live entries, least recently used first: scope, query, value, created_at."""
        with self._lock:
            self._purge_expired()
            return [
                {"scope": e.scope, "query": e.query, "value": _copy(e.value), "created_at": e.created_at}
                for e in self._entries.values()
            ]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``path/index.faiss`` and ``path/entries.json`` (the directory is created); the
        entries file records the index's SHA-256, which :meth:`load` checks."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        faiss = _faiss()
        with self._lock:
            self._purge_expired()
            index = _new_index(self._index.dim if self._index is not None else self._dimension())
            if self._index is not None:
                ids, vectors = self._index.export()
                index.add_with_ids(vectors, ids)
            index_bytes = np.asarray(faiss.serialize_index(index), dtype=np.uint8).tobytes()
            document: dict[str, Any] = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "model": self.model,
                "dim": int(index.d),
                "metric": "cosine",
                "threshold": self.threshold,
                "ttl": self.ttl,
                "max_entries": self.max_entries,
                "verify": self.verify,
                "max_query_chars": self.max_query_chars,
                "next_id": self._next_id,
                "checksums": {INDEX_FILE: _checksum(index_bytes)},
                "entries": [
                    {
                        "id": e.id,
                        "scope": e.scope,
                        "query": e.query,
                        "value": e.value,
                        "created_at": e.created_at,
                        "last_used": e.last_used,
                    }
                    for e in self._entries.values()
                ],
            }
        # Each file is written atomically; a crash between the two leaves a new index beside old
        # entries, which load() then refuses by its checksum.
        _atomic_write(directory / INDEX_FILE, index_bytes)
        _atomic_write(directory / ENTRIES_FILE, json.dumps(document, ensure_ascii=False).encode("utf-8"))
        logger.info("saved semantic cache with %d entries to %s", len(document["entries"]), directory)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> SemanticCache:
        """Read a cache written by :meth:`save`; ``overrides`` replace saved settings (not the model)."""
        directory = Path(path)
        entries_path, index_path = directory / ENTRIES_FILE, directory / INDEX_FILE
        document = _read_entries(entries_path)
        unknown = set(overrides) - {"model", "threshold", "ttl", "max_entries", "verify", "max_query_chars", "encoder"}
        if unknown:
            raise TypeError(f"unknown SemanticCache setting(s): {', '.join(sorted(unknown))}")
        model = overrides.pop("model", document["model"])
        if canonical_model_name(model) != document["model"]:
            raise SemanticCacheError(
                entries_path,
                f"cache was built with embedding model {document['model']!r}, not {canonical_model_name(model)!r}",
            )
        settings = {k: document[k] for k in ("threshold", "ttl", "max_entries", "verify")}
        settings["max_query_chars"] = document.get("max_query_chars", MAX_QUERY_CHARS)  # absent before checksums
        settings.update(overrides)
        cache = cls(model=model, **settings)
        index = _read_index(index_path, document)
        # The model must embed into the same space the index holds (checked once, eagerly).
        try:
            model_dim = cache._get_embedder().dim
        except EmbeddingModelError as exc:
            raise SemanticCacheError(entries_path, f"embedding model {cache.model!r} of this cache: {exc}") from exc
        if model_dim != document["dim"]:
            raise SemanticCacheError(
                entries_path, f"model {cache.model!r} has dimension {model_dim}, the cache {document['dim']}"
            )
        cache._restore(document, index)
        return cache

    # --- internals (callers hold self._lock unless noted) ---------------------------------------

    def _get_embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self._model_source, self.encoder)
        return self._embedder

    def _dimension(self) -> int:
        if self._dim is None:
            self._dim = self._get_embedder().dim
        return self._dim

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Not under the lock: the embedder serialises encoding itself."""
        return self._get_embedder().embed(texts)

    def _accept(self, cached_query: str, query: str, score: float) -> tuple[bool, str]:
        if not self.verify:
            return score >= self.threshold, f"cosine {score:.3f} >= {self.threshold:.2f} (verification off)"
        return verify_pair(  # pure, outside the lock; embed_words is memoised and thread-safe
            cached_query, query, score, threshold=self.threshold, embed_words=self._get_embedder().embed_words
        )

    def _search(self, scope: str, vector: np.ndarray) -> list[tuple[int, str, float]]:
        """Best neighbours in ``scope`` with cosine >= threshold (the bar every non-identical
        question must clear), best first."""
        with self._lock:
            if self._index is None:
                return []
            found = self._index.search(scope, vector, _CANDIDATES, min_score=self.threshold)
            return [(entry_id, self._entries[entry_id].query, score) for entry_id, score in found]

    def _hit(self, entry_id: int, score: float, reason: str) -> SemanticHit:
        entry = self._entries[entry_id]
        entry.last_used = time.time()
        self._entries.move_to_end(entry_id)
        return SemanticHit(value=_copy(entry.value), query=entry.query, score=score, reason=reason)

    def _add(self, entry: _Entry, vector: np.ndarray) -> None:
        if self._index is None:
            self._dim = int(vector.shape[1])
            self._index = VectorIndex(self._dim)
        self._index.add(entry.scope, [entry.id], vector)
        self._entries[entry.id] = entry
        self._by_key[(entry.scope, entry.key)] = entry.id
        if self.ttl is not None:
            self._ages.append((entry.created_at, entry.id))

    def _remove(self, ids: list[int]) -> None:
        removed = []
        for entry_id in ids:
            entry = self._entries.pop(entry_id, None)
            if entry is None:
                continue
            removed.append(entry_id)
            self._by_key.pop((entry.scope, entry.key), None)
        if removed and self._index is not None:
            self._index.remove(removed)

    def _evict_over_capacity(self) -> None:
        excess = len(self._entries) - self.max_entries
        if excess > 0:
            victims = list(islice(self._entries, excess))  # least recently used first
            logger.debug("semantic cache full: evicting %d entries", len(victims))
            self._remove(victims)

    def _purge_expired(self) -> None:
        if self.ttl is None:
            return
        deadline = time.time() - self.ttl
        expired = []
        while self._ages and self._ages[0][0] <= deadline:
            created_at, entry_id = self._ages.popleft()
            entry = self._entries.get(entry_id)
            if entry is not None and entry.created_at == created_at:
                expired.append(entry_id)
        if expired:
            self._remove(expired)

    def _restore(self, document: dict, index: faiss.IndexIDMap2) -> None:
        ids = _faiss().vector_to_array(index.id_map)
        vectors = index.index.reconstruct_n(0, index.ntotal)  # row i of the flat index is ids[i]
        with self._lock:
            self._dim = int(index.d)
            self._index = VectorIndex(self._dim)
            for raw in document["entries"]:
                entry = _Entry(
                    raw["id"], raw["scope"], raw["query"], normalize(raw["query"]), raw["value"],
                    float(raw["created_at"]), float(raw["last_used"]),
                )
                self._entries[entry.id] = entry
                self._by_key[(entry.scope, entry.key)] = entry.id
            rows_of: dict[str, list[int]] = {}
            for row, entry_id in enumerate(ids.tolist()):
                rows_of.setdefault(self._entries[entry_id].scope, []).append(row)
            for scope, rows in rows_of.items():  # one bulk add per scope
                self._index.add(scope, ids[rows], vectors[rows])
            if self.ttl is not None:
                self._ages.extend(sorted((e.created_at, e.id) for e in self._entries.values()))
            self._next_id = max([document["next_id"], *(e + 1 for e in self._entries)])
            self._purge_expired()
            self._evict_over_capacity()


# --- helpers ---------------------------------------------------------------------------------


def _copy(value: dict) -> dict:
    """A deep copy through JSON: callers can never mutate a cached value (and it stays savable)."""
    return json.loads(json.dumps(value))


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def _checksum(data: bytes) -> str:
    return f"{_CHECKSUM}:{hashlib.sha256(data).hexdigest()}"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str, "version": int, "model": str, "dim": int, "threshold": (int, float),
    "max_entries": int, "verify": bool, "next_id": int, "entries": list,
}
_ENTRY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": int, "scope": str, "query": str, "value": dict, "created_at": (int, float), "last_used": (int, float),
}


def _read_entries(path: Path) -> dict:
    if not path.is_file():
        raise SemanticCacheError(path, "semantic cache entries file is missing")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SemanticCacheError(path, f"not a readable semantic cache entries file: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SemanticCacheError(path, f"not a {FORMAT} entries file")
    if document.get("version") != FORMAT_VERSION:
        raise SemanticCacheError(path, f"unsupported format version {document.get('version')!r}")
    for key, kind in _REQUIRED.items():
        if not isinstance(document.get(key), kind):
            raise SemanticCacheError(path, f"field {key!r} is missing or has the wrong type")
    ttl = document.get("ttl")
    if ttl is not None and not isinstance(ttl, (int, float)):
        raise SemanticCacheError(path, "field 'ttl' has the wrong type")
    # Optional: caches saved by earlier versions have neither field.
    max_query_chars = document.get("max_query_chars", MAX_QUERY_CHARS)
    if not isinstance(max_query_chars, int) or isinstance(max_query_chars, bool) or max_query_chars < 1:
        raise SemanticCacheError(path, "field 'max_query_chars' must be a positive int")
    checksums = document.get("checksums", {})
    if not isinstance(checksums, dict) or not all(
        isinstance(v, str) and v.startswith(f"{_CHECKSUM}:") for v in checksums.values()
    ):
        raise SemanticCacheError(path, f"field 'checksums' must map file names to '{_CHECKSUM}:<hex>'")
    for position, entry in enumerate(document["entries"]):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in _ENTRY_FIELDS.items()):
            raise SemanticCacheError(path, f"entry {position} is malformed")
    ids = [entry["id"] for entry in document["entries"]]
    if len(set(ids)) != len(ids):
        raise SemanticCacheError(path, "duplicate entry ids")
    return document


def _read_index(path: Path, document: dict) -> faiss.IndexIDMap2:
    if not path.is_file():
        raise SemanticCacheError(path, "semantic cache index file is missing")
    raw = path.read_bytes()
    expected_sum = document.get("checksums", {}).get(INDEX_FILE)
    if expected_sum is None:
        logger.debug("%s has no checksum of %s (saved by an older version): not verified", ENTRIES_FILE, path)
    elif (actual_sum := _checksum(raw)) != expected_sum:
        # FAISS reads most flipped bytes as valid floats: without this check the cache would load
        # and serve answers for the wrong vectors.
        raise SemanticCacheError(
            path,
            f"checksum mismatch: changed or corrupted since it was saved ({ENTRIES_FILE} records "
            f"{expected_sum}, the file is {actual_sum})",
        )
    faiss = _faiss()
    try:
        data = np.frombuffer(raw, dtype=np.uint8)
        index = faiss.deserialize_index(data)
    except Exception as exc:  # faiss raises RuntimeError with a C++ message on any bad byte
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SemanticCacheError(path, f"not a readable FAISS index: {first_line}") from exc
    if not isinstance(index, faiss.IndexIDMap2):
        raise SemanticCacheError(path, "FAISS index has no id map (not written by SemanticCache.save)")
    if index.d != document["dim"]:
        raise SemanticCacheError(path, f"index dimension {index.d} does not match {document['dim']} in {ENTRIES_FILE}")
    stored_ids = faiss.vector_to_array(index.id_map).tolist()
    expected = sorted(entry["id"] for entry in document["entries"])
    if sorted(stored_ids) != expected:
        raise SemanticCacheError(
            path, f"index holds {index.ntotal} vectors that do not match the {len(expected)} entries in {ENTRIES_FILE}"
        )
    return index
