"""training/learn/warm_model.py and training/model/kept_versions.py: what a worker keeps warm
between jobs. A kept model must train as a new one would (initial weights, no optimizer
state, the run's learning rate), without building or tracing again; a kept version model is
the one in the file. ``videoloop worker`` turning both on is checked in
tests/loop/test_training_loop.py (a retrain in the same worker)."""

from __future__ import annotations

import numpy as np
import pytest

from training.learn.config import TrainConfig
from training.learn.dataset import decode_labelled
from training.learn.fit import WARM_START_LR_FACTOR, fit
from training.learn.warm_model import WARM_MODEL
from training.model.config import ModelConfig
from training.model.kept_versions import KEPT_VERSIONS, KeptVersions
from training.model.loaded import load_version
from training.video.clip import SamplingConfig

TINY = ModelConfig(conv_filters=(8, 16, 16, 16), frame_features=16, lstm_units=16)
CLIPS = SamplingConfig(frames=8, height=64, width=64)
RUN = TrainConfig(epochs=2, min_epochs=1, batch_size=4, augment=False)


@pytest.fixture
def warm():
    WARM_MODEL.enabled = KEPT_VERSIONS.enabled = True
    WARM_MODEL.hits = WARM_MODEL.misses = 0
    yield WARM_MODEL
    WARM_MODEL.enabled = KEPT_VERSIONS.enabled = False
    WARM_MODEL.clear()
    KEPT_VERSIONS.clear()


@pytest.fixture(scope="module")
def arrays(trained_model):
    videos = [(p, p.parent.name) for p in trained_model.synth_clips]
    data, _ = decode_labelled(videos, trained_model.labels, CLIPS)
    return data


def test_a_second_run_of_the_same_shape_reuses_the_traced_model_from_its_start(warm, arrays):
    labels = ["left_to_right", "right_to_left"]
    first, history, _ = fit(arrays, None, labels, CLIPS, TINY, RUN)
    traced = first.train_function
    after_first = [w.copy() for w in first.get_weights()]
    steps = first.optimizer.iterations.numpy()

    second, again, _ = fit(arrays, None, labels, CLIPS, TINY, RUN)
    assert second is first and second.train_function is traced  # not built, not traced again
    assert (warm.hits, warm.misses) == (1, 1)
    # From the same initial variables (dropout seeds included) and a zeroed optimizer: the
    # same number of steps (not twice as many) and the very losses of the first run.
    assert second.optimizer.iterations.numpy() == steps
    assert again["loss"] == pytest.approx(history["loss"], rel=1e-5)
    assert history["loss"][0] != history["loss"][-1]  # the losses tell a run from another
    for got, want in zip(second.get_weights(), after_first, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_another_shape_gets_a_new_model_and_disabled_builds_every_time(warm, arrays):
    labels = ["left_to_right", "right_to_left"]
    first, _, _ = fit(arrays, None, labels, CLIPS, TINY, RUN)
    wider = ModelConfig(conv_filters=(8, 16, 16, 16), frame_features=16, lstm_units=24)
    other, _, _ = fit(arrays, None, labels, CLIPS, wider, RUN)
    assert other is not first and warm.misses == 2 and warm.hits == 0

    warm.enabled = False
    again, _, _ = fit(arrays, None, labels, CLIPS, wider, RUN)
    assert again is not other and warm.misses == 2


def test_a_warm_start_on_the_kept_model_trains_at_the_lower_rate(warm, arrays, trained_model):
    labels = list(trained_model.labels)
    fit(arrays, None, labels, CLIPS, TINY, RUN)  # leaves the kept model at the full rate
    model, _, init = fit(arrays, None, labels, CLIPS, TINY, RUN, parent=trained_model.info)
    assert init == "parent" and warm.hits == 1
    # No plateau cut in 2 epochs (it starts watching after min_epochs): the rate is the
    # warm-start rate, set on the kept optimizer without compiling again.
    expected = TINY.learning_rate * WARM_START_LR_FACTOR
    assert float(model.optimizer.learning_rate) == pytest.approx(expected)


def test_a_kept_version_serves_every_job_from_one_traced_bundle(warm, trained_model):
    first = load_version(trained_model.info, batch_size=4)
    assert load_version(trained_model.info, batch_size=4) is first
    assert load_version(trained_model.info, batch_size=2) is not first  # another bundle
    probe = np.zeros((3, CLIPS.frames, CLIPS.height, CLIPS.width, 3), np.uint8)
    probs = first.predict_proba(probe, np.ones((3, CLIPS.frames), bool))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_kept_versions_load_a_file_once_and_forget_the_least_recently_used(trained_model, tmp_path):
    kept = KeptVersions(size=1)
    path = trained_model.info.model_path
    assert kept.load(path) is not kept.load(path) and kept.loads == 2  # off: every time

    kept.enabled = True
    model = kept.load(path)
    assert kept.load(path) is model and kept.loads == 3
    probe = np.zeros((1, CLIPS.frames, CLIPS.height, CLIPS.width, 3), np.uint8)
    out = model({"frames": probe, "mask": np.ones((1, CLIPS.frames), bool)})
    assert set(out) == {"classes"}  # named outputs, as load_keras_model gives

    copy = tmp_path / "copy.keras"
    copy.write_bytes(path.read_bytes())
    other = kept.load(copy)
    assert other is not model and kept.load(path) is not model  # size 1: the first was dropped
    assert kept.loads == 5
