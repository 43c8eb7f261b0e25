"""What one decode may read and cost: the container allow-list and DecodeLimits' caps.

Every video is hostile until decoded. training.video.decoder opens only local files in the
containers of ALLOWED_CONTAINERS (no playlists, no network, no protocol tricks) and checks a
DecodeBudget before and while decoding, so one huge, endless or crafted video fails with a
VideoDecodeError naming the setting it is over, instead of holding a decode thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.settings import Settings

ALLOWED_CONTAINERS: tuple[str, ...] = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "ogg",
    "avi",
    "mpegts",
    "mpeg",
    "flv",
)
"""FFmpeg demuxers (``container.format.name``) a video may come in: what browsers play in
Label Studio plus the usual camera and capture files. Left out on purpose: playlists (hls,
dash, concat) and image sequences, which open other files or the network, and raw streams,
devices and filter graphs (lavfi)."""

OPEN_OPTIONS: dict[str, str] = {
    "protocol_whitelist": "file",
    "format_whitelist": ",".join(ALLOWED_CONTAINERS),
}
"""av.open's container options: FFmpeg refuses any other demuxer before it reads the header,
and any open (nested ones included) other than a local file."""


class VideoDecodeError(ValueError):
    """The file is not a readable video; the message says why and names the file."""


@dataclass(frozen=True)
class DecodeLimits:
    """Caps on one decode. The defaults are the settings' defaults (MAX_VIDEO_PIXELS,
    MAX_VIDEO_SECONDS, MAX_VIDEO_FRAMES, DECODE_DEADLINE_S), for callers with no Settings."""

    max_pixels: int = 3840 * 2160
    """Width x height of a frame: 4K UHD."""
    max_duration_s: float = 4 * 3600.0
    max_frames: int = 1_000_000
    deadline_s: float = 60.0
    """Wall-clock seconds for one sample_clip, opening included."""

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(
            max_pixels=settings.max_video_pixels,
            max_duration_s=settings.max_video_seconds,
            max_frames=settings.max_video_frames,
            deadline_s=settings.decode_deadline_s,
        )


class DecodeBudget:
    """One sample_clip's limits and deadline. FFmpeg cannot be stopped from outside, so the
    decoder checks this before decoding (declared size and length), per frame decoded (the
    size may change mid-stream; undeclared lengths are counted) and before each seek."""

    def __init__(self, path: Path, limits: DecodeLimits) -> None:
        self.path = path
        self.limits = limits
        self.deadline = time.monotonic() + limits.deadline_s
        self.rate: Fraction | None = None
        """Frames per second, once known: turns frames decoded into seconds."""

    def left_s(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            limit = self.limits.deadline_s
            raise VideoDecodeError(f"{self.path}: decoding took over DECODE_DEADLINE_S={limit:g} s")

    def check_size(self, width: int, height: int) -> None:
        if width * height > self.limits.max_pixels:
            raise self._over(f"frame size {width}x{height}", "MAX_VIDEO_PIXELS", "max_pixels")

    def check_length(self, frames: int, duration_s: float | None) -> None:
        """``frames`` and ``duration_s`` as declared, estimated or decoded so far."""
        if frames > self.limits.max_frames:
            raise self._over(f"frame count {frames}", "MAX_VIDEO_FRAMES", "max_frames")
        if duration_s and duration_s > self.limits.max_duration_s:
            what = f"duration {duration_s:.6g} s"
            raise self._over(what, "MAX_VIDEO_SECONDS", "max_duration_s")

    def check_declared(
        self, width: int, height: int, frames: int, duration_s: float | None
    ) -> None:
        """What the container and stream headers say, before decoding anything."""
        self.check_size(width, height)
        self.check_length(frames, duration_s)

    def check_frame(self, width: int, height: int, decoded: int) -> None:
        """The ``decoded``-th frame of a pass (1-based) is ``width`` x ``height``."""
        self.check_time()
        self.check_size(width, height)
        self.check_length(decoded, decoded / float(self.rate) if self.rate else None)

    def _over(self, what: str, setting: str, field: str) -> VideoDecodeError:
        limit = getattr(self.limits, field)
        return VideoDecodeError(f"{self.path}: {what} is over {setting}={limit:.10g}")
