"""Keyframe-nearest sampling (SAMPLE_MODE=keyframe): which frames, the config that asks for it,
and that it never changes what uniform sampling stores."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_decoder import GRAY_FPS, nearest_gray_levels, write_gray_video

from training.settings import Settings
from training.video.clip import SamplingConfig
from training.video.clipcache import ClipCache
from training.video.decode_limits import DecodeBudget, DecodeLimits, VideoDecodeError
from training.video.decoder import frame_indices, sample_clip
from training.video.keyframes import keyframe_indices, nearest_keyframes

UNIFORM = SamplingConfig(frames=8, height=48, width=64)
KEYFRAME = replace(UNIFORM, sample_mode="keyframe")
MB = 1 << 20


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 frames (2 s) each, frame k gray_level(k): a keyframe every 8 frames, only one
    keyframe (the GOP is longer than the video), and every frame a keyframe."""
    tmp = tmp_path_factory.mktemp("keyframes")
    return {
        name: write_gray_video(tmp / f"{name}.mp4", 40, gop=gop)
        for name, gop in (("gop8", 8), ("one_keyframe", 100), ("intra", 1))
    }


def listed_keyframes(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        budget = DecodeBudget(path, DecodeLimits())
        return keyframe_indices(container, stream, Fraction(GRAY_FPS), budget)


# which frames


@pytest.mark.parametrize(
    ("targets", "keyframes", "expected"),
    [
        ([2, 7, 12, 17, 22, 27, 32, 37], [0, 8, 16, 24, 32], [0, 8, 8, 16, 24, 24, 32, 32]),
        ([0, 5, 9], [4], [4, 4, 4]),
        ([50, 99], [0, 30, 60], [60, 60]),
        ([15], [10, 20], [10]),  # a tie goes to the earlier keyframe
    ],
)
def test_nearest_keyframes_pinned(
    targets: list[int], keyframes: list[int], expected: list[int]
) -> None:
    assert nearest_keyframes(targets, keyframes) == expected


def test_keyframes_are_listed_from_packets(videos: dict[str, Path]) -> None:
    assert listed_keyframes(videos["gop8"]) == [0, 8, 16, 24, 32]
    assert listed_keyframes(videos["one_keyframe"]) == [0]
    assert listed_keyframes(videos["intra"]) == list(range(40))


def test_frames_are_the_nearest_keyframes(videos: dict[str, Path]) -> None:
    clip = sample_clip(videos["gop8"], KEYFRAME, seek_above_s=0)
    expected = nearest_keyframes(frame_indices(40, 8), [0, 8, 16, 24, 32])
    assert clip.indices == expected == [0, 8, 8, 16, 24, 24, 32, 32]
    assert nearest_gray_levels(clip.frames) == expected  # the pixels are those frames'
    assert clip.frames.shape == (8, 48, 64, 3)
    assert clip.mask.all()
    assert (clip.frame_count, clip.fps) == (40, GRAY_FPS)


def test_more_frames_than_keyframes_repeat_them(videos: dict[str, Path]) -> None:
    config = replace(KEYFRAME, frames=16)
    clip = sample_clip(videos["gop8"], config, seek_above_s=0)
    assert sorted(set(clip.indices)) == [0, 8, 16, 24, 32]
    assert nearest_gray_levels(clip.frames) == clip.indices
    assert clip.mask.all() and len(clip.indices) == 16


@pytest.mark.parametrize("name", ["one_keyframe", "intra"])
def test_one_keyframe_or_all_intra_samples_uniformly(videos: dict[str, Path], name: str) -> None:
    """One keyframe falls back to uniform; all-intra makes every target its own keyframe."""
    clip = sample_clip(videos[name], KEYFRAME, seek_above_s=0)
    uniform = sample_clip(videos[name], UNIFORM, seek_above_s=0)
    assert clip.indices == uniform.indices == frame_indices(40, 8)
    assert nearest_gray_levels(clip.frames) == clip.indices
    assert clip.mask.all()


def test_videos_decoded_in_order_are_sampled_uniformly(videos: dict[str, Path]) -> None:
    """Keyframe sampling is for videos long enough to be read by seeking."""
    clip = sample_clip(videos["gop8"], KEYFRAME)  # 2 s, under SEEK_ABOVE_S
    assert clip.indices == frame_indices(40, 8)


def test_keyframe_listing_honours_the_decode_limits(videos: dict[str, Path]) -> None:
    with av.open(str(videos["gop8"])) as container:
        budget = DecodeBudget(videos["gop8"], DecodeLimits(max_frames=30))
        with pytest.raises(VideoDecodeError, match="MAX_VIDEO_FRAMES"):
            keyframe_indices(container, container.streams.video[0], Fraction(GRAY_FPS), budget)


# the config that asks for it


def test_uniform_is_stored_as_before() -> None:
    assert UNIFORM.to_dict() == {"frames": 8, "height": 48, "width": 64}
    assert UNIFORM.key() == "t8-48x64"
    assert SamplingConfig.from_dict(UNIFORM.to_dict()) == UNIFORM


def test_keyframe_round_trips_and_has_its_own_key() -> None:
    assert KEYFRAME.to_dict() == {"frames": 8, "height": 48, "width": 64, "sample_mode": "keyframe"}
    assert SamplingConfig.from_dict(KEYFRAME.to_dict()) == KEYFRAME
    assert KEYFRAME.key() == "t8-48x64-kf" != UNIFORM.key()


def test_keyframe_with_windows_or_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sample_fps 0"):
        SamplingConfig(sample_mode="keyframe", sample_fps=4)
    with pytest.raises(ValueError, match="sample_mode must be one of uniform, keyframe"):
        SamplingConfig(sample_mode="nearest")


def test_settings_sample_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMPLE_MODE", "keyframe")
    assert Settings.from_env().first_sampling().sample_mode == "keyframe"
    assert Settings().first_sampling() == SamplingConfig()
    with pytest.raises(ValueError, match="SAMPLE_MODE must be one of uniform, keyframe"):
        Settings(sample_mode="Keyframe")
    with pytest.raises(ValueError, match=r"SAMPLE_MODE: keyframe sampling .* sample_fps 0"):
        Settings(sample_mode="keyframe", sample_fps=4.0)


def test_clip_cache_keeps_the_modes_apart(videos: dict[str, Path], tmp_path: Path) -> None:
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    video = videos["gop8"]
    assert cache.entry_path(video, KEYFRAME) != cache.entry_path(video, UNIFORM)
    cache.put(video, UNIFORM, sample_clip(video, UNIFORM, seek_above_s=0))
    assert cache.get(video, KEYFRAME) is None
    kept = sample_clip(video, KEYFRAME, seek_above_s=0)
    cache.put(video, KEYFRAME, kept)
    again = cache.get(video, KEYFRAME)
    assert again is not None and again.indices == kept.indices
    assert np.array_equal(again.frames, kept.frames)
