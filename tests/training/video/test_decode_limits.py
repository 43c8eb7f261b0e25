"""Bounded decoding: one huge, endless or crafted video fails with a reason naming the setting
it is over, and FFmpeg opens nothing but local files in the allowed containers."""

from __future__ import annotations

import http.server
import io
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from conftest import DATA_DIR as DATA
from fake_label_studio import LoopbackServer

from training.settings import Settings
from training.video import decode_limits, decoder
from training.video.clip import SamplingConfig
from training.video.clipcache import ClipCache
from training.video.decode_limits import ALLOWED_CONTAINERS, DecodeLimits
from training.video.decoder import VideoDecodeError, decode_many, sample_clip

CONFIG = SamplingConfig(frames=16, height=32, width=32)
FPS = 25
MB = 1024 * 1024


class _NoSeek(io.RawIOBase):
    """A file FFmpeg cannot seek back in: Matroska is then written "live", with no duration,
    no frame count and no index, as a stream recorder leaves it."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self.f.write(data)

    def seekable(self) -> bool:
        return False


def write_video(
    path: Path,
    frames: int,
    *,
    fmt: str | None = None,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    live: bool = False,
) -> Path:
    """``frames`` gray frames of ``size`` (width, height) at FPS frames a second."""
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    with open(path, "wb") as f, av.open(_NoSeek(f) if live else f, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height = size
        stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        for k in range(frames):
            image = np.full((size[1], size[0], 3), 10 + 6 * (k % 40), np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("limits")
    files = {
        "gray": write_video(tmp / "gray.mp4", 40, fmt="mp4"),  # 64x48, 40 frames, 1.6 s
        "live": write_video(tmp / "live.mkv", 40, fmt="matroska", live=True),
    }
    # Two MPEG-TS files back to back: the header (first SPS) says 64x48, then 640x480 frames.
    small = write_video(tmp / "small.ts", 2, fmt="mpegts")
    big = write_video(tmp / "big.ts", 10, fmt="mpegts", size=(640, 480))
    files["growing"] = tmp / "growing.ts"
    files["growing"].write_bytes(small.read_bytes() + big.read_bytes())
    files["segment"] = write_video(tmp / "segment.ts", 10, fmt="mpegts")
    return files


# the limits and the settings


def test_the_defaults_are_the_settings_defaults() -> None:
    assert DecodeLimits() == DecodeLimits.from_settings(Settings())
    assert DecodeLimits() == DecodeLimits(3840 * 2160, 14400.0, 1_000_000, 60.0)


def test_the_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "MAX_VIDEO_PIXELS": "1000",
        "MAX_VIDEO_SECONDS": "2.5",
        "MAX_VIDEO_FRAMES": "30",
        "DECODE_DEADLINE_S": "7",
    }.items():
        monkeypatch.setenv(name, value)
    assert DecodeLimits.from_settings(Settings.from_env()) == DecodeLimits(1000, 2.5, 30, 7.0)


@pytest.mark.parametrize(
    "name", ["max_video_pixels", "max_video_seconds", "max_video_frames", "decode_deadline_s"]
)
def test_a_limit_that_would_disable_itself_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name.upper()):
        Settings(**{name: 0})


# over a cap the file declares


@pytest.mark.parametrize("seek_above_s", [1e9, 0.0], ids=["in-order", "seek"])
@pytest.mark.parametrize(
    ("limits", "why"),
    [
        (DecodeLimits(max_pixels=1000), "frame size 64x48 is over MAX_VIDEO_PIXELS=1000"),
        (DecodeLimits(max_frames=39), "frame count 40 is over MAX_VIDEO_FRAMES=39"),
        (DecodeLimits(max_duration_s=1.5), "duration 1.6 s is over MAX_VIDEO_SECONDS=1.5"),
    ],
    ids=["pixels", "frames", "seconds"],
)
def test_a_video_over_a_declared_cap_is_refused(
    media: dict[str, Path], limits: DecodeLimits, why: str, seek_above_s: float
) -> None:
    with pytest.raises(VideoDecodeError) as error:
        sample_clip(media["gray"], CONFIG, limits=limits, seek_above_s=seek_above_s)
    assert str(error.value) == f"{media['gray']}: {why}"


def test_a_video_at_the_caps_is_decoded(media: dict[str, Path]) -> None:
    limits = DecodeLimits(max_pixels=64 * 48, max_frames=40, max_duration_s=1.6)
    clip = sample_clip(media["gray"], CONFIG, limits=limits)
    assert clip.mask.all() and clip.frame_count == 40


def test_the_8k_example(tmp_path: Path) -> None:
    """The real default: a (short, blank) 7680x4320 video is over 3840x2160."""
    video = write_video(tmp_path / "8k.mp4", 1, fmt="mp4", size=(7680, 4320))
    with pytest.raises(VideoDecodeError, match="7680x4320 is over MAX_VIDEO_PIXELS=8294400"):
        sample_clip(video, CONFIG)


# over a cap found while decoding


def test_a_stream_that_declares_no_length_is_counted_while_decoding(
    media: dict[str, Path],
) -> None:
    with av.open(str(media["live"])) as container:  # the premise: nothing declared
        stream = container.streams.video[0]
        assert container.duration is None and stream.duration is None and stream.frames == 0
    assert sample_clip(media["live"], CONFIG).frame_count == 40
    with pytest.raises(VideoDecodeError) as error:
        sample_clip(media["live"], CONFIG, limits=DecodeLimits(max_frames=10))
    assert str(error.value) == f"{media['live']}: frame count 11 is over MAX_VIDEO_FRAMES=10"
    with pytest.raises(VideoDecodeError) as error:
        sample_clip(media["live"], CONFIG, limits=DecodeLimits(max_duration_s=1.0))
    assert str(error.value) == f"{media['live']}: duration 1.04 s is over MAX_VIDEO_SECONDS=1"


def test_frames_larger_than_the_header_says_are_refused(media: dict[str, Path]) -> None:
    with av.open(str(media["growing"])) as container:  # the premise: a small header
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (64, 48)
    with pytest.raises(VideoDecodeError) as error:
        sample_clip(media["growing"], CONFIG, limits=DecodeLimits(max_pixels=64 * 48))
    why = "frame size 640x480 is over MAX_VIDEO_PIXELS=3072"
    assert str(error.value) == f"{media['growing']}: {why}"


# the time budget


@pytest.mark.parametrize("seek_above_s", [1e9, 0.0], ids=["in-order", "seek"])
def test_a_tiny_time_budget_stops_a_real_clip(seek_above_s: float) -> None:
    limits = DecodeLimits(deadline_s=1e-6)
    with pytest.raises(VideoDecodeError) as error:
        sample_clip(DATA / "bikes.mp4", CONFIG, limits=limits, seek_above_s=seek_above_s)
    assert str(error.value) == f"{DATA / 'bikes.mp4'}: decoding took over DECODE_DEADLINE_S=1e-06 s"


@pytest.mark.parametrize("seek_above_s", [1e9, 0.0], ids=["in-order", "seek"])
def test_the_budget_is_checked_frame_by_frame(
    monkeypatch: pytest.MonkeyPatch, seek_above_s: float
) -> None:
    """A clock that moves 10 ms per look: the decode opens and runs, then runs out partway."""
    looks = iter(range(10**6))
    clock = SimpleNamespace(monotonic=lambda: next(looks) * 0.01)
    monkeypatch.setattr(decode_limits, "time", clock)
    with pytest.raises(VideoDecodeError) as error:
        sample_clip(
            DATA / "bikes.mp4",
            CONFIG,
            limits=DecodeLimits(deadline_s=0.5),
            seek_above_s=seek_above_s,
        )
    assert str(error.value).endswith(": decoding took over DECODE_DEADLINE_S=0.5 s")
    assert 20 < next(looks) < 100  # it looked per frame or seek, and stopped soon after 0.5 s


# containers


@pytest.mark.parametrize(
    ("name", "fmt", "codec"),
    [
        ("a.mp4", "mp4", "libx264"),
        ("a.mov", "mov", "libx264"),
        ("a.mkv", "matroska", "libx264"),
        ("a.webm", "webm", "libvpx"),
        ("a.ogv", "ogg", "libvpx"),
        ("a.avi", "avi", "mpeg4"),
        ("a.ts", "mpegts", "libx264"),
        ("a.mpg", "mpeg", "mpeg2video"),
        ("a.flv", "flv", "flv"),
    ],
)
def test_every_allowed_container_is_decoded(tmp_path: Path, name: str, fmt: str, codec: str):
    video = write_video(tmp_path / name, 20, fmt=fmt, codec=codec)
    with av.open(str(video)) as container:
        assert container.format.name in ALLOWED_CONTAINERS
    clip = sample_clip(video, CONFIG)
    assert clip.mask.all() and clip.frame_count == 20


@pytest.mark.parametrize(
    ("name", "fmt", "codec"),
    [("a.nut", "nut", "libx264"), ("a.y4m", "yuv4mpegpipe", "rawvideo"), ("a.png", None, "png")],
)
def test_a_video_ffmpeg_reads_in_another_container_is_refused(
    tmp_path: Path, name: str, fmt: str | None, codec: str
) -> None:
    video = write_video(tmp_path / name, 1 if codec == "png" else 20, fmt=fmt, codec=codec)
    with av.open(str(video)) as container:  # the premise: FFmpeg itself reads it
        assert container.format.name not in ALLOWED_CONTAINERS
        assert next(container.decode(video=0)).width == 64
    with pytest.raises(VideoDecodeError, match="container format is not on the allow-list"):
        sample_clip(video, CONFIG)


def test_the_container_is_checked_again_after_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should FFmpeg's format_whitelist ever let a demuxer through, the name is checked too."""
    monkeypatch.setattr(decoder, "OPEN_OPTIONS", {"protocol_whitelist": "file"})
    video = write_video(tmp_path / "a.nut", 20, fmt="nut")
    with pytest.raises(VideoDecodeError) as error:
        sample_clip(video, CONFIG)
    assert str(error.value) == f"{video}: its container format 'nut' is not on the allow-list"


