"""training/video/windows.py on real files: a long video is read once at the fixed rate and
cut into overlapping windows that cover every sample; a short one is sampled as before."""

from __future__ import annotations

import numpy as np
import pytest

from training.video import windows as windows_module
from training.video.clip import SamplingConfig
from training.video.decoder import sample_clip
from training.video.synth_long import generate_long_set, read_long_set
from training.video.windows import WindowedVideo, open_video, sample_count

WINDOWED = SamplingConfig(frames=8, height=32, width=32, sample_fps=4.0)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    generate_long_set(out, videos=1, seed=5, seconds=(30.0, 30.0), segments=(3, 4), fps=10)
    return read_long_set(out)[0].path


def test_windows_cover_every_sample_at_the_rate_with_overlap(long_video):
    video = open_video(long_video, WINDOWED)
    assert isinstance(video, WindowedVideo)
    windows = list(video.windows())
    samples = sorted({i for w in windows for i in w.indices})
    assert samples == [round(k * 2.5 + 0.49) for k in range(len(samples))]  # 10 fps / 4 = 2.5
    assert len(samples) == sample_count(video.frame_count, 10.0, 4.0) == 120
    assert samples[-1] >= video.frame_count - 3
    starts = [w.indices[0] for w in windows]
    assert starts[:3] == [samples[0], samples[4], samples[8]]  # stride: half a window
    assert all(w.mask.all() and len(w.indices) == 8 for w in windows)
    assert windows[-1].indices[-1] == samples[-1]  # the tail has a window of its own
    assert all(w.frames.shape == (8, 32, 32, 3) for w in windows)


def test_a_window_is_the_frames_sample_clip_reads_at_those_indices(long_video):
    """Same decoder, same resize: a window's frame k is the video's frame indices[k]."""
    window = next(open_video(long_video, WINDOWED).windows())
    plain = sample_clip(long_video, SamplingConfig(frames=300, height=32, width=32))
    for k, index in enumerate(window.indices):
        np.testing.assert_array_equal(window.frames[k], plain.frames[index])


def test_a_video_shorter_than_one_window_is_sampled_as_without_windows(data_dir):
    path = data_dir / "b.mp4"
    slow = SamplingConfig(frames=8, height=32, width=32, sample_fps=0.1)
    clip = open_video(path, slow)
    expected = sample_clip(path, SamplingConfig(frames=8, height=32, width=32))
    np.testing.assert_array_equal(clip.frames, expected.frames)
    assert clip.indices == expected.indices


def test_the_window_count_is_bounded(long_video, monkeypatch):
    from training.video.decode_limits import VideoDecodeError

    monkeypatch.setattr(windows_module, "MAX_WINDOWS", 5)
    with pytest.raises(VideoDecodeError, match="MAX_VIDEO_SECONDS"):
        list(open_video(long_video, WINDOWED).windows())


def test_decode_limits_still_apply(long_video):
    from training.video.decode_limits import DecodeLimits, VideoDecodeError

    with pytest.raises(VideoDecodeError, match="MAX_VIDEO_SECONDS"):
        open_video(long_video, WINDOWED, limits=DecodeLimits(max_duration_s=10.0))


def test_sampling_meta_round_trip_and_old_meta():
    assert SamplingConfig.from_dict(WINDOWED.to_dict()) == WINDOWED
    old = {"frames": 16, "height": 112, "width": 112}  # a version stored before windows
    assert SamplingConfig.from_dict(old) == SamplingConfig()
    assert SamplingConfig().to_dict() == old
    assert WINDOWED.key() != SamplingConfig(frames=8, height=32, width=32).key()
    with pytest.raises(ValueError):
        SamplingConfig(frames=8, sample_fps=4.0, window_stride=9)
    with pytest.raises(ValueError):
        SamplingConfig(sample_fps=-1.0)
