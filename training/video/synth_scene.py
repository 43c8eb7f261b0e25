"""The scenes of synthetic clips: the main shape's track, distractors, textured backgrounds.

training/video/synth.py picks classes and writes files; this module only draws, with numpy.
A pair's second class plays the first one's main-shape track backwards, so every frame of a
clip could belong to either class of its pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REVERSED_OF = {
    "right_to_left": "left_to_right",
    "shrink": "grow",
    "blue_then_red": "red_then_blue",
    "receding": "approaching",
}
"""Second class of a pair -> the first class, whose track it plays backwards."""

KINDS = ("square", "disc")
_CLEAN_GREY = 128
"""Background level of a ``clutter=False`` render, on every channel."""
_MARGIN_PX = 2.0
"""Gap kept between the main shape and the frame's edge, in pixels."""


@dataclass(frozen=True)
class Track:
    """One shape's state per frame: centre (x, y) and half-size r in pixels, RGB colour."""

    kind: str
    cx: np.ndarray
    cy: np.ndarray
    r: np.ndarray
    colour: np.ndarray  # (N, 3) float

    def reversed(self) -> Track:
        return Track(self.kind, self.cx[::-1], self.cy[::-1], self.r[::-1], self.colour[::-1])

    def __len__(self) -> int:
        return len(self.cx)


def split_rng(rng: np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    """Separate generators for the main shape and the scene, so ``clutter`` keeps the track."""
    main_seed, scene_seed = rng.integers(2**63, size=2)
    return np.random.default_rng(int(main_seed)), np.random.default_rng(int(scene_seed))


def main_track(
    label: str, rng: np.random.Generator, n: int, width: int, height: int, fps: int, kind: str
) -> Track:
    """The main shape's track; a pair's second class plays the first one's track backwards."""
    forward = REVERSED_OF.get(label, label)
    scale = min(width, height) / 120
    make = {
        "left_to_right": _track_move,
        "grow": _track_grow,
        "red_then_blue": _track_colour,
        "approaching": _track_approach,
    }
    track = make[forward](rng, n, width, height, fps, scale, kind)
    return track.reversed() if label in REVERSED_OF else track


def continue_track(before: Track, after: Track, width: int, height: int) -> Track:
    """Move ``after`` to start where ``before`` ends (clamped to the frame), keep its colour."""
    room = float(after.r.max()) + _MARGIN_PX
    dx = np.clip(before.cx[-1] - after.cx[0], room - after.cx.min(), width - room - after.cx.max())
    dy = np.clip(before.cy[-1] - after.cy[0], room - after.cy.min(), height - room - after.cy.max())
    colour_changes = np.ptp(after.colour, axis=0).max() > 0
    colour = after.colour if colour_changes else _constant(before.colour[-1], len(after))
    return Track(after.kind, after.cx + dx, after.cy + dy, after.r, colour)


def _progress(rng: np.random.Generator, n: int) -> np.ndarray:
    """A non-decreasing 0 -> 1 curve over n frames: optional pauses at both ends, uneven pace."""
    hold_start, hold_end = rng.uniform(0.0, 0.15, size=2)
    u = np.linspace(0.0, 1.0, n)
    v = np.clip((u - hold_start) / (1.0 - hold_start - hold_end), 0.0, 1.0)
    wobble, cycles = rng.uniform(0.0, 0.6), int(rng.integers(1, 3))
    # d/dv = 1 + wobble * cos(...) > 0, and the sine term is 0 at v = 0 and v = 1.
    return v + wobble * np.sin(2 * np.pi * cycles * v) / (2 * np.pi * cycles)


def _track_move(
    rng: np.random.Generator, n: int, width: int, height: int, fps: int, scale: float, kind: str
) -> Track:
    """Left to right over a random span of at least 40 % of the room, with a small bob."""
    r = rng.uniform(7.0, 15.0) * scale
    lo, hi = r + _MARGIN_PX, width - r - _MARGIN_PX
    span = rng.uniform(0.4, 0.9) * (hi - lo)
    x0 = rng.uniform(lo, hi - span)
    cx = x0 + span * _progress(rng, n)
    bob = rng.uniform(0.0, 3.0) * scale
    cy0 = rng.uniform(r + _MARGIN_PX + bob, height - r - _MARGIN_PX - bob)
    phase, bob_hz = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.5)
    cy = cy0 + bob * np.sin(phase + 2 * np.pi * bob_hz * np.arange(n) / fps)
    return Track(kind, cx, cy, np.full(n, r), _constant(_vivid(rng), n))