def test_ffmpeg_opens_files_only_and_only_the_allowed_demuxers() -> None:
    """Nested opens (a demuxer reading a second file) get the same whitelist: file only."""
    options = decode_limits.OPEN_OPTIONS
    assert options["protocol_whitelist"] == "file"
    assert options["format_whitelist"].split(",") == ",".join(ALLOWED_CONTAINERS).split(",")
    assert decoder.OPEN_OPTIONS is decode_limits.OPEN_OPTIONS


class Recorder(http.server.BaseHTTPRequestHandler):
    """Serves a real video to anyone who asks, and remembers who asked."""

    requests: list[str]
    body = (DATA / "b.mp4").read_bytes()

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server: ``(host:port, the paths requested)``."""
    requests: list[str] = []
    handler = type("Handler", (Recorder,), {"requests": requests})
    httpd = LoopbackServer.start(handler)
    try:
        yield f"127.0.0.1:{httpd.port}", requests
    finally:
        httpd.close()


def playlist(path: Path, segment: str) -> Path:
    path.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n"
        f"#EXTINF:0.4,\n{segment}\n#EXT-X-ENDLIST\n"
    )
    return path


def test_an_hls_playlist_of_a_url_is_refused_without_a_request(
    tmp_path: Path, server: tuple[str, list[str]]
) -> None:
    address, requests = server
    video = playlist(tmp_path / "playlist.m3u8", f"http://{address}/segment.ts")
    with pytest.raises(VideoDecodeError, match="container format is not on the allow-list"):
        sample_clip(video, CONFIG)
    assert requests == []


def test_an_hls_playlist_of_another_local_file_is_refused(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    """Else a task's "video" reads any file the process can read, named by the uploader."""
    video = playlist(tmp_path / "playlist.m3u8", str(media["segment"]))
    with pytest.raises(VideoDecodeError, match="container format is not on the allow-list"):
        sample_clip(video, CONFIG)


