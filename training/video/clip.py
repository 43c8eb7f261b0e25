"""What a model expects of its input clips: how many frames, at what size.

Stored in every version's meta.json, so serving samples exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MAX_SAMPLE_FPS = 60.0
"""Highest windowed sampling rate, in frames per second."""

SAMPLE_MODES: tuple[str, ...] = ("uniform", "keyframe")
"""How the T frames of a long video are chosen: ``uniform`` (evenly spaced frames) or
``keyframe`` (the keyframe nearest each of them, training/video/keyframes.py)."""


@dataclass(frozen=True)
class SamplingConfig:
    """T frames spread uniformly over the video, each resized to height x width RGB.

    With ``sample_fps`` > 0 (windowed sampling, training/video/windows.py) the video is
    instead read at that fixed rate and cut into windows of T frames, ``window_stride``
    samples apart (0: T // 2, so windows overlap by half); a video shorter than one window is
    sampled as with ``sample_fps`` 0. Versions stored before windows have neither field.

    ``sample_mode`` ``keyframe`` takes, in videos long enough to be sampled by seeking, the
    keyframe nearest each uniform target instead of the target itself (faster, slightly less
    accurate: training/video/keyframes.py); it does not combine with windows.
    """

    frames: int = 16
    height: int = 112
    width: int = 112
    sample_fps: float = 0.0
    window_stride: int = 0
    sample_mode: str = "uniform"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.height < 8 or self.width < 8:
            raise ValueError(f"invalid sampling config {self}")
        if not 0 <= self.sample_fps <= MAX_SAMPLE_FPS or not 0 <= self.window_stride <= self.frames:
            raise ValueError(
                f"invalid sampling config {self}: sample_fps must be 0-{MAX_SAMPLE_FPS:g}, "
                "window_stride 0 (half a window) to frames"
            )
        if self.sample_mode not in SAMPLE_MODES:
            raise ValueError(f"sample_mode must be one of {', '.join(SAMPLE_MODES)}")
        if self.keyframe and self.windowed:
            raise ValueError("keyframe sampling reads whole videos: it needs sample_fps 0")

    @property
    def windowed(self) -> bool:
        """True when videos are read at ``sample_fps`` and cut into windows."""
        return self.sample_fps > 0

    @property
    def keyframe(self) -> bool:
        """True when long videos are sampled at the keyframes nearest the uniform targets."""
        return self.sample_mode == "keyframe"

    @property
    def stride(self) -> int:
        """Samples between the starts of two windows."""
        return self.window_stride or max(1, self.frames // 2)

    def to_dict(self) -> dict[str, float | str]:
        """The fields, without the window ones when not windowed and without ``sample_mode``
        when uniform: such a version's meta.json (and hashes of it) reads as before, for older
        code too."""
        data = asdict(self)
        if not self.windowed:
            del data["sample_fps"], data["window_stride"]
        if not self.keyframe:
            del data["sample_mode"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SamplingConfig:
        return cls(
            frames=int(data["frames"]),
            height=int(data["height"]),
            width=int(data["width"]),
            sample_fps=float(data.get("sample_fps", 0.0)),
            window_stride=int(data.get("window_stride", 0)),
            sample_mode=str(data.get("sample_mode", "uniform")),
        )

    def key(self) -> str:
        """A short string naming these settings, for cache keys."""
        base = f"t{self.frames}-{self.height}x{self.width}"
        if self.keyframe:
            return f"{base}-kf"
        return f"{base}-r{self.sample_fps:g}s{self.stride}" if self.windowed else base


@dataclass(frozen=True)
class Clip:
    """Frames sampled from one video, ready for the model.

    ``frames`` is (T, H, W, 3) uint8, zero-padded after the last real frame when the video has
    fewer than T frames; ``mask`` is (T,) bool, True for real frames. ``indices`` are the
    0-based frame numbers (in the video's own decode order) of the real frames; keyframe
    sampling repeats a number where two targets share a keyframe.
    """

    frames: np.ndarray
    mask: np.ndarray
    indices: list[int]
    fps: float
    frame_count: int
    duration_s: float


def stack_clips(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
    """Stack clips into the model's two inputs: frames (B,T,H,W,3) uint8 and mask (B,T) bool."""
    frames = np.stack([c.frames for c in clips]).astype(np.uint8, copy=False)
    mask = np.stack([c.mask for c in clips]).astype(bool, copy=False)
    return frames, mask
