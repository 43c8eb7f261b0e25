"""The ``videoloop`` command as a user runs it: synth -> train -> predict, in subprocesses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO, run_videoloop

from training.versions.store import ModelStore

videoloop = run_videoloop


@pytest.mark.slow
def test_synth_train_predict(tmp_path):
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "models"), "CACHE_DIR": str(tmp_path / "c")}
    data = tmp_path / "synth"

    made = videoloop(
        "synth",
        "--out",
        str(data),
        "--classes",
        "2",
        "--per-class",
        "6",
        "--width",
        "96",
        "--height",
        "64",
        "--seed",
        "3",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    assert summary["clips"] == 12 and summary["classes"] == ["left_to_right", "right_to_left"]
    assert "synth" in made.stderr  # the progress bar

    trained = videoloop(
        "train",
        "--data",
        str(data),
        "--project",
        "4",
        "--frames",
        "8",
        "--size",
        "64",
        "--epochs",
        "2",
        env=env,
    )
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout.strip().splitlines()[-1])
    assert "epoch" in trained.stderr  # the progress bar
    info = ModelStore(tmp_path / "models").get_current_info("4")
    assert info is not None and result["version"] == info.version
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert info.meta["sampling"] == {"frames": 8, "height": 64, "width": 64}
    for picture in ("learning_curve.png", "confusion_matrix.png"):
        assert (info.path / picture).read_bytes()[:4] == b"\x89PNG"

    clip = next((data / "left_to_right").glob("*.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    predicted = videoloop("predict", "--project", "4", str(clip), str(broken), env=env)
    assert predicted.returncode == 1  # one video failed
    good, bad = (json.loads(line) for line in predicted.stdout.strip().splitlines())
    assert good["video"] == str(clip) and good["model_version"] == info.version
    assert good["label"] in info.labels and 0.0 <= good["score"] <= 1.0
    assert abs(sum(good["probabilities"].values()) - 1.0) < 1e-3
    assert bad["video"] == str(broken) and "broken.mp4" in bad["error"]


def test_predict_without_a_model_says_so(tmp_path):
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "models")}
    result = videoloop("predict", "--project", "9", str(Path(REPO, "tests/data/b.mp4")), env=env)
    assert result.returncode == 2
    assert "project 9 has no trained model" in result.stderr


def test_bad_settings_are_reported_not_raised(tmp_path):
    env = {**os.environ, "PORT": "ninety"}
    result = videoloop("status", "--project", "1", env=env)
    assert result.returncode == 2
    assert "PORT must be an integer" in result.stderr


@pytest.mark.slow
def test_predict_prints_the_segments_of_a_timeline_model(tmp_path):
    from training.labelstudio.timeline import Segment
    from training.learn.config import TrainConfig, TrainingData, TrainingRun
    from training.learn.dataset import LabelledVideo
    from training.learn.publish import train_and_publish
    from training.model.config import ModelConfig
    from training.video.clip import SamplingConfig
    from training.video.synth import clip_rng, render_segmented_clip, write_video

    videos = []
    for i in range(6):
        pair = ("left_to_right", "right_to_left")[:: 1 if i % 2 else -1]
        frames, labels = render_segmented_clip(pair, clip_rng(5, 0, i), width=64, height=48)
        path = tmp_path / f"clip{i}.mp4"
        write_video(path, frames, 25)
        split = labels.index(pair[1])
        segments = (Segment(1, split, pair[0]), Segment(split + 1, len(labels), pair[1]))
        videos.append(LabelledVideo(path, None, segments, 25.0))
    store = ModelStore(tmp_path / "models")
    train_and_publish(
        store,
        "6",
        TrainingData(videos, labels=[], timeline_labels=["left_to_right", "right_to_left"]),
        TrainingRun(
            sampling=SamplingConfig(frames=8, height=48, width=48),
            model_config=ModelConfig(conv_filters=(8, 8, 8, 8), lstm_units=8, temporal="bilstm"),
            train_config=TrainConfig(epochs=3, min_epochs=3),
        ),
    )
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "models"), "CACHE_DIR": str(tmp_path / "c")}
    predicted = videoloop("predict", "--project", "6", str(videos[0].path), env=env)
    assert predicted.returncode == 0, predicted.stderr
    row = json.loads(predicted.stdout)
    assert "label" not in row and 0.0 <= row["score"] <= 1.0
    frames = videos[0].segments[-1].end
    assert row["segments"], row  # every training frame had a label: "no label" is learnt away
    for segment in row["segments"]:
        assert segment["label"] in ("left_to_right", "right_to_left")
        assert 1 <= segment["start"] <= segment["end"] <= frames
        assert 0.0 <= segment["score"] <= 1.0


@pytest.mark.slow
def test_train_pretrains_on_a_folder_of_unlabelled_videos(tmp_path):
    from training.video.synth import generate_dataset

    generate_dataset(
        tmp_path / "labelled", classes=["grow", "shrink"], per_class=2, width=48, height=32
    )
    generate_dataset(
        tmp_path / "unlabelled" / "inbox",
        classes=["grow"],
        per_class=3,
        seed=1,
        width=48,
        height=32,
    )
    (tmp_path / "unlabelled" / "notes.txt").write_text("not a video")
    env = {
        **os.environ,
        "MODEL_DIR": str(tmp_path / "models"),
        "CACHE_DIR": str(tmp_path / "c"),
        "PRETRAIN_EPOCHS": "1",
        "PSEUDO_EPOCHS": "1",
        "PSEUDO_THRESHOLD": "0",
        "AUGMENT": "spatial,temporal",
    }
    trained = videoloop(
        "train", "--data", str(tmp_path / "labelled"), "--project", "5",
        "--unlabelled", str(tmp_path / "unlabelled"), "--pseudo-labels", "1",
        "--frames", "6", "--size", "32", "--epochs", "1", "--quiet", env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout.strip().splitlines()[-1])
    assert result["init"] == "pretext:order" and result["unlabelled_clips"] == 3
    info = ModelStore(tmp_path / "models").get_version("5", result["version"])
    assert info.meta["init"] == "pretext:order" and info.meta["dataset"]["unlabelled"] == 3
    training = info.meta["training"]
    assert training["pretrain"] == "order" and training["pretrain_epochs"] == 1
    assert training["pseudo_rounds"] == 1 and training["pseudo_epochs"] == 1
    assert info.meta["history"]["pseudo_labels"] == [3]  # PSEUDO_THRESHOLD 0: every clip
    assert training["augment"] and training["augment_temporal"]


def test_synth_long_writes_label_studio_tasks(tmp_path):
    """``synth --long``: long videos and their timeline annotations, as Label Studio tasks."""
    from training.video.synth_long import read_long_set

    out = tmp_path / "long"
    args = ("synth", "--long", "2", "--seconds", "20-25", "--segments", "2-3", "--out", str(out))
    made = videoloop(*args, "--classes", "grow,shrink", "--fps", "8", env=dict(os.environ))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["labels"] == ["grow", "shrink"]
    videos = read_long_set(out)
    assert len(videos) == 2 and all(v.fps == 8 for v in videos)
    assert all(2 <= len(v.segments) <= 3 for v in videos)
    assert {s.label for v in videos for s in v.segments} <= {"grow", "shrink"}


def test_train_samples_as_sample_mode_says() -> None:
    """``videoloop train`` samples as a project's first model would (SAMPLE_MODE)."""
    from backend.cli import build_parser
    from backend.cli.train import _training_run
    from training.settings import Settings

    args = build_parser().parse_args(["train", "--data", "d", "--project", "1", "--frames", "8"])
    run = _training_run(args, Settings(sample_mode="keyframe"))
    assert (run.sampling.frames, run.sampling.sample_mode) == (8, "keyframe")
    assert _training_run(args, Settings()).sampling.sample_mode == "uniform"


@pytest.mark.parametrize("rounds", ["-1", "two"])
def test_train_refuses_pseudo_label_rounds_below_zero_or_not_a_number(rounds) -> None:
    """--pseudo-labels is checked as PSEUDO_LABELS is: argparse's usage error, status 2."""
    result = videoloop(
        "train", "--data", "d", "--project", "1", "--pseudo-labels", rounds, env=dict(os.environ)
    )
    assert result.returncode == 2
    assert "--pseudo-labels" in result.stderr and "Traceback" not in result.stderr