def _track_grow(
    rng: np.random.Generator, n: int, width: int, height: int, fps: int, scale: float, kind: str
) -> Track:
    """Small to large (at least 3x), drifting a little on the way."""
    r_small = rng.uniform(3.0, 7.0) * scale
    r_large = min(rng.uniform(18.0, 30.0) * scale, min(width, height) / 2 - _MARGIN_PX - 1)
    f = _progress(rng, n)
    r = r_small + (r_large - r_small) * f
    cx0, cy0, dx, dy = _drifting_start(rng, 8.0 * scale, r_large + _MARGIN_PX, width, height)
    return Track(kind, cx0 + dx * f, cy0 + dy * f, r, _constant(_vivid(rng), n))


def _track_approach(
    rng: np.random.Generator, n: int, width: int, height: int, fps: int, scale: float, kind: str
) -> Track:
    """Coming closer in perspective, from 3.5-5x farther away than its nearest: the size grows
    as 1 / depth (slowly, then fast) and the shape slides away from a vanishing point (down,
    as on a floor, and sideways by its lateral offset)."""
    depth = 1.0 + rng.uniform(2.5, 4.0) * (1.0 - _progress(rng, n))  # far -> 1 (nearest)
    f = 1.0 / depth
    r_near = min(rng.uniform(16.0, 26.0) * scale, min(width, height) / 2 - _MARGIN_PX - 1)
    vx, vy = rng.uniform(0.35, 0.65) * width, rng.uniform(0.2, 0.45) * height
    room = r_near + _MARGIN_PX
    # where it is at its nearest, inside the frame; farther away it lies nearer (vx, vy)
    x_near = rng.uniform(max(room, vx - 0.3 * width), min(width - room, vx + 0.3 * width))
    y_near = rng.uniform(max(room, vy), height - room)
    colour = _constant(_vivid(rng), n)
    return Track(kind, vx + (x_near - vx) * f, vy + (y_near - vy) * f, r_near * f, colour)


def _drifting_start(
    rng: np.random.Generator, max_drift: float, room: float, width: int, height: int
) -> tuple[float, float, float, float]:
    """A start (cx0, cy0) and a drift (dx, dy) of up to ``max_drift`` pixels in a random
    direction, such that the whole drift stays ``room`` pixels inside the frame."""
    drift = rng.uniform(0.0, 1.0) * max_drift
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = drift * np.cos(angle), drift * np.sin(angle)
    cx0 = rng.uniform(room + max(0.0, -dx), width - room - max(0.0, dx))
    cy0 = rng.uniform(room + max(0.0, -dy), height - room - max(0.0, dy))
    return cx0, cy0, dx, dy


def _track_colour(
    rng: np.random.Generator, n: int, width: int, height: int, fps: int, scale: float, kind: str
) -> Track:
    """Red, then blue from 30-70 % of the clip (a blend of up to 3 frames), drifting slowly."""
    r = rng.uniform(8.0, 16.0) * scale
    cx0, cy0, dx, dy = _drifting_start(rng, 20.0 * scale, r + _MARGIN_PX, width, height)
    u = np.linspace(0.0, 1.0, n)
    red = np.array([210.0, 35.0, 35.0]) + rng.uniform(-25, 25, size=3)
    blue = np.array([35.0, 60.0, 215.0]) + rng.uniform(-25, 25, size=3)
    switch = int(round(rng.uniform(0.3, 0.7) * (n - 1)))
    blend = int(rng.integers(1, 5))
    mix = np.clip((np.arange(n) - switch + 1) / blend, 0.0, 1.0)[:, None]
    colour = red * (1 - mix) + blue * mix
    return Track(kind, cx0 + dx * u, cy0 + dy * u, np.full(n, r), colour)


