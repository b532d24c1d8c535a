"""Semantic-cache encoders: the ONNX Runtime export of the bundled MiniLM against PyTorch (same
hit/miss decisions on the dev set, close vectors), its on-disk cache (reused, rebuilt when
damaged), and the ``encoder=`` setting (refused by name, missing packages named with pip)."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import mlflow_lite_plugin as ml
from mlflow_lite_plugin.cache import encoders
from mlflow_lite_plugin.cache.embeddings import DEFAULT_MODEL, _resolve_model_path, get_embedder
from mlflow_lite_plugin.cache.semantic import SemanticCache
from mlflow_lite_plugin.cache.stage import SemanticCacheSettings

from tests.helpers import REPO

# The dev set is not in the repository: CI clones it as ../shared beside this checkout.
DEV_PAIRS = REPO.parent / "shared" / "data" / "semantic_cache_dev.jsonl"


def dev_pairs() -> list[dict]:
    with DEV_PAIRS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def decisions(encoder: str, pairs: list[dict]) -> list[bool]:
    """Hit or miss for each pair through the real cache (store ``cached``, look up ``query``),
    one scope per pair, as benchmarks/semantic_cache_eval.py does."""
    cache = SemanticCache(encoder=encoder)
    out = []
    for i, pair in enumerate(pairs):
        cache.store(f"pair-{i}", pair["cached"], {"answer": i})
        out.append(cache.lookup(f"pair-{i}", pair["query"]) is not None)
    return out


@pytest.fixture(scope="module")
def torch_decisions() -> list[bool]:
    return decisions(encoders.TORCH, dev_pairs())


# --- quality: the faster encoders agree with PyTorch ---------------------------------------------


def test_same_hit_and_miss_decisions_as_torch_on_the_dev_set(torch_decisions):
    # the whole dev set (50 pairs, both labels): a subset could hide the one pair that flips
    got = decisions(encoders.ONNX, dev_pairs())
    assert sum(torch_decisions) > 0 and not all(torch_decisions)  # the set exercises both outcomes
    flipped = [p for p, a, b in zip(dev_pairs(), got, torch_decisions, strict=True) if a != b]
    assert flipped == []


def test_vectors_are_close_to_torch():
    # dev sentences, the empty one, and one past the model's 256 word pieces (truncated alike)
    texts = [t for p in dev_pairs() for t in (p["cached"], p["query"])] + ["", "word " * 400]
    reference = get_embedder(None, encoders.TORCH).embed(texts)
    vectors = get_embedder(None, encoders.ONNX).embed(texts)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    cosines = np.sum(vectors * reference, axis=1)
    worst = int(cosines.argmin())
    assert cosines[worst] > 0.999, f"cosine {cosines[worst]:.4f} to torch on {texts[worst][:80]!r}"


def test_one_batch_equals_one_by_one():
    # padding in a batch must not move a sentence's vector (the attention mask is honoured), so the
    # micro-batcher's grouping of callers changes nothing
    texts = ["hi", "How do I reset my password after the link in the email has expired?", "cats"]
    embedder = get_embedder(None, encoders.ONNX)
    together = embedder.embed(texts)
    alone = np.concatenate([embedder.embed([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)


def test_a_cache_saved_with_one_encoder_loads_with_another(tmp_path, torch_decisions):
    # a paraphrase (not the same words: an exact match would not need the vectors to agree)
    pair = next(p for p, hit in zip(dev_pairs(), torch_decisions, strict=True) if hit and p["cached"] != p["query"])
    cache = SemanticCache(encoder=encoders.ONNX)
    cache.store("scope", pair["cached"], {"answer": 1})
    cache.save(tmp_path / "cache")
    saved = json.loads((tmp_path / "cache" / "entries.json").read_text())
    assert "encoder" not in saved  # an engine choice, not part of the format: old readers still load it
    loaded = SemanticCache.load(tmp_path / "cache", encoder=encoders.TORCH)
    assert loaded.encoder == encoders.TORCH
    hit = loaded.lookup("scope", pair["query"])
    assert hit is not None and hit.value == {"answer": 1}


# --- the on-disk export ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One real export into a private cache root (the module's other tests copy it)."""
    root = tmp_path_factory.mktemp("encoders-root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_LITE_CACHE_DIR", str(root))
        encoder = encoders.load_onnx(_resolve_model_path(None), DEFAULT_MODEL)
    assert encoder.directory.parent == root / "encoders"
    assert encoder.directory.name.startswith("all-MiniLM-L6-v2-")  # the model, then a hash of its files
    assert list((root / "encoders").iterdir()) == [encoder.directory]  # no temp dir left behind
    return encoder.directory


@pytest.fixture
def root_with_export(pristine, tmp_path, monkeypatch) -> Path:
    """A fresh cache root holding a copy of the pristine export; returns the export's directory."""
    monkeypatch.setenv("MLFLOW_LITE_CACHE_DIR", str(tmp_path))
    target = tmp_path / "encoders" / pristine.name
    shutil.copytree(pristine, target)
    return target