def test_an_ffconcat_script_is_refused(tmp_path: Path, media: dict[str, Path]) -> None:
    video = tmp_path / "list.txt"
    video.write_text(f"ffconcat version 1.0\nfile {media['segment']}\nfile {media['segment']}\n")
    with pytest.raises(VideoDecodeError, match="container format is not on the allow-list"):
        sample_clip(video, CONFIG)


def test_a_file_named_like_a_protocol_is_read_as_that_file(
    tmp_path: Path, media: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``concat:other.mp4`` is a local file name, not FFmpeg's concat protocol reading
    other.mp4 (which is a real video: reading it would succeed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.mp4").write_bytes(media["gray"].read_bytes())
    trick = tmp_path / "concat:other.mp4"
    trick.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VideoDecodeError, match="not a media file"):
        sample_clip(Path("concat:other.mp4"), CONFIG)
    assert sample_clip(Path("other.mp4"), CONFIG).mask.all()  # relative paths still work


def test_a_file_named_like_a_url_makes_no_request(
    tmp_path: Path, server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, requests = server
    monkeypatch.chdir(tmp_path)
    trick = Path(f"http:/{address}/video.mp4")  # what Path makes of http://host:port/video.mp4
    trick.parent.mkdir(parents=True)
    trick.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VideoDecodeError, match="not a media file"):
        sample_clip(trick, CONFIG)
    assert requests == []


# the limits reach every decode


def test_decode_many_fails_each_video_over_a_cap(media: dict[str, Path]) -> None:
    results = decode_many(
        [media["gray"], media["live"]], CONFIG, threads=2, limits=DecodeLimits(max_pixels=1000)
    )
    assert all(isinstance(r, VideoDecodeError) for r in results)
    assert all("MAX_VIDEO_PIXELS=1000" in str(r) for r in results)


def test_the_clip_cache_decodes_within_the_settings_limits(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    settings = Settings(cache_dir=tmp_path / "cache", max_video_pixels=1000)
    cache = ClipCache.from_settings(settings)
    assert cache.limits == DecodeLimits.from_settings(settings)
    with pytest.raises(VideoDecodeError, match="MAX_VIDEO_PIXELS=1000"):
        cache.sample(media["gray"], CONFIG)
    (result,) = decode_many([media["gray"]], CONFIG, cache=cache)  # the cache's limits
    assert isinstance(result, VideoDecodeError)
    assert not list(cache.root.glob("*.npz")) if cache.root.exists() else True
    roomy = ClipCache(tmp_path / "roomy", 100 * MB)
    assert roomy.limits == DecodeLimits()
    assert roomy.sample(media["gray"], CONFIG).mask.all()
    with pytest.raises(VideoDecodeError, match="MAX_VIDEO_FRAMES=10"):
        roomy.sample(media["live"], CONFIG, limits=DecodeLimits(max_frames=10))
