"""The issue-17 extensions of bench/quality.py build, train a step and predict (tiny shapes),
and the cheap flows point the way things move.

Why: the bench rows swap a step of the product's build while they train; a build change
that breaks the swap should fail here, not an hour into a bench run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import optical_flow
from extensions import EXTENSIONS, extension_built


def _moving_square(dx: int, dy: int, size: int = 48, frames: int = 4) -> np.ndarray:
    """(frames, size, size) uint8: a smooth bright blob moving (dx, dy) pixels a frame."""
    yy, xx = np.mgrid[:size, :size]
    out = []
    for t in range(frames):
        cx, cy = size / 3 + dx * t, size / 3 + dy * t
        out.append(200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 40.0) + 20)
    return np.stack(out).round().astype(np.uint8)


@pytest.mark.parametrize("method", optical_flow.METHODS)
@pytest.mark.parametrize(("dx", "dy"), [(2, 0), (-2, 0), (0, 2)])
def test_flow_points_the_way_the_blob_moves(method, dx, dy):
    flow = optical_flow.clip_flow(_moving_square(dx, dy), method)
    assert flow.shape == (4, 48, 48, 2)
    assert not flow[0].any()  # no frame before the first
    strong = np.linalg.norm(flow[1:], axis=-1) > 0.05
    mean = flow[1:][strong].mean(axis=0)
    assert np.sign(mean[0]) == np.sign(dx) or dx == 0
    assert np.sign(mean[1]) == np.sign(dy) or dy == 0
    assert abs(mean[0]) > abs(mean[1]) if dx else abs(mean[1]) > abs(mean[0])


@pytest.mark.slow  # trains (4 clips of 4 x 32 x 32, one epoch: about 10 s)
@pytest.mark.parametrize("name", ["conv3d stem", "two-stream normal"])
def test_an_extension_trains_through_fit_saves_and_restores_the_build(name, tmp_path):
    import keras

    from training.learn.config import TrainConfig
    from training.learn.dataset import ClipArrays
    from training.learn.fit import fit
    from training.model import build
    from training.model.config import ModelConfig
    from training.video.clip import SamplingConfig

    sampling = SamplingConfig(frames=4, height=32, width=32)
    config = ModelConfig(**EXTENSIONS[name]["fields"])
    plain = build.build_model(2, sampling, config).count_params()
    rng = np.random.default_rng(0)
    clips = ClipArrays(
        rng.integers(0, 256, (4, 4, 32, 32, 3), dtype=np.uint8),
        np.ones((4, 4), bool),
        np.array([0, 1, 0, 1], np.int32),
        ["a", "b", "c", "d"],
    )
    with extension_built(name, sampling.frames):
        model, history, _ = fit(
            clips, None, ["l", "r"], sampling, config, TrainConfig(epochs=1, batch_size=2)
        )
    assert build.build_model(2, sampling, config).count_params() == plain  # swap undone
    assert model.count_params() > plain
    names = {layer.name for layer in model.layers}
    assert ("stem3d_conv" in names) == (name == "conv3d stem")
    assert ("optical_flow" in names) == name.startswith("two-stream")
    assert len(history["loss"]) == 1
    probs = model.predict_on_batch({"frames": clips.frames, "mask": clips.mask})["classes"]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    model.save(tmp_path / "m.keras")  # as bench/quality.py does after measuring
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    restored = again.predict_on_batch({"frames": clips.frames, "mask": clips.mask})["classes"]
    np.testing.assert_allclose(restored, probs, atol=1e-5)
