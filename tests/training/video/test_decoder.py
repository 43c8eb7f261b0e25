"""Frame sampling with PyAV: which frames, what they look like, and how unreadable files fail."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import DATA_DIR as DATA

from training.video import decoder as sampler
from training.video.clip import SamplingConfig
from training.video.decoder import VideoDecodeError, frame_indices, sample_clip

CONFIG = SamplingConfig(frames=16, height=112, width=112)
GRAY_FPS = 20


def gray_level(k: int) -> int:
    """Frame k of the synthetic videos is uniformly this gray: 6 levels apart, 10..244."""
    return 10 + 6 * k


def write_gray_video(path: Path, frames: int, *, audio_s: float = 0.0, gop: int = 8) -> Path:
    """libx264 with B-frames and a keyframe every ``gop`` frames; optionally a longer audio
    track."""
    with av.open(str(path), "w") as out:
        options = {"g": str(gop), "bf": "2", "sc_threshold": "0"}
        video = out.add_stream("libx264", rate=GRAY_FPS, options=options)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=8000, layout="mono") if audio_s else None
        for k in range(frames):
            image = np.full((48, 64, 3), gray_level(k), np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
        if audio:
            samples = np.zeros((1, int(8000 * audio_s)), np.int16)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8000, 0
            out.mux(audio.encode(frame))
            out.mux(audio.encode(None))
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic and damaged files, made once per session."""
    tmp = tmp_path_factory.mktemp("media")
    files = {
        "gray": write_gray_video(tmp / "gray.mp4", 40),
        "short": write_gray_video(tmp / "short.mp4", 5),
        # Matroska stores no frame count, so it is estimated from the container's duration,
        # which the 3 s audio track makes three times too long.
        "overestimated": write_gray_video(tmp / "overestimated.mkv", 20, audio_s=3.0),
    }

    files["audio"] = tmp / "audio.mka"  # an allowed container (Matroska) with no video
    with av.open(str(files["audio"]), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))

    files["empty"] = tmp / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["random"] = tmp / "random.mp4"
    files["random"].write_bytes(np.random.default_rng(0).bytes(20_000))
    files["truncated"] = tmp / "truncated.mp4"
    files["truncated"].write_bytes((DATA / "b.mp4").read_bytes()[:20_000])

    # The same clip with its index first ("faststart"), cut in half: it opens, then breaks.
    faststart = tmp / "faststart.mp4"
    with (
        av.open(str(DATA / "muted_b.mp4")) as src,
        av.open(str(faststart), "w", options={"movflags": "faststart"}) as out,
    ):
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = faststart.read_bytes()
    files["cut"] = tmp / "cut.mp4"
    files["cut"].write_bytes(data[: len(data) // 2])

    # A real clip whose video payload (the mdat box) is zeroed: a video stream, no frames.
    data = bytearray((DATA / "carphone_distorted.mp4").read_bytes())
    start = data.index(b"mdat") + 4
    size = int.from_bytes(data[start - 8 : start - 4], "big")
    data[start : start + size - 8] = bytes(size - 8)
    files["blank"] = tmp / "blank.mp4"
    files["blank"].write_bytes(bytes(data))
    return files


def nearest_gray_levels(frames: np.ndarray) -> list[int]:
    """Which k each frame's mean brightness is closest to gray_level(k) for."""
    return [round((float(f.mean()) - gray_level(0)) / 6) for f in frames]


class SeekCounter:
    """Wraps av.open so a test can see how often sample_clip seeks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seeks = 0
        real_open = av.open

        counter = self

        class Container:
            def __init__(self, *args, **kwargs) -> None:
                self._inner = real_open(*args, **kwargs)

            def __enter__(self) -> Container:
                return self

            def __exit__(self, *exc) -> None:
                self._inner.close()

            def seek(self, *args, **kwargs) -> None:
                counter.seeks += 1
                self._inner.seek(*args, **kwargs)

            def __getattr__(self, name: str):
                return getattr(self._inner, name)

        monkeypatch.setattr(sampler.av, "open", Container)


# frame_indices


@pytest.mark.parametrize(
    ("frame_count", "frames", "expected"),
    [
        (100, 4, [12, 37, 62, 87]),
        (10, 16, list(range(10))),
        (16, 16, list(range(16))),
        (17, 16, [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]),
        (132, 16, [4, 12, 20, 28, 37, 45, 53, 61, 70, 78, 86, 94, 103, 111, 119, 127]),
        (1, 16, [0]),
        (0, 16, []),
        (7, 1, [3]),
    ],
)
def test_frame_indices_pinned(frame_count: int, frames: int, expected: list[int]) -> None:
    assert frame_indices(frame_count, frames) == expected


def test_frame_indices_are_segment_centres() -> None:
    for frame_count in range(16, 400, 7):
        indices = frame_indices(frame_count, 16)
        assert len(indices) == 16
        assert all(a < b for a, b in itertools.pairwise(indices))
        for i, index in enumerate(indices):
            assert index == int((i + 0.5) * frame_count / 16)


# real clips

CLIPS = {  # name: (fps, duration_s, frame_count), from tests/data/LICENSES.md and ffprobe
    "carphone_pristine.mp4": (29.97, 4.0, 120),
    "carphone_distorted.mp4": (29.97, 4.0, 120),
    "b.mp4": (30.0, 5.0, 150),
    "muted_b.mp4": (30.0, 5.0, 150),
    "bikes.mp4": (25.0, 10.0, 250),
    "bigbuckbunny.mp4": (25.0, 5.3, 132),
}


@pytest.mark.parametrize("seek_above_s", [sampler.SEEK_ABOVE_S, 0.0], ids=["default", "seek"])
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_real_clip(name: str, seek_above_s: float) -> None:
    fps, duration_s, frame_count = CLIPS[name]
    clip = sample_clip(DATA / name, CONFIG, seek_above_s=seek_above_s)
    assert clip.frames.shape == (16, 112, 112, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.mask.shape == (16,)
    assert clip.mask.dtype == bool
    assert clip.mask.all()
    assert clip.indices == frame_indices(frame_count, 16)
    assert clip.frame_count == frame_count
    assert clip.fps == pytest.approx(fps, abs=0.01)
    assert clip.duration_s == pytest.approx(duration_s, abs=0.05)
    assert clip.frames.std() > 10  # real pictures, not blank or padding


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_seeking_returns_the_same_pixels(name: str) -> None:
    in_order = sample_clip(DATA / name, CONFIG, seek_above_s=float("inf"))
    sought = sample_clip(DATA / name, CONFIG, seek_above_s=0.0)
    np.testing.assert_array_equal(in_order.frames, sought.frames)


def test_carphone_distorted_is_the_same_scene_as_pristine() -> None:
    """The 7 KB copy (9 kbit/s) decodes to all 120 frames, close to the original's pixels."""
    pristine = sample_clip(DATA / "carphone_pristine.mp4", CONFIG).frames.astype(int)
    distorted = sample_clip(DATA / "carphone_distorted.mp4", CONFIG).frames.astype(int)
    other = sample_clip(DATA / "bikes.mp4", CONFIG).frames.astype(int)
    assert np.abs(pristine - distorted).mean() < 15
    assert np.abs(pristine - other).mean() > 2 * np.abs(pristine - distorted).mean()


def test_sample_clip_does_not_import_tensorflow() -> None:
    code = "import sys, training.video.decoder; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# the right frames


@pytest.mark.parametrize("seek_above_s", [1e9, 0.0], ids=["in-order", "seek"])
def test_sampled_frames_are_the_reported_frames(
    media: dict[str, Path], seek_above_s: float
) -> None:
    clip = sample_clip(media["gray"], CONFIG, seek_above_s=seek_above_s)
    assert clip.indices == frame_indices(40, 16)
    assert nearest_gray_levels(clip.frames) == clip.indices
    for frame, index in zip(clip.frames, clip.indices, strict=True):
        assert abs(float(frame.mean()) - gray_level(index)) <= 2.5
    assert clip.frame_count == 40
    assert clip.fps == GRAY_FPS
    assert clip.duration_s == pytest.approx(2.0)


def test_seeking_skips_seeks_that_would_land_behind(
    media: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = SeekCounter(monkeypatch)
    sample_clip(media["gray"], CONFIG, seek_above_s=1e9)
    assert counter.seeks == 0
    # 16 targets in 40 frames with a keyframe every 8 frames: one seek per keyframe reached.
    sample_clip(media["gray"], CONFIG, seek_above_s=0.0)
    assert counter.seeks == 5
    counter.seeks = 0
    sample_clip(DATA / "carphone_pristine.mp4", CONFIG, seek_above_s=0.0)  # one keyframe
    assert counter.seeks == 1


def test_short_video_is_padded(media: dict[str, Path]) -> None:
    clip = sample_clip(media["short"], CONFIG)
    assert clip.mask.tolist() == [True] * 5 + [False] * 11
    assert clip.indices == [0, 1, 2, 3, 4]
    assert nearest_gray_levels(clip.frames[:5]) == [0, 1, 2, 3, 4]
    assert not clip.frames[5:].any()
    assert clip.frame_count == 5


@pytest.mark.parametrize("seek_above_s", [1e9, 0.0], ids=["in-order", "seek"])
def test_overestimated_frame_count_is_recounted(
    media: dict[str, Path], seek_above_s: float
) -> None:
    """The estimate says 60 frames, the video has 20: targets are spread over the real 20."""
    with av.open(str(media["overestimated"])) as container:
        assert container.streams.video[0].frames == 0
        assert container.duration / av.time_base == pytest.approx(3.0)
    clip = sample_clip(media["overestimated"], CONFIG, seek_above_s=seek_above_s)
    assert clip.frame_count == 20
    assert clip.indices == frame_indices(20, 16)
    assert nearest_gray_levels(clip.frames) == clip.indices
    assert clip.duration_s == pytest.approx(1.0)


def test_threshold_is_seconds_and_sane() -> None:
    assert 10 <= sampler.SEEK_ABOVE_S <= 30  # bench/sampling.py: crossover between 10 and 20 s


# unreadable files


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("empty", "empty (0 bytes)"),
        ("random", "not a media file"),
        ("truncated", "truncated"),
        ("cut", "truncated"),
        ("audio", "no video stream (streams: audio)"),
        ("blank", "no decodable frames"),
    ],
)
def test_unreadable_file_raises_video_decode_error(
    media: dict[str, Path], key: str, why: str
) -> None:
    for seek_above_s in (1e9, 0.0):
        with pytest.raises(VideoDecodeError) as error:
            sample_clip(media[key], CONFIG, seek_above_s=seek_above_s)
        assert why in str(error.value)
        assert str(media[key]) in str(error.value)


def test_missing_file_raises_video_decode_error(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="no such video file") as error:
        sample_clip(tmp_path / "nope.mp4", CONFIG)
    assert "nope.mp4" in str(error.value)
    with pytest.raises(VideoDecodeError, match="not a regular file"):
        sample_clip(tmp_path, CONFIG)


def test_video_decode_error_is_a_value_error() -> None:
    assert issubclass(VideoDecodeError, ValueError)


def test_files_are_closed(media: dict[str, Path]) -> None:
    """Every path through sample_clip closes its container, failures included."""
    fd_dir = Path("/proc/self/fd")
    before = len(os.listdir(fd_dir))
    for _ in range(5):
        for key in ("gray", "overestimated", "cut", "blank", "audio", "random"):
            for seek_above_s in (1e9, 0.0):
                with contextlib.suppress(VideoDecodeError):
                    sample_clip(media[key], CONFIG, seek_above_s=seek_above_s)
    assert len(os.listdir(fd_dir)) <= before
