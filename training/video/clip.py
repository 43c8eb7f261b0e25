"""What a model expects of its input clips: how many frames, at what size.

Stored in every version's meta.json, so serving samples exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    """T frames spread uniformly over the video, each resized to height x width RGB."""

    frames: int = 16
    height: int = 112
    width: int = 112

    def __post_init__(self) -> None:
        if self.frames < 1 or self.height < 8 or self.width < 8:
            raise ValueError(f"invalid sampling config {self}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SamplingConfig:
        return cls(frames=int(data["frames"]), height=int(data["height"]), width=int(data["width"]))

    def key(self) -> str:
        """A short string naming these settings, for cache keys."""
        return f"t{self.frames}-{self.height}x{self.width}"


@dataclass(frozen=True)
class Clip:
    """Frames sampled from one video, ready for the model.

    ``frames`` is (T, H, W, 3) uint8, zero-padded after the last real frame when the video has
    fewer than T frames; ``mask`` is (T,) bool, True for real frames. ``indices`` are the
    0-based frame numbers (in the video's own decode order) of the real frames.
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
