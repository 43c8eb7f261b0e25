"""training/model/windowed.py through predict_clips (the path /predict, the refresh and the CLI
share): a long video's windows are predicted in batches and stitched; a short one is
predicted exactly as without windows; the sampling comes from the version's meta."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from training.model.build import build_model
from training.model.config import ModelConfig
from training.model.inference import ClipPrediction, Failure, predict_clips
from training.model.loaded import load_version
from training.model.windowed import SMOOTH_SAMPLES, smooth
from training.versions.store import MODEL_FILE, ModelStore
from training.video.clip import SamplingConfig
from training.video.decode_limits import DecodeLimits
from training.video.synth import write_video
from training.video.synth_long import generate_long_set, read_long_set
from training.video.windows import WindowedVideo, open_video

TINY = ModelConfig(conv_filters=(8, 8, 8, 8), frame_features=8, lstm_units=8)
WINDOWED = SamplingConfig(frames=8, height=32, width=32, sample_fps=4.0)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """One tiny model (classes and timeline) published twice: with and without windows."""
    base = tmp_path_factory.mktemp("windowed")
    model = build_model(2, WINDOWED, TINY, timeline_labels=2)
    store = ModelStore(base / "models")
    infos = {}
    for name, sampling in (
        ("windowed", WINDOWED),
        ("plain", dataclasses.replace(WINDOWED, sample_fps=0.0)),
    ):

        def write(folder, sampling=sampling):
            model.save(folder / MODEL_FILE)
            return {
                "labels": ["a", "b"],
                "timeline_labels": ["x", "y"],
                "sampling": sampling.to_dict(),
            }

        infos[name] = store.publish(name, write)
    generate_long_set(base / "long", videos=1, seed=6, seconds=(40.0, 40.0), segments=(4, 5))
    return infos, read_long_set(base / "long")[0]


def predict(model, sources) -> list:
    with ThreadPoolExecutor(2) as pool:
        return [
            outcome
            for _, outcome in sorted(predict_clips(model, sources, pool), key=lambda x: x[0])
        ]


def test_windows_are_stitched_by_averaging_then_one_smoothing(versions):
    infos, long_video = versions
    model = load_version(infos["windowed"], batch_size=3)
    assert model.sampling == WINDOWED  # from meta.json
    (outcome,) = predict(model, [lambda: open_video(long_video.path, model.sampling)])
    assert isinstance(outcome, ClipPrediction)

    windows = list(open_video(long_video.path, WINDOWED).windows())  # by hand, one at a time
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    classes = []
    for w in windows:
        out = model.predict(w.frames[None], w.mask[None])
        classes.append(out["classes"][0])
        for t, index in enumerate(w.indices):
            sums[index] = sums.get(index, 0) + out["timeline"][0][t]
            counts[index] = counts.get(index, 0) + 1
    indices = sorted(sums)
    mean = np.stack([sums[i] / counts[i] for i in indices])
    assert outcome.clip.indices == indices
    np.testing.assert_allclose(outcome.timeline, smooth(mean, SMOOTH_SAMPLES), atol=1e-5)
    np.testing.assert_allclose(outcome.classes, np.mean(classes, axis=0), atol=1e-5)
    assert outcome.clip.frame_count == 400 and outcome.clip.fps == 10.0
    segments = outcome.segments(frame_rate=10.0)
    assert segments is not None
    assert all(s.segment.end <= 400 for s in segments)


def test_a_short_video_gets_the_same_prediction_as_without_windows(versions, tmp_path):
    infos, _ = versions
    slow = load_version(infos["windowed"], batch_size=2)
    plain = load_version(infos["plain"], batch_size=2)
    path = tmp_path / "short.mp4"  # 1.2 s: 5 samples at 4 fps, under one window of 8
    frames = np.random.default_rng(0).integers(0, 255, (12, 48, 64, 3), dtype=np.uint8)
    write_video(path, frames, fps=10)
    sources = [lambda: open_video(path, slow.sampling)]
    assert not isinstance(sources[0](), WindowedVideo)
    (a,) = predict(slow, sources)
    (b,) = predict(plain, [lambda: open_video(path, plain.sampling)])
    np.testing.assert_allclose(a.classes, b.classes, atol=1e-6)
    np.testing.assert_allclose(a.timeline, b.timeline, atol=1e-6)
    assert a.clip.indices == b.clip.indices


def test_a_long_video_over_a_limit_fails_alone(versions, data_dir):
    infos, long_video = versions
    model = load_version(infos["windowed"], batch_size=2)
    strict = DecodeLimits(max_frames=100)  # the container says 400: refused when opened
    outcomes = predict(
        model,
        [
            lambda: open_video(long_video.path, WINDOWED, limits=strict),
            lambda: open_video(data_dir / "b.mp4", WINDOWED),
        ],
    )
    assert isinstance(outcomes[0], Failure) and outcomes[0].kind == "max_video_frames"
    assert isinstance(outcomes[1], ClipPrediction)


def test_a_deadline_stops_a_long_video(versions):
    import time

    infos, long_video = versions
    model = load_version(infos["windowed"], batch_size=1)
    with ThreadPoolExecutor(1) as pool:
        outcomes = list(
            predict_clips(
                model,
                [lambda: open_video(long_video.path, WINDOWED)],
                pool,
                deadline=time.monotonic() - 1,
            )
        )
    assert outcomes[0][1].unfinished
