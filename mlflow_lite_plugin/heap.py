"""Keep the garbage collector off the objects of the heavy libraries once they are loaded.

LiteLLM, MLflow and the embedding stack (ONNX Runtime or torch, transformers) leave some 400,000
long-lived objects tracked by Python's cyclic garbage collector, and every full collection walks
them all: 0.1-0.5 s on a 2-core host, during which no thread runs, so an event loop serving
requests stalls that long (``benchmarks/throughput.py`` measured it). ``gc.freeze()`` moves the
objects alive now into a permanent generation that collections skip, the usual remedy of long-lived
Python servers. It is done once each heavy library has loaded; a frozen object that later becomes
garbage is not collected, which at those moments is a handful. ``MLFLOW_LITE_GC_FREEZE=0`` turns
it off.
"""

from __future__ import annotations

import gc
import logging
import os
import threading

_logger = logging.getLogger(__name__)

ENV_VAR = "MLFLOW_LITE_GC_FREEZE"

_frozen: set[str] = set()
_lock = threading.Lock()


def freeze_loaded(library: str) -> None:
    """``library`` has just been loaded: freeze what is alive (once per library)."""
    if library in _frozen:
        return
    with _lock:
        if library in _frozen:
            return
        _frozen.add(library)
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    gc.freeze()
    _logger.debug("%s loaded: %d objects moved out of the garbage collector's way", library, gc.get_freeze_count())
