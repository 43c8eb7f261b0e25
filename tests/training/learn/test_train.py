"""Training: splits, class weights, warm starts, float32 publishing, the quality gate, what a
version holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.learn.config import TrainConfig, TrainingData, TrainingRun
from training.learn.dataset import (
    ClipArrays,
    class_weights,
    content_keys,
    decode_labelled,
    stable_split,
    stratified_split,
)
from training.learn.evaluate import predict_arrays
from training.learn.fit import as_float32, warm_start
from training.learn.gate import NOTHING_HELD_OUT, gate_allows, quality_gate
from training.learn.publish import TrainingError, train_and_publish
from training.model.build import build_model, load_keras_model
from training.model.config import ModelConfig
from training.model.litert import META_KEY as LITERT_META
from training.model.litert import quantized_file
from training.versions.store import SPLIT_FILE, ModelStore
from training.video.clip import SamplingConfig

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


def parts_of(keys: list[str], split: list[np.ndarray]) -> dict[str, int]:
    return {keys[i]: part for part, idx in enumerate(split) for i in idx}


def test_stable_split_keeps_most_keys_in_their_part_as_the_data_grows():
    rng = np.random.default_rng(0)
    keys = [f"task:{i}" for i in range(400)]
    y = rng.integers(0, 3, len(keys))
    small = parts_of(keys[:100], stable_split(keys[:100], y[:100], (0.2, 0.15)))
    big_split = stable_split(keys, y, (0.2, 0.15))
    big = parts_of(keys, big_split)
    assert sorted(np.concatenate(big_split).tolist()) == list(range(len(keys)))
    # Parts follow the rank of each key's hash: only keys near a boundary move, so most
    # test clips stay test clips and few training clips become test clips (the quality
    # gate leaves out those, by the split.json of the version that trained on them).
    kept = [big[k] == 1 for k, part in small.items() if part == 1]
    assert sum(kept) / len(kept) > 0.7
    moved_in = [big[k] == 1 for k, part in small.items() if part == 0]
    assert sum(moved_in) / len(moved_in) < 0.1
    # The order of the items and their neighbours play no part.
    order = rng.permutation(len(keys))
    shuffled = [keys[i] for i in order]
    assert parts_of(shuffled, stable_split(shuffled, y[order], (0.2, 0.15))) == big
    # Sizes follow the fractions exactly, per class.
    for cls in range(3):
        n = int((y == cls).sum())
        assert int((y[big_split[1]] == cls).sum()) == round(0.2 * n)
        assert int((y[big_split[2]] == cls).sum()) == round(0.15 * n)


def test_stable_split_gives_small_classes_a_test_and_a_validation_clip():
    keys = [f"k{i}" for i in range(10)]
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    train, test, val = stable_split(keys, y, (0.2, 0.15))
    for cls in (0, 1):  # >= 3 clips: at least one in each part
        assert (y[train] == cls).sum() >= 1 and (y[test] == cls).sum() >= 1
        assert (y[val] == cls).sum() >= 1
    for cls in (2, 3):  # fewer than 3: all kept for training
        assert (y[train] == cls).sum() == (y == cls).sum()
    assert stable_split(keys, y, (0.2, 0.15))[1].tolist() == test.tolist()
    with pytest.raises(ValueError):
        stable_split(keys[:3], y, (0.2, 0.15))


def test_content_keys_follow_the_bytes_not_the_name(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"same")
    (tmp_path / "b.mp4").write_bytes(b"same")
    (tmp_path / "c.mp4").write_bytes(b"other")
    a, b, c, missing = content_keys([tmp_path / n for n in ("a.mp4", "b.mp4", "c.mp4", "x.mp4")])
    assert a == b != c and a.startswith("sha256:")
    assert missing == f"path:{tmp_path / 'x.mp4'}"


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
        clean.predict_on_batch(batch)["classes"],
        mixed.predict_on_batch(batch)["classes"],
        atol=2e-2,
    )


def test_a_published_version_holds_its_model_metrics_and_pictures(trained_model, tmp_path):
    store = ModelStore(tmp_path)
    videos = [(p, p.parent.name) for p in trained_model.synth_clips]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    info = train_and_publish(
        store,
        "5",
        TrainingData([*videos, (broken, videos[0][1])]),
        TrainingRun(
            sampling=SMALL_CLIPS,
            model_config=TINY,
            train_config=TrainConfig(epochs=2, batch_size=4, augment=True),
            parent=trained_model.info,
            extra_meta={"source": {"test": True}},
        ),
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
    split = json.loads((info.path / SPLIT_FILE).read_text())
    assert sorted(split) == ["test", "train", "val"]
    assert len(split["test"]) == meta["dataset"]["test"]
    assert all(k.startswith("sha256:") for part in split.values() for k in part)
    # The parent was trained in another store on the same clips: its split.json says which
    # clips it saw, and the gate keeps only the others.
    gate = meta["gate"]
    assert gate["current_version"] == trained_model.info.version
    assert gate["metric"] == "accuracy" and gate["tolerance"] == 0.0
    assert gate["clips"] + gate["excluded_seen_by_current"] <= meta["dataset"]["test"]
    for picture in ("learning_curve.png", "confusion_matrix.png"):
        assert (info.path / picture).read_bytes()[:4] == b"\x89PNG"


def test_under_train_all_below_a_run_trains_on_every_labelled_video(trained_model, tmp_path):
    # 8 labelled videos (4 a class): under TRAIN_ALL_BELOW=9 nothing is held out, so the
    # version trains on all 8 and the gate says there was nothing to compare on; at 8 (not
    # under it) the run splits as always.
    store = ModelStore(tmp_path)
    videos = [(p, p.parent.name) for p in trained_model.synth_clips]
    parts = {}
    for below in (9, 8):
        info = train_and_publish(
            store,
            "5",
            TrainingData(videos),
            TrainingRun(
                sampling=SMALL_CLIPS,
                model_config=TINY,
                train_config=TrainConfig(epochs=1, batch_size=4, train_all_below=below),
                parent=trained_model.info,
                litert="float16" if below == 9 else "off",
            ),
        )
        parts[below] = json.loads((info.path / SPLIT_FILE).read_text())
        dataset, gate = info.meta["dataset"], info.meta["gate"]
        assert info.meta["training"]["train_all_below"] == below
        if below == 9:
            assert (dataset["train"], dataset["val"], dataset["test"]) == (8, 0, 0)
            assert gate["passed"] and gate["reason"] == NOTHING_HELD_OUT and gate["clips"] == 0
            # LiteRT parity is checked on training clips then: a LiteRT deployment has a file
            litert = info.meta[LITERT_META]
            assert litert["file"] == quantized_file("float16") and litert["clips"] == 8, litert
        else:
            assert dataset["test"] == dataset["val"] == 2 and dataset["train"] == 4
    assert len(parts[9]["train"]) == 8 and parts[9]["val"] == parts[9]["test"] == []
    assert set(parts[9]["train"]) == {k for part in parts[8].values() for k in part}


def test_a_label_without_any_readable_video_is_refused(trained_model, tmp_path):
    videos = [(p, "left_to_right") for p in trained_model.synth_clips[:2]]
    with pytest.raises(TrainingError, match="right_to_left"):
        train_and_publish(
            ModelStore(tmp_path),
            "5",
            TrainingData(videos, labels=["left_to_right", "right_to_left"]),
            TrainingRun(
                sampling=SMALL_CLIPS, model_config=TINY, train_config=TrainConfig(epochs=1)
            ),
        )
    assert ModelStore(tmp_path).list_versions("5") == []


@pytest.fixture(scope="module")
def synth_arrays(trained_model) -> ClipArrays:
    videos = [(p, p.parent.name) for p in trained_model.synth_clips]
    keys = [f"clip:{p.name}" for p, _ in videos]
    data, _ = decode_labelled(videos, trained_model.labels, SMALL_CLIPS, keys=keys)
    return data


def test_the_gate_scores_both_versions_on_the_same_clips(trained_model, synth_arrays, tmp_path):
    model = load_keras_model(trained_model.info.model_path)
    probs = {"classes": predict_arrays(model, synth_arrays)}
    current_accuracy = float(np.mean(probs["classes"].argmax(axis=1) == synth_arrays.y))
    labels = trained_model.labels

    # The same model as candidate: equal figures, passes at zero tolerance.
    same = quality_gate(probs, synth_arrays, labels, SMALL_CLIPS, trained_model.info)
    assert same["passed"] and same["clips"] == len(synth_arrays)
    assert same["candidate"] == same["current"] == round(current_accuracy, 4)

    # A candidate that gets every clip wrong fails, unless the tolerance covers the gap.
    wrong = {"classes": np.eye(2, dtype=np.float32)[1 - synth_arrays.y]}
    worse = quality_gate(wrong, synth_arrays, labels, SMALL_CLIPS, trained_model.info)
    assert worse["candidate"] == 0.0 and not worse["passed"]
    assert "worse than" in worse["reason"] and not gate_allows(worse)
    assert gate_allows(worse, force=True)
    lenient = quality_gate(
        wrong, synth_arrays, labels, SMALL_CLIPS, trained_model.info, tolerance=1.0
    )
    assert lenient["passed"]

    # A candidate with other sampling: the current model's clips are decoded its own way.
    other = SamplingConfig(frames=6, height=48, width=48)
    videos = [(p, p.parent.name) for p in trained_model.synth_clips]
    coarse, _ = decode_labelled(videos, labels, other, keys=synth_arrays.keys)
    resampled = quality_gate(probs, coarse, labels, other, trained_model.info)
    assert resampled["current"] == same["current"]

    # No current version: passes, saying why.
    alone = quality_gate(wrong, synth_arrays, labels, SMALL_CLIPS, None)
    assert alone["passed"] and alone["current_version"] is None
    assert alone["reason"] == "no current version to compare with"


def test_the_gate_leaves_out_clips_the_current_version_trained_on(trained_model, synth_arrays):
    split = json.loads((trained_model.info.path / SPLIT_FILE).read_text())
    seen = set(split["train"]) | set(split["val"])
    as_seen = ClipArrays(
        synth_arrays.frames,
        synth_arrays.mask,
        synth_arrays.y,
        synth_arrays.sources,
        content_keys(synth_arrays.sources),  # the keys the session model was trained with
    )
    probs = {"classes": np.full((len(as_seen), 2), 0.5, np.float32)}
    gate = quality_gate(probs, as_seen, trained_model.labels, SMALL_CLIPS, trained_model.info)
    unseen = [k for k in as_seen.keys if k not in seen]
    assert gate["excluded_seen_by_current"] == len(as_seen) - len(unseen) > 0
    assert gate["clips"] == len(unseen)


def test_build_model_needs_a_head_and_never_one_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model(1, SMALL_CLIPS, TINY)
    with pytest.raises(ValueError, match="at least one head"):
        build_model(0, SMALL_CLIPS, TINY)
    with pytest.raises(ValueError, match="unknown temporal head 'gru'"):
        build_model(2, SMALL_CLIPS, ModelConfig(temporal="gru"))


def test_adding_a_timeline_keeps_the_parent_and_starts_the_timeline_head(trained_model):
    import keras

    parent = keras.saving.load_model(trained_model.info.model_path, compile=False)
    model = build_model(2, SMALL_CLIPS, TINY, timeline_labels=3)
    fresh_timeline = weights_of(model, "timeline")
    init = warm_start(model, trained_model.info, trained_model.labels, ["a", "b", "c"])
    assert init == "parent-new-head"
    for name in ("lstm", "classes"):  # same labels on the classes head: kept
        for got, want in zip(weights_of(model, name), weights_of(parent, name), strict=True):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(weights_of(model, "timeline"), fresh_timeline, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_gate_judges_a_timeline_only_model_by_its_frames(trained_model, synth_arrays):
    from training.labelstudio.timeline import IGNORE

    n = len(synth_arrays)
    frame_y = np.where(synth_arrays.mask, 1 + synth_arrays.y[:, None], IGNORE).astype(np.int32)
    frame_y[0] = IGNORE  # a clip without timeline annotation does not count
    data = ClipArrays(
        synth_arrays.frames,
        synth_arrays.mask,
        np.full(n, -1, np.int32),
        synth_arrays.sources,
        synth_arrays.keys,
        frame_y,
    )
    right = np.eye(3, dtype=np.float32)[np.clip(frame_y, 0, None)]
    timeline = ["left_to_right", "right_to_left"]
    gate = quality_gate({"timeline": right}, data, [], SMALL_CLIPS, None, timeline_labels=timeline)
    assert gate["metric"] == "frame_accuracy" and gate["candidate"] == 1.0
    # the session's current version classifies clips but has no timeline to compare with
    against = quality_gate(
        {"timeline": right}, data, [], SMALL_CLIPS, trained_model.info, timeline_labels=timeline
    )
    assert against["passed"] and "no comparable timeline output" in against["reason"]


def test_no_held_out_clip_gives_empty_outputs_and_metrics():
    # With two annotated videos everything trains: the evaluation sees no clip at all.
    from training.learn.evaluate import evaluate, predict_outputs

    t = SMALL_CLIPS.frames
    empty = ClipArrays(
        np.zeros((0, t, 64, 64, 3), np.uint8),
        np.zeros((0, t), bool),
        np.zeros(0, np.int32),
        [],
        frame_y=np.zeros((0, t), np.int32),
    )
    model = build_model(2, SMALL_CLIPS, TINY, timeline_labels=2)
    outputs = predict_outputs(model, empty)
    assert outputs["classes"].shape == (0, 2) and outputs["timeline"].shape == (0, t, 3)
    metrics = evaluate(outputs, empty, ["a", "b"], ["x", "y"])
    assert metrics["accuracy"] is None and metrics["timeline"]["frame_accuracy"] is None


def test_batchnorm_statistics_are_recalibrated_on_the_training_clips(synth_arrays):
    import keras

    from training.learn.fit import recalibrate_batchnorm

    model = build_model(2, SMALL_CLIPS, TINY)
    layer = model.get_layer("bn0")
    trainable = [w.copy() for w in model.get_layer("conv0").get_weights()]
    assert np.allclose(layer.moving_variance.numpy(), 1.0)  # Keras's initial value
    # one batch of every clip: the moving statistics become exactly its statistics
    assert recalibrate_batchnorm(model, synth_arrays, batch_size=len(synth_arrays)) > 0
    conv = keras.Model(model.inputs, model.get_layer("conv0").output)
    out = np.asarray(conv({"frames": synth_arrays.frames, "mask": synth_arrays.mask}))
    out = out.reshape(-1, out.shape[-1])
    np.testing.assert_allclose(layer.moving_mean.numpy(), out.mean(axis=0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), out.var(axis=0), rtol=1e-2, atol=1e-6)
    assert layer.momentum == 0.9  # restored
    for got, want in zip(model.get_layer("conv0").get_weights(), trainable, strict=True):
        np.testing.assert_array_equal(got, want)
