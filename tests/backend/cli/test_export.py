"""``videoloop export`` (backend/cli/export.py) through the command line's own entry point: a
LiteRT file that predicts as the published one, a SavedModel whose signature predicts as
Keras, and the refusals. In this process, not a subprocess as tests/backend/cli/test_cli.py
does: importing TensorFlow again in a child costs more than the test is worth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.cli import main
from training.model.litert import ClipRunner, quantized_file


@pytest.fixture
def export(trained_model, tmp_path, monkeypatch, capsys):
    """Runs ``videoloop export`` into ``tmp_path/out``: its exit status and stderr."""
    monkeypatch.setenv("MODEL_DIR", str(trained_model.store_root))

    def run(*args: str) -> tuple[int, str]:
        code = main(["export", "--project", "1", "--out", str(tmp_path / "out"), *args])
        return code, capsys.readouterr().err

    return run


def a_clip(trained_model) -> tuple[np.ndarray, np.ndarray]:
    sampling = trained_model.info.meta["sampling"]
    shape = (1, sampling["frames"], sampling["height"], sampling["width"], 3)
    frames = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    mask = np.ones(shape[:2], bool)
    mask[0, -2:] = False
    return frames, mask


def test_a_litert_export_predicts_as_the_published_file(trained_model, tmp_path, export):
    code, err = export("--format", "litert", "--quantize", "float16")
    assert code == 0, err
    name = quantized_file("float16")
    described = json.loads((tmp_path / "out" / "videoloop.json").read_text())
    assert described["file"] == name and described["version"] == trained_model.info.version
    assert described["outputs"]["classes"] == trained_model.labels
    frames, mask = a_clip(trained_model)
    got = ClipRunner(tmp_path / "out" / name)(frames, mask)
    want = ClipRunner(trained_model.info.path / name)(frames, mask)
    assert set(got) == set(want) == {"classes"}
    np.testing.assert_allclose(got["classes"], want["classes"], atol=1e-5)


def test_a_savedmodel_export_predicts_as_keras(trained_model, tmp_path, export):
    import tensorflow as tf

    from training.model.loaded import load_version

    code, err = export("--format", "savedmodel")
    assert code == 0, err
    serving = tf.saved_model.load(str(tmp_path / "out" / "savedmodel")).signatures
    frames, mask = a_clip(trained_model)
    got = serving["serving_default"](frames=tf.constant(frames), mask=tf.constant(mask))
    want = load_version(trained_model.info).predict(frames, mask)
    np.testing.assert_allclose(got["classes"].numpy(), want["classes"], atol=1e-5)


def test_quantize_is_for_litert_and_the_folder_must_be_new(trained_model, tmp_path, export):
    code, err = export("--format", "savedmodel", "--quantize", "dynamic")
    assert code == 2 and "--quantize is for --format litert" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = export("--format", "litert")
    assert code == 2 and "is not empty" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
