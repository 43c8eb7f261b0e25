"""training/learn/pseudo_labels.py: which unlabelled clips become pseudo-labels, the rounds a
first model's fit runs on them (training/learn/fit.py), and the settings that turn them on.
``videoloop train --pseudo-labels`` is run by tests/backend/cli/test_cli.py."""

from __future__ import annotations

import numpy as np
import pytest

from training.learn.config import TrainConfig, TrainingRun
from training.learn.dataset import ClipArrays
from training.learn.fit import fit
from training.learn.pretext import decode_unlabelled
from training.learn.pseudo_labels import fine_tune_on_pseudo_labels, select_confident
from training.model.build import build_model
from training.model.config import ModelConfig
from training.settings import Settings
from training.video.clip import SamplingConfig
from training.video.synth import generate_dataset

TINY = ModelConfig(conv_filters=(8, 8, 8, 8), frame_features=8, lstm_units=8)
SAMPLING = SamplingConfig(frames=6, height=32, width=32)


def clips(y: list[int], seed: int = 0, frame_y: bool = False) -> ClipArrays:
    """Random clips of SAMPLING's shape with classes ``y`` (-1: unlabelled)."""
    rng = np.random.default_rng(seed)
    n, t = len(y), SAMPLING.frames
    frames = rng.integers(0, 255, (n, t, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 2, (n, t)).astype(np.int32) if frame_y else None
    return ClipArrays(
        frames,
        np.ones((n, t), bool),
        np.asarray(y, np.int32),
        [f"c{seed}:{i}" for i in range(n)],
        frame_y=targets,
    )


def test_only_confident_clips_are_taken_at_most_per_class_with_their_predicted_class():
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # 0: class 0, confident
            [0.50, 0.40, 0.10],  # 1: class 0, below the threshold
            [0.95, 0.03, 0.02],  # 2: class 0, the most confident
            [0.85, 0.10, 0.05],  # 3: class 0, confident, but a third one
            [0.10, 0.80, 0.10],  # 4: class 1, exactly at the threshold
            [0.05, 0.15, 0.80],  # 5: class 2
            [0.20, 0.79, 0.01],  # 6: class 1, just below
        ]
    )
    idx, classes = select_confident(probs, threshold=0.8, per_class=2)
    assert idx.tolist() == [2, 0, 4, 5]  # class by class, the most confident first
    assert classes.tolist() == [0, 0, 1, 2] and classes.dtype == np.int32
    none, no_classes = select_confident(probs, threshold=0.99, per_class=2)
    assert len(none) == len(no_classes) == 0


def test_no_rounds_leave_the_model_as_it_is():
    model = build_model(2, SAMPLING, TINY)
    before = [w.copy() for w in model.get_weights()]
    events: list[dict] = []
    history, taken = fine_tune_on_pseudo_labels(
        model, clips([0, 1]), None, clips([-1] * 4, seed=1), 2, TrainConfig(), events.append
    )
    assert (history, taken, events) == ({}, [], [])
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


PSEUDO = TrainConfig(
    epochs=1,
    batch_size=4,
    pseudo_rounds=2,
    pseudo_threshold=0.0,  # a model trained 1 epoch on noise is sure of nothing
    pseudo_per_class=3,
    pseudo_epochs=2,
)


@pytest.mark.slow
def test_a_first_fit_runs_its_pseudo_label_rounds():
    events: list[dict] = []
    model, history, init = fit(
        clips([0, 0, 1, 1]),
        clips([0, 1], seed=2),
        ["a", "b"],
        SAMPLING,
        TINY,
        PSEUDO,
        progress=events.append,
        unlabelled=clips([-1] * 10, seed=1),
    )
    assert init == "scratch"
    pseudo = [e for e in events if e.get("stage") == "pseudo"]
    assert [(e["epoch"], e["epochs"]) for e in pseudo] == [(1, 2), (2, 2)] * 2
    assert "val_loss" in pseudo[0]  # validated on the real labelled clips
    taken = history["pseudo_labels"]
    assert len(taken) == 2 and all(1 <= n <= 6 for n in taken)  # up to 3 a class
    assert len(history["loss"]) == 1 + 2 * 2  # the rounds' epochs follow the first fit's
    assert model.output["classes"].shape[-1] == 2