def _vivid(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright colour: stands out from the clean grey and from distractors."""
    return _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))


def _constant(colour: np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(colour, (n, 3))


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] to RGB in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return 255.0 * v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


# --- drawing --------------------------------------------------------------------------------


def draw_scene(
    track: Track, rng: np.random.Generator, width: int, height: int, fps: int, clutter: bool
) -> np.ndarray:
    """Background, distractors behind the main shape, then per-frame noise."""
    n = len(track)
    frames = np.empty((n, height, width, 3), np.uint8)
    if not clutter:
        frames[:] = _CLEAN_GREY
        for t in range(n):
            _draw_shape(frames[t], track, t)
        return frames
    frames[:] = _background(rng, width, height)
    distractors = [_distractor(rng, n, width, height, fps) for _ in range(int(rng.integers(0, 3)))]
    for t in range(n):
        for d in distractors:
            _draw_shape(frames[t], d, t)
        _draw_shape(frames[t], track, t)
    amplitude = int(rng.integers(2, 9))
    noise = rng.integers(-amplitude, amplitude + 1, size=frames.shape, dtype=np.int8)
    noise += rng.integers(-2, 3, size=(n, 1, 1, 1), dtype=np.int8)  # brightness flicker
    noisy = frames.astype(np.int16)
    noisy += noise
    np.clip(noisy, 0, 255, out=noisy)
    return noisy.astype(np.uint8)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A fixed textured background: coarse colour field, stripes and fine grain, uint8."""
    base = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.4), rng.uniform(0.25, 0.75))
    gy, gx = int(rng.integers(2, 6)), int(rng.integers(3, 8))
    grid = rng.uniform(-1, 1, size=(gy, gx, 3)) * rng.uniform(15, 50)
    rows, cols = _lerp_matrix(height, gy), _lerp_matrix(width, gx)
    field = np.einsum("hi,ijc,wj->hwc", rows, grid, cols, optimize=True)
    angle, cycles = rng.uniform(0, np.pi), rng.uniform(1.5, 8.0)
    ys, xs = np.mgrid[0:height, 0:width]
    phase = 2 * np.pi * cycles * (xs * np.cos(angle) + ys * np.sin(angle)) / width
    stripes = rng.uniform(0, 20) * np.sin(phase + rng.uniform(0, 2 * np.pi))
    grain = rng.uniform(-1, 1, size=(height, width, 1)) * rng.uniform(0, 10)
    image = base + field + stripes[..., None] + grain
    return np.clip(image, 0, 255).astype(np.uint8)


def _lerp_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) weights that linearly interpolate ``knots`` values over ``size`` pixels."""
    positions = np.linspace(0, knots - 1, size)
    eye = np.eye(knots)
    return np.stack([np.interp(positions, np.arange(knots), eye[j]) for j in range(knots)], 1)


def _distractor(rng: np.random.Generator, n: int, width: int, height: int, fps: int) -> Track:
    """A small, greyish shape moving in a straight line and bouncing off the edges."""
    scale = min(width, height) / 120
    r = rng.uniform(2.5, 6.0) * scale
    speed = rng.uniform(10.0, 60.0) * scale
    angle = rng.uniform(0, 2 * np.pi)
    t = np.arange(n) / fps
    cx = _bounce(rng.uniform(r, width - r) + speed * np.cos(angle) * t, r, width - r)
    cy = _bounce(rng.uniform(r, height - r) + speed * np.sin(angle) * t, r, height - r)
    colour = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.2, 1.0))
    kind = KINDS[int(rng.integers(len(KINDS)))]
    return Track(kind, cx, cy, np.full(n, r), _constant(colour, n))


def _bounce(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] as if reflected off both ends."""
    length = hi - lo
    y = np.mod(x - lo, 2 * length)
    return lo + np.where(y > length, 2 * length - y, y)


def _draw_shape(frame: np.ndarray, track: Track, t: int) -> None:
    """Blend the shape at frame t into ``frame`` in place, anti-aliased at its edge."""
    cx, cy, r = float(track.cx[t]), float(track.cy[t]), float(track.r[t])
    height, width = frame.shape[:2]
    x0, x1 = max(0, math.floor(cx - r - 1)), min(width, math.ceil(cx + r + 2))
    y0, y1 = max(0, math.floor(cy - r - 1)), min(height, math.ceil(cy + r + 2))
    if x0 >= x1 or y0 >= y1:
        return
    dx = np.arange(x0, x1, dtype=np.float32) - cx
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    if track.kind == "disc":
        alpha = np.clip(r + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    else:
        alpha = np.clip(r + 0.5 - np.abs(dx), 0.0, 1.0) * np.clip(r + 0.5 - np.abs(dy), 0.0, 1.0)
    alpha = alpha[..., None]
    region = frame[y0:y1, x0:x1]
    colour = track.colour[t].astype(np.float32)
    region[:] = (region * (1.0 - alpha) + colour * alpha + 0.5).astype(np.uint8)
