"""Training under windowed sampling (training/learn/windowed_data.py): a long annotated video
gives many windows, decoded once into the clip cache, background windows capped, and the
held-out split by video; a run publishes a windowed version that serving samples the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.labelstudio.timeline import NO_LABEL
from training.learn.config import TrainConfig, TrainingData, TrainingRun
from training.learn.dataset import LabelledVideo, grouped_split, stable_split
from training.learn.publish import train_and_publish
from training.learn.windowed_data import BACKGROUND_SHARE, decode_windowed, select_windows
from training.model.config import ModelConfig
from training.model.loaded import load_version
from training.versions.store import SPLIT_FILE, ModelStore
from training.video.clip import SamplingConfig
from training.video.clipcache import ClipCache
from training.video.synth_long import LONG_LABELS, generate_long_set, read_long_set

TINY = ModelConfig(conv_filters=(8, 8, 8, 8), frame_features=8, lstm_units=8)
WINDOWED = SamplingConfig(frames=8, height=32, width=32, sample_fps=4.0)


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    generate_long_set(out, videos=4, seed=7, seconds=(30.0, 40.0), segments=(3, 5))
    return [
        LabelledVideo(v.path, segments=tuple(v.segments), frame_rate=v.fps)
        for v in read_long_set(out)
    ]


def test_a_long_video_gives_its_labelled_windows_and_some_background(long_videos, tmp_path):
    cache = ClipCache(tmp_path / "clips", 1 << 30)
    arrays, skipped = decode_windowed(
        long_videos[:1], [], WINDOWED, cache=cache, timeline_labels=LONG_LABELS, keys=["task:1"]
    )
    assert not skipped
    assert len(arrays) > 10 and arrays.frames.shape[1:] == (8, 32, 32, 3)
    labelled = (arrays.frame_y > NO_LABEL).any(axis=1)
    assert labelled.sum() >= 5
    assert (~labelled).sum() <= max(1, BACKGROUND_SHARE * labelled.sum())
    assert set(arrays.keys) == {"task:1"}
    assert cache.misses == 1
    again, _ = decode_windowed(
        long_videos[:1], [], WINDOWED, cache=cache, timeline_labels=LONG_LABELS, keys=["task:1"]
    )
    assert cache.hits == 1  # decoded once, stored with its windows
    np.testing.assert_array_equal(again.frames, arrays.frames)
    np.testing.assert_array_equal(again.frame_y, arrays.frame_y)


def test_select_windows_caps_background_and_keeps_unannotated():
    labelled = np.array([0, 1, 1, 0])
    background = np.zeros(4, int)
    ignored = np.full(4, -1)
    targets = [labelled] * 2 + [background] * 10 + [ignored]
    kept = select_windows(targets)
    assert kept[:2] == [0, 1] and kept[-1] == 12
    assert len(kept) == 2 + 1 + 1


def test_the_split_keeps_a_videos_windows_together():
    keys = [f"video:{i // 7}" for i in range(140)]  # 20 videos, 7 windows each
    y = np.full(140, -1)
    parts = grouped_split(keys, y, (0.2, 0.15))
    assert sorted(np.concatenate(parts).tolist()) == list(range(140))
    owners = [{keys[i] for i in p} for p in parts]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2])
    assert all(owners)
    distinct = [f"k{i}" for i in range(30)]
    y2 = np.arange(30) % 3
    for a, b in zip(
        grouped_split(distinct, y2, (0.2, 0.1)), stable_split(distinct, y2, (0.2, 0.1)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_a_run_publishes_a_windowed_version_split_by_video(long_videos, tmp_path):
    store = ModelStore(tmp_path / "models")
    keys = [f"task:{i}" for i in range(len(long_videos))]
    data = TrainingData(long_videos, labels=[], timeline_labels=LONG_LABELS, keys=keys)
    run = TrainingRun(
        sampling=WINDOWED, model_config=TINY, train_config=TrainConfig(epochs=1, batch_size=8)
    )
    info = train_and_publish(store, "p", data, run)
    assert SamplingConfig.from_dict(info.meta["sampling"]) == WINDOWED
    split = json.loads((info.path / SPLIT_FILE).read_text())
    held_out = set(split["test"]) | set(split["val"])
    assert held_out and not held_out & set(split["train"])
    assert load_version(info).sampling == WINDOWED