@pytest.fixture
def exports(monkeypatch, pristine) -> list[Path]:
    """Records each export and publishes a copy of the pristine one (a real export takes seconds
    and is tested by ``pristine``): what is checked here is which directories get rebuilt."""
    made: list[Path] = []

    def fake_export(source, target, spec):
        made.append(target)
        shutil.copytree(pristine, target)

    monkeypatch.setattr(encoders, "_export", fake_export)
    return made


def load() -> encoders.OnnxEncoder:
    return encoders.load_onnx(_resolve_model_path(None), DEFAULT_MODEL)


def test_a_second_load_reuses_the_export(root_with_export, exports):
    first, second = load(), load()
    assert exports == []
    assert first.directory == second.directory == root_with_export
    assert first.encode(["hello"]).shape == (1, 384)


def _truncate(directory: Path) -> None:
    with (directory / "model.onnx").open("r+b") as f:
        f.truncate(1000)


def _flip_a_byte(directory: Path) -> None:  # same size: only the checksum can tell
    with (directory / "model.onnx").open("r+b") as f:
        f.seek(5_000_000)
        byte = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))


def _no_manifest(directory: Path) -> None:  # the export stopped before its last file
    (directory / "encoder.json").unlink()


def _stale_format(directory: Path) -> None:
    manifest = json.loads((directory / "encoder.json").read_text())
    (directory / "encoder.json").write_text(json.dumps({**manifest, "format_version": 0}))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _no_manifest, _stale_format])
def test_a_damaged_export_is_rebuilt_not_trusted(root_with_export, exports, damage, caplog):
    damage(root_with_export)
    with caplog.at_level(logging.WARNING, logger=encoders.logger.name):
        encoder = load()
    assert exports == [root_with_export]
    assert "rebuilding" in caplog.text
    assert encoder.encode(["hello"]).shape == (1, 384)
    assert list(root_with_export.parent.iterdir()) == [root_with_export]  # the damaged copy is gone


def test_losing_the_publish_race_keeps_the_winners_copy(root_with_export, pristine, monkeypatch):
    # another process renamed its export into place first: ours is dropped, theirs is used
    winner = (root_with_export / "encoder.json").read_text()
    manifest = json.loads(winner)

    def export_fp32(source, path, spec):  # a valid export of our own, without the seconds of a real one
        shutil.copyfile(pristine / "model.onnx", path)
        return 384, manifest["pad_id"], encoders.OnnxEncoder(pristine, manifest).encode(encoders._PROBES)

    monkeypatch.setattr(encoders, "_export_fp32", export_fp32)
    source = Path(_resolve_model_path(None))
    encoders._export(source, root_with_export, encoders._model_spec(source))
    assert (root_with_export / "encoder.json").read_text() == winner
    assert list(root_with_export.parent.iterdir()) == [root_with_export]  # our temp dir is removed


# --- the setting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (lambda: ml.set_semantic_cache(encoder="onx"), "Did you mean 'onnx'?"),
        (lambda: SemanticCacheSettings(encoder="ONNX"), "Did you mean 'onnx'?"),
        (lambda: SemanticCache(encoder="gpu"), "Known encoders: auto, torch, onnx"),
        (lambda: get_embedder(None, encoder=None), "unknown encoder None"),  # type: ignore[arg-type]
    ],
)
def test_bad_encoder_values_are_refused_by_name(make, hint):
    with pytest.raises(ml.ArgumentError, match="encoder") as caught:
        make()
    assert caught.value.argument == "encoder"
    assert hint in str(caught.value)


@pytest.fixture
def without_onnxruntime(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))


def test_an_explicit_encoder_without_its_packages_fails_at_enable_time(without_onnxruntime):
    with pytest.raises(ml.ArgumentError, match=r"needs onnxruntime: pip install .*semantic") as caught:
        ml.set_semantic_cache(encoder="onnx")
    assert caught.value.argument == "encoder"


def test_auto_falls_back_to_torch_without_onnxruntime_and_says_why(without_onnxruntime, caplog):
    with caplog.at_level(logging.INFO, logger=encoders.logger.name):
        assert encoders.resolve(encoders.AUTO, bundled=True) == encoders.TORCH
    assert "'auto' runs 'torch': encoder='onnx' needs onnxruntime" in caplog.text


def test_auto_runs_the_kept_encoder_on_the_bundled_model_only():
    assert encoders.resolve(encoders.AUTO, bundled=True) == encoders.AUTO_CHOICE != encoders.TORCH
    assert encoders.resolve(encoders.AUTO, bundled=False) == encoders.TORCH  # not quality-checked
    assert get_embedder(None).encoder == encoders.AUTO_CHOICE
    assert get_embedder(None) is get_embedder(None, encoders.AUTO_CHOICE)  # one loaded model, not two
