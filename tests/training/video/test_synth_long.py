"""The long synthetic set: real MP4 files, Label Studio tasks that read back to the segments
that were drawn, and motion only inside the segments."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from training.labelstudio.timeline import Segment
from training.video.synth_long import (
    LONG_TASKS_NAME,
    generate_long_set,
    plan_segments,
    read_long_set,
)


@pytest.fixture(scope="module")
def long_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    generate_long_set(out, videos=2, seed=3, seconds=(30.0, 40.0), segments=(4, 6), fps=8)
    return out


def test_tasks_read_back_as_segments_inside_the_video(long_set):
    videos = read_long_set(long_set)
    assert len(videos) == 2
    for video in videos:
        with av.open(str(video.path)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert video.fps == 8
        assert 30 * 8 - 1 <= frames <= 40 * 8 + 1
        assert 4 <= len(video.segments) <= 6
        ends = [0] + [s.end for s in video.segments]
        starts = [s.start for s in video.segments]
        assert all(start > end for start, end in zip(starts, ends, strict=False))  # gaps
        assert video.segments[-1].end < frames


def test_tasks_are_label_studio_timeline_regions(long_set):
    tasks = json.loads((long_set / LONG_TASKS_NAME).read_text())
    region = tasks[0]["annotations"][0]["result"][0]
    assert region["type"] == "timelinelabels"
    assert set(region["value"]) == {"ranges", "timelinelabels"}
    assert tasks[0]["data"]["fps"] == 8


def test_the_shape_moves_only_inside_segments(tmp_path):
    """Without clutter, frames change inside segments and stay still in the gaps."""
    generate_long_set(tmp_path, videos=1, seed=4, seconds=(30.0, 30.0), segments=(4, 4), fps=8,
                      clutter=False)  # fmt: skip
    video = read_long_set(tmp_path)[0]
    with av.open(str(video.path)) as container:
        grey = np.stack(
            [f.to_ndarray(format="gray").astype(np.int16) for f in container.decode(video=0)]
        )
    change = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))
    inside = np.zeros(len(grey) - 1, bool)
    for s in video.segments:
        inside[s.start - 2 : s.end - 1] = True  # diff k: 1-based frame k+1 -> k+2
    assert np.median(change[inside]) > 0.1 > 0.02 > np.median(change[~inside])


def test_same_seed_same_set(tmp_path, long_set):
    generate_long_set(tmp_path, videos=1, seed=3, seconds=(30.0, 40.0), segments=(4, 6), fps=8)
    assert read_long_set(tmp_path)[0].segments == read_long_set(long_set)[0].segments


def test_segments_that_do_not_fit_are_dropped():
    rng = np.random.default_rng(0)
    segments = plan_segments(rng, frames=100, fps=10, count=(30, 30), labels=["grow"])
    assert 1 <= len(segments) < 30
    assert all(isinstance(s, Segment) and s.end <= 100 for s in segments)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError):
        generate_long_set(tmp_path, videos=1, seconds=(10.0, 5.0))
    with pytest.raises(ValueError):
        generate_long_set(tmp_path, videos=1, labels=["walking"])
