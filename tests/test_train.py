"""Training: splits, class weights, warm starts, float32 publishing, what a version holds."""

from __future__ import annotations

import numpy as np
import pytest

from training.dataset import class_weights, stratified_split
from training.model import ModelConfig, build_model
from training.sampling import SamplingConfig
from training.store import ModelStore
from training.train import TrainConfig, TrainingError, as_float32, train_and_publish, warm_start

TINY = ModelConfig(conv_filters=(8, 16, 16, 16), frame_features=16, lstm_units=16)
SMALL_CLIPS = SamplingConfig(frames=8, height=64, width=64)


def test_stratified_split_spreads_every_class_and_loses_nothing():
    y = np.array([0] * 30 + [1] * 10 + [2] * 3)
    train, test, val = stratified_split(y, (0.2, 0.15), seed=1)
    assert sorted(np.concatenate([train, test, val]).tolist()) == list(range(len(y)))
    assert [int((y[test] == c).sum()) for c in range(3)] == [6, 2, 1]
    assert [int((y[val] == c).sum()) for c in range(3)] == [4, 2, 1]
    again = stratified_split(y, (0.2, 0.15), seed=1)
    assert all((a == b).all() for a, b in zip((train, test, val), again, strict=True))


def test_class_weights_balance_rare_labels():
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights[1] == pytest.approx(3 * weights[0])
    assert weights[2] == 1.0  # absent label: neutral


def weights_of(model, name):
    return [w.copy() for w in model.get_layer(name).get_weights()]


def test_warm_start_keeps_everything_when_labels_are_unchanged(trained_model):
    model = build_model(2, SMALL_CLIPS, TINY)
    assert warm_start(model, trained_model.info, trained_model.labels) == "parent"
    import keras

    parent = keras.saving.load_model(trained_model.info.model_path, compile=False)
    for name in ("conv0", "lstm", "classes", "frame_features"):
        for got, want in zip(weights_of(model, name), weights_of(parent, name), strict=True):
            np.testing.assert_array_equal(got, want)


def test_warm_start_with_new_labels_keeps_cnn_and_lstm_and_starts_a_new_head(trained_model):
    import keras

    parent = keras.saving.load_model(trained_model.info.model_path, compile=False)
    model = build_model(3, SMALL_CLIPS, TINY)
    fresh_head = weights_of(model, "classes")
    init = warm_start(model, trained_model.info, [*trained_model.labels, "grow"])
    assert init == "parent-new-head"
    for got, want in zip(weights_of(model, "lstm"), weights_of(parent, "lstm"), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(weights_of(model, "classes"), fresh_head, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_model_trained_under_mixed_precision_is_published_as_float32():
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_model(2, SMALL_CLIPS, TINY)
        assert mixed.get_layer("conv0").compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        clean = as_float32(mixed, 2, SMALL_CLIPS, TINY)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(layer.compute_dtype == "float32" for layer in clean.layers if layer.weights)
    batch = {
        "frames": np.random.default_rng(0).integers(0, 255, (2, 8, 64, 64, 3), dtype=np.uint8),
        "mask": np.ones((2, 8), bool),
    }
    np.testing.assert_allclose(
        clean.predict_on_batch(batch), mixed.predict_on_batch(batch), atol=2e-2
    )


def test_a_published_version_holds_its_model_metrics_and_pictures(trained_model, tmp_path):
    store = ModelStore(tmp_path)
    videos = [(p, p.parent.name) for p in trained_model.synth_clips]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    info = train_and_publish(
        store,
        "5",
        [*videos, (broken, videos[0][1])],
        sampling=SMALL_CLIPS,
        model_config=TINY,
        train_config=TrainConfig(epochs=2, batch_size=4, augment=True),
        parent=trained_model.info,
        extra_meta={"source": {"test": True}},
    )
    assert store.get_current("5") == info.version
    meta = info.meta
    assert meta["labels"] == trained_model.labels
    assert meta["sampling"] == SMALL_CLIPS.to_dict()
    assert meta["init"] == "parent" and meta["parent"] == trained_model.info.version
    assert meta["dataset"]["videos"] == len(videos) + 1
    assert meta["dataset"]["train"] + meta["dataset"]["val"] + meta["dataset"]["test"] == len(
        videos
    )
    assert [s["video"] for s in meta["dataset"]["skipped"]] == [str(broken)]
    assert len(meta["history"]["loss"]) == meta["training"]["epochs_run"] <= 2
    assert meta["metrics"]["test"]["count"] == meta["dataset"]["test"]
    assert np.asarray(meta["metrics"]["test"]["confusion_matrix"]).sum() == meta["dataset"]["test"]
    assert meta["source"] == {"test": True}
    assert {"created_at", "software", "model"} <= meta.keys()
    for picture in ("learning_curve.png", "confusion_matrix.png"):
        assert (info.path / picture).read_bytes()[:4] == b"\x89PNG"


def test_a_label_without_any_readable_video_is_refused(trained_model, tmp_path):
    videos = [(p, "left_to_right") for p in trained_model.synth_clips[:2]]
    with pytest.raises(TrainingError, match="right_to_left"):
        train_and_publish(
            ModelStore(tmp_path),
            "5",
            videos,
            labels=["left_to_right", "right_to_left"],
            sampling=SMALL_CLIPS,
            model_config=TINY,
            train_config=TrainConfig(epochs=1),
        )
    assert ModelStore(tmp_path).list_versions("5") == []
