"""Exporting a version to LiteRT at publish time, and the parity check that decides which
file (if any) serving may use. Runs in the worker, which has TensorFlow.

Conversion goes through a SavedModel written by ``keras.export.ExportArchive`` with a fixed
input signature of **one clip** (frames (1, T, H, W, 3) uint8, mask (1, T) bool), converted
with builtin ops only (the LiteRT interpreter has no Flex delegate):

* converting the ``tf.function`` directly fails on Keras 3's LSTM (its seed generator's
  variable reaches the converter as an int64 instead of a resource);
* a dynamic batch makes the LSTM's while loop use TensorFlow list ops with a non-static
  element shape, which only Flex runs.

With the batch fixed every head (lstm, bilstm, attention, average; classes and timeline)
converts to builtin ops, within 1e-7 of Keras; the runtime feeds clips one at a time.

Parity on the version's test clips (its validation clips when it has no test clip): the
float file must be within FLOAT_TOLERANCE of Keras on every output, a quantised one must
agree with Keras on the top label (per clip, and per real frame for a timeline) for at
least TOP_LABEL_AGREEMENT of them; a file that fails is deleted and not used.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.learn.dataset import ClipArrays
from training.learn.evaluate import predict_outputs
from training.model.litert import (
    FLOAT_FILE,
    QUANTIZATIONS,
    ClipRunner,
    quantized_file,
)
from training.video.clip import SamplingConfig

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

FLOAT_TOLERANCE = 1e-4
TOP_LABEL_AGREEMENT = 0.99


def export_savedmodel(model: keras.Model, sampling: SamplingConfig, folder: Path) -> Path:
    """Write ``model`` as a SavedModel (TF Serving's format) with the one-clip signature
    ``serving_default(frames, mask)`` returning every output by name."""
    import keras
    import tensorflow as tf

    t, h, w = sampling.frames, sampling.height, sampling.width
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda frames, mask: model({"frames": frames, "mask": mask}, training=False),
        input_signature=[
            tf.TensorSpec((1, t, h, w, 3), tf.uint8, name="frames"),
            tf.TensorSpec((1, t), tf.bool, name="mask"),
        ],
    )
    archive.write_out(str(folder), verbose=False)
    return folder


def convert(saved_model: Path, quantize: str | None = None) -> bytes:
    """A SavedModel as a LiteRT flatbuffer of builtin ops; ``quantize``: None (float32),
    'float16' (float16 weights) or 'dynamic' (int8 weights, float activations)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def export_litert(
    model: keras.Model,
    sampling: SamplingConfig,
    folder: Path,
    mode: str,
    clips: ClipArrays,
) -> dict:
    """Write ``model.tflite`` (and the ``mode`` quantised file) into the version folder,
    check their parity with Keras on ``clips``, and return the meta record: ``file`` (the
    one to serve, quantised when it passed) or ``reason``, and each file's figures."""
    started = time.perf_counter()
    reference = predict_outputs(model, clips)
    record: dict = {"clips": len(clips), "batch": 1}
    with tempfile.TemporaryDirectory(prefix="savedmodel-") as tmp:
        saved = export_savedmodel(model, sampling, Path(tmp) / "savedmodel")
        (folder / FLOAT_FILE).write_bytes(convert(saved))
        quantize = mode if mode in QUANTIZATIONS else None
        if quantize:
            (folder / quantized_file(quantize)).write_bytes(convert(saved, quantize))
    record["float"] = _check(folder / FLOAT_FILE, clips, reference, quantized=False)
    if quantize:
        record[quantize] = _check(folder / quantized_file(quantize), clips, reference, True)
    passed = [k for k in (quantize, "float") if k and record[k]["passed"]]
    if passed:
        record["file"] = record[passed[0]]["file"]
    else:
        record["file"] = None
        record["reason"] = "no LiteRT file passed the parity check with Keras"
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _check(path: Path, clips: ClipArrays, reference: dict, quantized: bool) -> dict:
    """One file's parity figures; the file is deleted when it fails."""
    runner = ClipRunner(path)
    outputs: dict[str, list[np.ndarray]] = {}
    for i in range(len(clips)):
        for head, value in runner(clips.frames[i : i + 1], clips.mask[i : i + 1]).items():
            outputs.setdefault(head, []).append(value)
    got = {head: np.concatenate(values) for head, values in outputs.items()}
    result: dict = {"file": path.name, "bytes": path.stat().st_size}
    if set(got) != set(reference):
        result.update(passed=False, reason=f"outputs {sorted(got)} != {sorted(reference)}")
    else:
        diff = max(float(np.abs(got[k] - reference[k]).max(initial=0.0)) for k in reference)
        agreement = top_label_agreement(got, reference, clips.mask)
        result.update(max_abs_diff=diff, top_label_agreement=agreement)
        if quantized:
            result["passed"] = agreement >= TOP_LABEL_AGREEMENT
        else:
            result["passed"] = diff <= FLOAT_TOLERANCE
    if not result["passed"]:
        path.unlink()
        log.warning("LiteRT file %s failed the parity check: %s", path.name, result)
    return result


def top_label_agreement(got: dict, reference: dict, mask: np.ndarray) -> float:
    """The share of top labels that agree: one per clip for ``classes``, one per real frame
    for ``timeline`` (other outputs, an embedding say, have no top label)."""
    same, total = 0, 0
    for head, want in reference.items():
        if head == "classes":
            hits = got[head].argmax(-1) == want.argmax(-1)
        elif head == "timeline":
            hits = (got[head].argmax(-1) == want.argmax(-1))[mask.astype(bool)]
        else:
            continue
        same += int(hits.sum())
        total += hits.size
    return same / total if total else 1.0


def export_for_publish(
    model: keras.Model, sampling: SamplingConfig, folder: Path, mode: str, clips: ClipArrays
) -> dict:
    """:func:`export_litert` for a version being published: a failure is recorded as the
    reason and logged, never raised, so the Keras version is published whatever happens."""
    try:
        if not len(clips):
            return {"file": None, "reason": "no clip to check parity on"}
        return export_litert(model, sampling, folder, mode, clips)
    except Exception as exc:
        log.exception("LiteRT export failed; the Keras version is published without it")
        for leftover in folder.glob("*.tflite"):
            leftover.unlink()
        return {"file": None, "reason": f"export failed: {type(exc).__name__}: {exc}"[:500]}
