"""LiteRT export at publish (training/model/litert_export.py) and serving with it
(training/model/litert.py, SERVING_RUNTIME=litert): the parity record in the version's meta,
the same predictions as Keras on real clips, no TensorFlow in a serving process, and a
version that cannot be served by LiteRT refused with its reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from training.learn.dataset import ClipArrays
from training.model.build import build_model
from training.model.config import ModelConfig
from training.model.litert import (
    FLOAT_FILE,
    META_KEY,
    ClipRunner,
    load_litert_version,
    quantized_file,
)
from training.model.litert_export import export_for_publish, export_litert
from training.model.loaded import load_version
from training.versions.store import META_FILE, ModelStore
from training.video.clip import SamplingConfig
from training.video.decoder import sample_clip

REPO_CLIPS = ("b.mp4", "bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


def test_publishing_exports_litert_files_that_passed_parity(trained_model):
    record = trained_model.info.meta[META_KEY]
    assert record["file"] == quantized_file("float16"), record
    assert record["float"]["passed"] and record["float"]["max_abs_diff"] <= 1e-4, record
    assert record["float16"]["top_label_agreement"] >= 0.99, record
    assert record["clips"] >= 1
    for name in (FLOAT_FILE, quantized_file("float16")):
        assert (trained_model.info.path / name).is_file()


# ``videoloop predict`` as a user runs it (it loads through the serving path's loader,
# backend.serving.default_loader), then the TensorFlow and Keras modules it ever imported.
PREDICT_AND_REPORT = """
import json, sys
from backend.cli import main
code = main(["predict", "--project", "1", *sys.argv[1:]])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print(json.dumps({"code": code, "tensorflow": loaded}))
"""


def test_litert_serving_never_imports_tensorflow_and_predicts_as_keras(trained_model, data_dir):
    """SERVING_RUNTIME=litert serves the float16 file: the same labels and probabilities
    as the Keras model (loaded here) on real clips the model never saw."""
    env = {**os.environ, "MODEL_DIR": str(trained_model.store_root), "SERVING_RUNTIME": "litert"}
    clips = [str(data_dir / name) for name in REPO_CLIPS]
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_AND_REPORT, *clips],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    *rows, report = [json.loads(line) for line in done.stdout.splitlines()]
    assert report == {"code": 0, "tensorflow": []}, done.stderr[-3000:]
    keras_model = load_version(trained_model.info, batch_size=4)
    for clip, row in zip(clips, rows, strict=True):
        sampled = sample_clip(clip, keras_model.sampling)
        want = keras_model.predict_proba(sampled.frames[None], sampled.mask[None])[0]
        assert row["label"] == keras_model.labels[int(want.argmax())], row
        got = [row["probabilities"][label] for label in keras_model.labels]
        np.testing.assert_allclose(got, want, atol=1e-3)


def copy_version(trained_model, tmp_path, change) -> ModelStore:
    """The trained store copied, its version's meta.json changed by ``change``."""
    root = tmp_path / "models"
    shutil.copytree(trained_model.store_root, root)
    store = ModelStore(root)
    info = store.get_version("1", trained_model.info.version)
    meta = json.loads((info.path / META_FILE).read_text())
    change(meta)
    (info.path / META_FILE).write_text(json.dumps(meta))
    return store


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda meta: meta.pop(META_KEY), "has no LiteRT export"),
        (
            lambda meta: meta[META_KEY].update(file=None, reason="export failed: boom"),
            "export failed: boom",
        ),
        (lambda meta: meta[META_KEY].update(file="../../../meta.json"), "is missing"),
    ],
)
def test_a_version_without_a_usable_litert_file_is_refused_with_its_reason(
    trained_model, tmp_path, change, reason
):
    store = copy_version(trained_model, tmp_path, change)
    info = store.get_version("1", trained_model.info.version)
    with pytest.raises(ValueError, match=reason):
        load_litert_version(info)


def test_a_failed_export_is_recorded_and_leaves_no_file(tmp_path):
    """Not a model (the converter cannot run it): the publish goes on with the reason."""
    clips = ClipArrays(
        np.zeros((1, 4, 32, 32, 3), np.uint8), np.ones((1, 4), bool), np.zeros(1), ["a"]
    )
    (tmp_path / FLOAT_FILE).write_bytes(b"half written")
    record = export_for_publish(
        object(), SamplingConfig(frames=4, height=32, width=32), tmp_path, "float16", clips
    )
    assert record["file"] is None and record["reason"].startswith("export failed"), record
    assert not list(tmp_path.glob("*.tflite"))


def test_a_timeline_model_exports_every_output_by_name(tmp_path):
    """A bidirectional LSTM with both heads (untrained: parity needs no training), the float
    file only (one conversion: a quantised one doubles the time): both outputs, by name."""
    sampling = SamplingConfig(frames=4, height=32, width=32)
    config = ModelConfig(
        conv_filters=(8, 8, 8, 8), frame_features=8, lstm_units=8, temporal="bilstm"
    )
    model = build_model(2, sampling, config, timeline_labels=2)
    rng = np.random.default_rng(0)
    mask = np.ones((3, 4), bool)
    mask[1, 2:] = False
    clips = ClipArrays(
        rng.integers(0, 255, (3, 4, 32, 32, 3), dtype=np.uint8), mask, np.zeros(3), list("abc")
    )
    record = export_litert(model, sampling, tmp_path, "float", clips)
    assert record["float"]["passed"] and record["float"]["max_abs_diff"] <= 1e-4, record
    assert record["clips"] == 3 and record["file"] == FLOAT_FILE
    assert record["float"]["top_label_agreement"] == 1.0
    got = ClipRunner(tmp_path / FLOAT_FILE)(clips.frames, clips.mask)
    assert got["classes"].shape == (3, 2) and got["timeline"].shape == (3, 4, 3)