@pytest.mark.slow
def test_pseudo_labels_need_unlabelled_clips_and_a_class_head_without_a_timeline():
    events: list[dict] = []
    _, history, _ = fit(
        clips([0, 1, 0, 1], frame_y=True),
        None,
        ["a", "b"],
        SAMPLING,
        TINY,
        PSEUDO,
        progress=events.append,
        timeline_labels=["x"],  # pseudo-labelled clips would have no frame targets
        unlabelled=clips([-1] * 4, seed=1),
    )
    assert "pseudo_labels" not in history
    _, history, _ = fit(
        clips([0, 1]), None, ["a", "b"], SAMPLING, TINY, PSEUDO, progress=events.append
    )
    assert "pseudo_labels" not in history
    assert not [e for e in events if e.get("stage") == "pseudo"]


def test_pseudo_label_settings_reach_the_training_config_and_are_checked(monkeypatch):
    assert Settings().train_config().pseudo_rounds == 0  # off by default
    for name, value in (
        ("PSEUDO_LABELS", "2"),
        ("PSEUDO_THRESHOLD", "0.9"),
        ("PSEUDO_PER_CLASS", "5"),
        ("PSEUDO_EPOCHS", "3"),
    ):
        monkeypatch.setenv(name, value)
    config = Settings.from_env().train_config()
    assert (config.pseudo_rounds, config.pseudo_threshold) == (2, 0.9)
    assert (config.pseudo_per_class, config.pseudo_epochs) == (5, 3)
    for field, value, variable in (
        ("pseudo_labels", -1, "PSEUDO_LABELS"),
        ("pseudo_threshold", 1.5, "PSEUDO_THRESHOLD"),
        ("pseudo_per_class", 0, "PSEUDO_PER_CLASS"),
        ("pseudo_epochs", 0, "PSEUDO_EPOCHS"),
    ):
        with pytest.raises(ValueError, match=variable):
            Settings(**{field: value})


def test_unlabelled_videos_are_decoded_when_only_pseudo_labels_ask_for_them(tmp_path):
    assert not TrainConfig().uses_unlabelled()
    assert TrainConfig(pseudo_rounds=1).uses_unlabelled()
    assert TrainConfig(pretrain="order").uses_unlabelled()
    # pseudo-labels need a class head and no timeline head; pre-training takes any heads
    assert not TrainConfig(pseudo_rounds=1).uses_unlabelled(classes=False, timeline=True)
    assert not TrainConfig(pseudo_rounds=1).uses_unlabelled(classes=True, timeline=True)
    assert TrainConfig(pretrain="order").uses_unlabelled(classes=False, timeline=True)
    manifest = generate_dataset(
        tmp_path / "v", classes=["grow", "shrink"], per_class=1, width=64, height=48
    )
    videos = sorted(manifest.parent.rglob("*.mp4"))
    run = TrainingRun(train_config=TrainConfig(pseudo_rounds=1))
    arrays = decode_unlabelled(videos, SAMPLING, run)
    assert arrays is not None and len(arrays) == 2
    assert decode_unlabelled(videos, SAMPLING, TrainingRun()) is None  # both off


def test_copies_of_labelled_videos_are_not_taken_as_unlabelled(tmp_path):
    """A duplicate upload must not reach training with a pseudo-label while it is a test clip."""
    manifest = generate_dataset(
        tmp_path / "v", classes=["grow", "shrink"], per_class=2, width=64, height=48
    )
    videos = sorted(manifest.parent.rglob("*.mp4"))
    copy = tmp_path / "copy-of-first.mp4"
    copy.write_bytes(videos[0].read_bytes())
    run = TrainingRun(train_config=TrainConfig(pseudo_rounds=1, pretrain_clips=3))
    pool = [copy, *videos[1:]]
    arrays = decode_unlabelled(pool, SAMPLING, run, labelled=[videos[0]])
    assert arrays is not None and len(arrays) == 3  # the copy left out, the cap still filled
    assert str(copy) not in arrays.sources and str(videos[1]) in arrays.sources
    assert len(decode_unlabelled(pool, SAMPLING, run)) == 3  # nothing labelled: the first 3
