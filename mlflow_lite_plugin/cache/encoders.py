"""Which engine encodes the semantic cache's sentences, and the ONNX Runtime one.

``"torch"`` is sentence-transformers on PyTorch. ``"onnx"`` runs the same weights with ONNX
Runtime: the transformer is exported locally (``torch.onnx``) from the model's own files at first
use, checked against PyTorch's output, and cached on disk under
``$MLFLOW_LITE_CACHE_DIR/encoders`` (default ``~/.cache/mlflow-lite/encoders``) in a directory
named by the model and a hash of its files. Nothing is downloaded. An export is written to a
temporary directory and renamed into place, so two processes exporting at once both end with one
complete copy; a directory whose manifest or checksum does not match is rebuilt, never trusted.
``"auto"`` picks the fastest variant that kept the semantic cache's quality on the bundled model
(``benchmarks/semantic_cache_eval.py``) when its packages are installed, else torch.

(ONNX Runtime's dynamic int8 quantization was tried and dropped: it scales activations per batch,
so a sentence's vector changed with the sentences micro-batched beside it, cosine 0.994, and one
dev-set paraphrase stopped hitting.)

Only this module's export path imports torch and transformers; encoding with ONNX needs neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_lite_plugin.core.errors import ArgumentError, did_you_mean

logger = logging.getLogger(__name__)

TORCH, ONNX, AUTO = "torch", "onnx", "auto"
ENCODERS = (AUTO, TORCH, ONNX)
#: What "auto" runs on the bundled model when ONNX Runtime is installed: the variant that kept
#: precision 1.0 and every hit on both evaluation sets (see README, "Semantic cache encoders").
AUTO_CHOICE = ONNX
_ONNX_PACKAGES = ("onnxruntime", "onnx")  # onnx: torch's exporter writes the model with it
INSTALL_HINT = "pip install 'mlflow-lite-plugin[semantic]' (or: pip install onnxruntime onnx)"

_FORMAT_VERSION = 1  # bump when the files or the manifest change: older exports are rebuilt
_MANIFEST = "encoder.json"  # written last: a directory without it is a partial export
_ONNX_FILE = "model.onnx"
_TOKENIZER_FILE = "tokenizer.json"
_OPSET = 17
_EXPORT_TOLERANCE = 0.9999  # min cosine to PyTorch on the probe sentences: the same function
_PROBES = ["How do I reset my password?", "Which foods are safe for cats, and which ones are not safe at all?"]


def check_encoder(encoder: object) -> str:
    """``encoder`` if it names an encoder, else :class:`ArgumentError` (with a did-you-mean)."""
    if not isinstance(encoder, str) or encoder not in ENCODERS:
        hint = did_you_mean(encoder.lower(), ENCODERS) if isinstance(encoder, str) else ""
        raise ArgumentError("encoder", f"unknown encoder {encoder!r}.{hint} Known encoders: {', '.join(ENCODERS)}")
    return encoder


def unavailable(encoder: str) -> str | None:
    """Why ``encoder`` cannot run here (its packages are missing, named with the pip command), or None."""
    if encoder in (TORCH, AUTO):
        return None
    missing = [name for name in _ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"encoder={encoder!r} needs {' and '.join(missing)}: {INSTALL_HINT}"


_announced: set[tuple[str, str]] = set()


def resolve(encoder: str, *, bundled: bool) -> str:
    """The encoder that runs for ``encoder`` ("auto" resolved; logged once per choice at INFO)."""
    if encoder != AUTO:
        return encoder
    if not bundled:
        choice, why = TORCH, "only the bundled model's ONNX export is quality-checked"
    elif (reason := unavailable(AUTO_CHOICE)) is not None:
        choice, why = TORCH, reason
    else:
        choice, why = AUTO_CHOICE, "kept the semantic cache's precision and recall on the evaluation sets"
    if (choice, why) not in _announced:
        _announced.add((choice, why))
        logger.info("semantic cache encoder 'auto' runs %r: %s", choice, why)
    return choice


# --- the ONNX encoder ---------------------------------------------------------------------------


class OnnxEncoder:
    """A sentence-transformers model (Transformer, mean or CLS Pooling, Normalize) run by ONNX
    Runtime, with the part of ``SentenceTransformer.encode``'s interface the cache uses."""

    def __init__(self, directory: Path, manifest: dict[str, Any]):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.directory = directory
        self._pooling = manifest["pooling"]
        self._dim = int(manifest["dim"])
        self._tokenizer = Tokenizer.from_file(str(directory / _TOKENIZER_FILE))
        self._tokenizer.enable_truncation(int(manifest["max_seq_length"]))
        self._tokenizer.enable_padding(pad_id=int(manifest["pad_id"]), pad_token=manifest["pad_token"])
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its optimizer's notes would reach stderr
        # idle workers sleep instead of spinning: the process also serves calls and the event loop
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(directory / _ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def get_embedding_dimension(self) -> int:
        return self._dim

    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Embeddings, shape ``(len(sentences), dim)``; sorted by length into batches, as
        sentence-transformers does, so a batch pads little. (Always numpy, never a bar.)"""
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        out = np.empty((len(sentences), self._dim), dtype=np.float32)
        for start in range(0, len(sentences), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._forward([sentences[i] for i in chunk])
        if normalize_embeddings:
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        return pool(hidden, mask, self._pooling)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """sentence-transformers' Pooling of token embeddings ``(batch, tokens, dim)``."""
    if mode == "cls":
        return np.asarray(hidden[:, 0], dtype=np.float32)
    weights = mask[..., None].astype(np.float32)
    return np.asarray((hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None), dtype=np.float32)


# --- export and the on-disk cache ---------------------------------------------------------------

_export_lock = threading.Lock()  # one export at a time in this process (other processes: the rename)


def load_onnx(model_path: str, name: str) -> OnnxEncoder:
    """The ONNX encoder of the local model at ``model_path``: from the on-disk cache, exported
    there first if it is missing or damaged."""
    source = Path(model_path)
    spec = _model_spec(source)
    with _export_lock:
        target = _cache_root() / f"{_safe(name)}-{_fingerprint(source)}"
        manifest = _valid_manifest(target)
        if manifest is None:
            _discard(target)
            _export(source, target, spec)
            manifest = _valid_manifest(target)
            if manifest is None:  # pragma: no cover - a concurrent writer left a broken copy
                raise RuntimeError(f"the ONNX export at {target} does not verify after exporting it")
    return OnnxEncoder(target, manifest)


def _cache_root() -> Path:
    base = os.environ.get("MLFLOW_LITE_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "mlflow-lite") / "encoders"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.rsplit("/", 1)[-1]) or "model"


_fingerprints: dict[Path, str] = {}


def _fingerprint(source: Path) -> str:
    """A hash of the model's files (weights, configs, tokenizer): another model, another export."""
    key = source.resolve()
    if key not in _fingerprints:
        digest = hashlib.sha256()
        for path in sorted(p for p in key.rglob("*") if p.is_file() and p.suffix != ".onnx"):
            digest.update(str(path.relative_to(key)).encode())
            digest.update(_file_sha256(path).encode())
        _fingerprints[key] = digest.hexdigest()[:16]
    return _fingerprints[key]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_spec(source: Path) -> dict[str, Any]:
    """What the ONNX encoder must reproduce of the sentence-transformers pipeline at ``source``;
    a model it cannot reproduce is refused (the torch encoder runs any model)."""
    try:
        listed = json.loads((source / "modules.json").read_text())
        modules = [m["type"].rsplit(".", 1)[-1] for m in listed]
        pooling_dir = next(m["path"] for m in listed if "Pool" in m["type"])
        pooling = json.loads((source / pooling_dir / "config.json").read_text())
        st_config = json.loads((source / "sentence_bert_config.json").read_text())
        tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise RuntimeError(f"{source} is not a local sentence-transformers model directory: {exc}") from exc
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    if modules not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or modes not in (
        ["pooling_mode_mean_tokens"],
        ["pooling_mode_cls_token"],
    ):
        raise RuntimeError(
            f"the ONNX encoder runs Transformer + mean/CLS Pooling models, not {modules} with {modes}: "
            "use encoder='torch'"
        )
    if not (source / _TOKENIZER_FILE).is_file():
        raise RuntimeError(f"the ONNX encoder needs a fast tokenizer file {source / _TOKENIZER_FILE}")
    return {
        "pooling": "mean" if modes == ["pooling_mode_mean_tokens"] else "cls",
        "max_seq_length": int(st_config.get("max_seq_length") or tokenizer_config.get("model_max_length", 512)),
        "pad_token": tokenizer_config.get("pad_token", "[PAD]"),
    }


def _valid_manifest(target: Path) -> dict[str, Any] | None:
    """The manifest of a complete, intact export at ``target``, or None (missing, partial, stale
    or corrupted: the model file's size and SHA-256 must match what the export recorded)."""
    try:
        manifest = json.loads((target / _MANIFEST).read_text(encoding="utf-8"))
        model_file = target / _ONNX_FILE
        intact = (
            manifest.get("format_version") == _FORMAT_VERSION
            and (target / _TOKENIZER_FILE).is_file()
            and model_file.stat().st_size == manifest["onnx_bytes"]
            and _file_sha256(model_file) == manifest["onnx_sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        intact = False
    if intact:
        return dict(manifest)
    if target.exists():
        logger.warning("rebuilding the incomplete or damaged ONNX export at %s", target)
    return None


def _discard(target: Path) -> None:
    """Remove a damaged export: renamed aside first, so no reader ever sees half of it deleted."""
    if not target.exists():
        return
    aside = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
    with contextlib.suppress(OSError):  # another process may have moved it already
        target.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _export(source: Path, target: Path, spec: dict[str, Any]) -> None:
    """Write the export to a temporary sibling of ``target`` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        logger.info("exporting %s to ONNX in %s: once per model and machine", source, target)
        with _quiet():
            dim, pad_id, reference = _export_fp32(source, tmp / _ONNX_FILE, spec)
        shutil.copyfile(source / _TOKENIZER_FILE, tmp / _TOKENIZER_FILE)
        model_file = tmp / _ONNX_FILE
        manifest = {
            "format_version": _FORMAT_VERSION,
            "source": str(source),
            **spec,
            "dim": dim,
            "pad_id": pad_id,
            "onnx_bytes": model_file.stat().st_size,
            "onnx_sha256": _file_sha256(model_file),
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _check_export(tmp, manifest, reference, _EXPORT_TOLERANCE)
        try:
            tmp.rename(target)
        except OSError:  # another process published its copy first: use that one
            logger.debug("another process exported %s first", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' tracer warnings and loading bars are not the user's business."""
    from transformers.utils import logging as hf_logging

    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars_were_off:
            hf_logging.enable_progress_bar()


def _export_fp32(source: Path, path: Path, spec: dict[str, Any]) -> tuple[int, int, np.ndarray]:
    """Export the transformer to ONNX; returns (dim, pad id, PyTorch's pooled probe embeddings)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    # eager attention traces to plain ops whose shapes all stay dynamic
    model = AutoModel.from_pretrained(str(source), local_files_only=True, attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):  # keyword arguments in, last hidden state out
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    # padded probes: the trace must see a real mask, not only ones
    batch = tokenizer(_PROBES, padding=True, truncation=True, max_length=spec["max_seq_length"], return_tensors="pt")
    args = (batch["input_ids"], batch["attention_mask"], torch.zeros_like(batch["input_ids"]))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.inference_mode():
        hidden = Hidden()(*args)
    torch.onnx.export(
        Hidden(),
        args,
        str(path),
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
        opset_version=_OPSET,
        dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT-style models
    )
    reference = pool(hidden.numpy(), batch["attention_mask"].numpy(), spec["pooling"])
    return int(hidden.shape[-1]), int(tokenizer.pad_token_id or 0), reference


def _check_export(directory: Path, manifest: dict[str, Any], reference: np.ndarray, tolerance: float) -> None:
    """The exported encoder must agree with PyTorch on the probes, or it is not published."""
    vectors = OnnxEncoder(directory, manifest).encode(_PROBES, normalize_embeddings=True)
    expected = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    worst = float(np.min(np.sum(vectors * expected, axis=1)))
    if worst < tolerance:
        raise RuntimeError(f"the ONNX export disagrees with PyTorch (cosine {worst:.4f} < {tolerance})")
