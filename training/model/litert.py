"""Serving a version with the LiteRT interpreter: no TensorFlow in the process.

Full TensorFlow costs a serving process about 1 GB of memory and seconds of start-up
(docs/design.md); ``SERVING_RUNTIME=litert`` loads the ``.tflite`` file that publishing
exported beside the Keras model (training/model/litert_export.py) into ``ai-edge-litert``'s
interpreter instead. This module must never import TensorFlow or Keras, directly or through
another module: tests/training/model/test_litert.py checks it in a real process.

A version whose export or parity check failed is refused with the reason recorded in its
meta (the serving process logs it and answers "no model"), never served by TensorFlow
behind the operator's back.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from training.model.loaded import LoadedModel, warmed_up
from training.versions.store import VersionInfo

log = logging.getLogger(__name__)

EXPORT_MODES = ("auto", "off", "float", "float16", "dynamic")
"""LITERT_EXPORT: no export, the float model only, or the float model and a quantised one
(float16 weights, or dynamic-range int8 weights) that is served when it passes parity."""

QUANTIZATIONS = ("float16", "dynamic")
FLOAT_FILE = "model.tflite"
RUNTIMES = ("tensorflow", "litert")
"""SERVING_RUNTIME: how serving processes run a version's model."""

META_KEY = "litert"
"""meta.json's record of the export: the file to serve (or the reason there is none), and
the parity figures of each file."""


def quantized_file(quantize: str) -> str:
    """The file name of a version's model quantised with ``quantize``."""
    return f"model.{quantize}.tflite"


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else a ValueError naming the setting."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def served_file(info: VersionInfo) -> Path:
    """The LiteRT file a version is served from.

    Raises:
        ValueError: the version has no usable LiteRT file, with the reason (never exported,
            export failed, no file passed the parity check).
    """
    record = info.meta.get(META_KEY)
    if not record:
        raise ValueError(
            f"version {info.version} has no LiteRT export (published before LITERT_EXPORT, "
            "or by a worker whose LITERT_EXPORT is off, or auto without SERVING_RUNTIME=litert: "
            "set SERVING_RUNTIME=litert on the workers too); serve it with "
            "SERVING_RUNTIME=tensorflow"
        )
    name = record.get("file")
    if not name:
        raise ValueError(f"version {info.version} has no LiteRT file: {record.get('reason')}")
    path = info.path / name
    if path.name != name or not path.is_file():
        raise ValueError(f"version {info.version}: LiteRT file {name!r} is missing")
    return path


class ClipRunner:
    """One interpreter, fed one clip at a time (the export has a fixed batch of one: a
    dynamic batch would need TensorFlow's list ops in the LSTM, which LiteRT lacks), under
    a lock because an interpreter is not safe to call from several threads at once."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path))
        self._runner = self._interpreter.get_signature_runner()
        self._lock = threading.Lock()

    def __call__(self, frames: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        with self._lock:
            for i in range(len(frames)):
                out = self._runner(frames=frames[i : i + 1], mask=mask[i : i + 1])
                for head, value in out.items():
                    parts.setdefault(head, []).append(np.array(value, dtype=np.float32))
        return {head: np.concatenate(values) for head, values in parts.items()}


def load_litert_version(info: VersionInfo, batch_size: int = 8) -> LoadedModel:
    """Load a version's LiteRT file and warm it up, as training.model.loaded.load_version
    does for Keras; the result predicts every output of the model, by name.

    Raises:
        ValueError: the version cannot be served by LiteRT (see :func:`served_file`).
    """
    started = time.perf_counter()
    loaded = warmed_up(info, batch_size, ClipRunner(served_file(info)))
    log.info(
        "loaded project %s version %s (LiteRT %s) in %.2f s",
        info.project,
        info.version,
        info.meta[META_KEY]["file"],
        time.perf_counter() - started,
    )
    return loaded
