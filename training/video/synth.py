"""Synthetic labelled videos whose classes differ only in temporal order.

Why: a model that averages frames, or that pools away where things are, cannot tell these
classes apart, so the data set tells a real temporal model from one that only looks at
single frames. The classes come in pairs; the second class of each pair is the first one's
main-shape track played backwards, so every frame of a clip could belong to either class of
its pair:

- ``left_to_right`` / ``right_to_left``: a shape moves horizontally over the same range.
- ``grow`` / ``shrink``: a shape's size changes over the same range of sizes.
- ``red_then_blue`` / ``blue_then_red``: a shape changes colour once; both colours show.

Each clip varies: a textured background (low-frequency pattern, stripes, a fixed fine
texture and per-frame noise), 0-2 small greyish distractors moving on their own, the main
shape's kind (square or disc), colour, size, position, speed and the clip's length.

Only numpy draws; PyAV (libx264) writes the MP4 files. No TensorFlow here.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from training.learn.labelled_files import MANIFEST_NAME

CLASSES: tuple[str, ...] = (
    "left_to_right",
    "right_to_left",
    "grow",
    "shrink",
    "red_then_blue",
    "blue_then_red",
)
"""Every class, in the order ``select_classes(n)`` takes them (pairs stay together)."""

CLIP_SECONDS = (1.5, 4.0)
"""Range of a clip's length, in seconds (uniform)."""

SEGMENTED_CLIP_SECONDS = (3.0, 6.0)
"""Range of a two-segment clip's length, in seconds (uniform)."""

_REVERSED_OF = {
    "right_to_left": "left_to_right",
    "shrink": "grow",
    "blue_then_red": "red_then_blue",
}
"""Second class of a pair -> the first class, whose track it plays backwards."""

_KINDS = ("square", "disc")
_CLEAN_GREY = 128
"""Background level of a ``clutter=False`` render, on every channel."""
_MARGIN_PX = 2.0
"""Gap kept between the main shape and the frame's edge, in pixels."""


@dataclass(frozen=True)
class _Track:
    """One shape's state per frame: centre (x, y) and half-size r in pixels, RGB colour."""

    kind: str
    cx: np.ndarray
    cy: np.ndarray
    r: np.ndarray
    colour: np.ndarray  # (N, 3) float

    def reversed(self) -> _Track:
        return _Track(self.kind, self.cx[::-1], self.cy[::-1], self.r[::-1], self.colour[::-1])

    def __len__(self) -> int:
        return len(self.cx)


def select_classes(spec: str | int | None) -> list[str]:
    """Pick the classes to generate: None (all), the first n, or comma-separated names.

    Args:
        spec: None for every class; an int n for ``CLASSES[:n]`` (2 gives the left/right pair,
            4 adds grow/shrink); or a string such as ``"grow,shrink"`` (a digit string counts
            as n).

    Returns:
        Class names, in the order given (CLASSES order for None or n).

    Raises:
        ValueError: n outside 1..len(CLASSES), an unknown or repeated name, or no names.
    """
    valid = ", ".join(CLASSES)
    if spec is None:
        return list(CLASSES)
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    if isinstance(spec, int):
        if not 1 <= spec <= len(CLASSES):
            raise ValueError(f"number of classes must be 1..{len(CLASSES)}, got {spec}")
        return list(CLASSES[:spec])
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no class names given; valid names: {valid}")
    unknown = [name for name in names if name not in CLASSES]
    if unknown:
        raise ValueError(f"unknown class name(s) {', '.join(unknown)}; valid names: {valid}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeated in {spec!r}")
    return names


def clip_rng(seed: int, class_index: int, i: int) -> np.random.Generator:
    """The generator for clip ``i`` of class ``CLASSES[class_index]`` in a data set.

    Keyed on the class's index in CLASSES (not in the selection), so a clip's content does
    not depend on which other classes are generated with it.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, i]))


def render_clip(
    label: str,
    rng: np.random.Generator,
    *,
    width: int = 160,
    height: int = 120,
    fps: int = 25,
    clutter: bool = True,
) -> np.ndarray:
    """Draw one clip of class ``label``.

    Args:
        label: one of CLASSES.
        rng: source of all randomness; the same generator state gives the same clip.
        width, height: frame size in pixels.
        fps: frames per second; the clip lasts CLIP_SECONDS, so its frame count scales.
        clutter: False draws only the main shape on flat grey (no texture, noise or
            distractors), with the same main-shape track as the cluttered clip from the
            same generator state: for tests that measure the shape.

    Returns:
        (N, height, width, 3) uint8 RGB frames.

    Raises:
        ValueError: unknown label, frame size under 16 pixels, or fps < 1.
    """
    _check_args([label], width, height, fps)
    main_rng, scene_rng = _split(rng)
    n = max(2, round(main_rng.uniform(*CLIP_SECONDS) * fps))
    kind = _KINDS[int(main_rng.integers(len(_KINDS)))]
    track = _main_track(label, main_rng, n, width, height, fps, kind)
    return _draw_scene(track, scene_rng, width, height, fps, clutter)


def render_segmented_clip(
    labels: tuple[str, str],
    rng: np.random.Generator,
    *,
    width: int = 160,
    height: int = 120,
    fps: int = 25,
    clutter: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Draw a clip whose first part shows ``labels[0]`` and the rest ``labels[1]``.

    For frame-level (TimelineLabels) work. The second part picks up where the first ends:
    same shape kind, same colour (unless it is a colour class), and it starts at the first
    part's last position as far as the frame allows. Its size may jump.

    Args:
        labels: the two classes, in order (they may be the same).
        rng, width, height, fps, clutter: as for ``render_clip``.

    Returns:
        (N, height, width, 3) uint8 frames and N per-frame labels; the split falls between
        35 % and 65 % of a clip lasting SEGMENTED_CLIP_SECONDS.

    Raises:
        ValueError: as for ``render_clip``.
    """
    first, second = labels
    _check_args([first, second], width, height, fps)
    main_rng, scene_rng = _split(rng)
    n = max(4, round(main_rng.uniform(*SEGMENTED_CLIP_SECONDS) * fps))
    split = min(n - 2, max(2, round(n * main_rng.uniform(0.35, 0.65))))
    kind = _KINDS[int(main_rng.integers(len(_KINDS)))]
    a = _main_track(first, main_rng, split, width, height, fps, kind)
    b = _main_track(second, main_rng, n - split, width, height, fps, kind)
    b = _continue(a, b, width, height)
    track = _Track(
        kind,
        np.concatenate([a.cx, b.cx]),
        np.concatenate([a.cy, b.cy]),
        np.concatenate([a.r, b.r]),
        np.concatenate([a.colour, b.colour]),
    )
    frames = _draw_scene(track, scene_rng, width, height, fps, clutter)
    return frames, [first] * split + [second] * (n - split)


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: int) -> None:
    """Encode RGB frames as an H.264 (yuv420p) MP4, the format Label Studio plays.

    The same frames give the same file with the same libx264 build, on any machine.

    Raises:
        ValueError: frames not (N, H, W, 3) uint8 with N >= 1, or an odd width or height
            (yuv420p halves both for chroma).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    _, height, width, _ = frames.shape
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        # Same frames, same file: x264's output depends on its thread count (auto is 1.5 x
        # cores), and with macroblock-tree rate control its AVX-512 code gave run-to-run
        # different files here (x264 core 165). One thread is also the fastest at these sizes.
        stream.options = {
            "preset": "veryfast",
            "crf": "23",
            "threads": "1",
            "x264-params": "mbtree=0",
        }
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def generate_dataset(
    out_dir: str | os.PathLike[str],
    *,
    classes: list[str],
    per_class: int,
    seed: int = 0,
    width: int = 160,
    height: int = 120,
    fps: int = 25,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``per_class`` clips per class and a manifest; the same seed gives the same clips.

    Layout: ``out_dir/<label>/<label>_<i:04d>.mp4`` and ``out_dir/manifest.csv`` (header
    ``path,label``, paths relative to out_dir, written last and atomically, so a manifest
    never names a clip that is not there). Clip i of a class uses ``clip_rng(seed,
    CLASSES.index(label), i)``.

    Args:
        out_dir: created if missing; existing clips with the same names are overwritten.
        classes: names from CLASSES (see ``select_classes``).
        per_class: clips per class, >= 1.
        seed: non-negative data set seed.
        width, height: frame size in pixels, both even.
        fps: frames per second.
        progress: called as ``progress(done, total)`` after each clip.

    Returns:
        The manifest's path.

    Raises:
        ValueError: no or unknown or repeated classes, per_class < 1, a negative seed, or a
            bad frame size or fps.
    """
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {CLASSES}, got {classes}")
    if per_class < 1 or seed < 0:
        raise ValueError(f"need per_class >= 1 and seed >= 0, got {per_class} and {seed}")
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even, got {width}x{height}")
    _check_args(classes, width, height, fps)
    out = Path(out_dir)
    rows: list[tuple[str, str]] = []
    total = len(classes) * per_class
    for label in classes:
        (out / label).mkdir(parents=True, exist_ok=True)
        class_index = CLASSES.index(label)
        for i in range(per_class):
            rel = f"{label}/{label}_{i:04d}.mp4"
            rng = clip_rng(seed, class_index, i)
            frames = render_clip(label, rng, width=width, height=height, fps=fps)
            write_video(out / rel, frames, fps)
            rows.append((rel, label))
            if progress is not None:
                progress(len(rows), total)
    manifest = out / MANIFEST_NAME
    tmp = out / f".{MANIFEST_NAME}.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest


# --- tracks ---------------------------------------------------------------------------------


def _check_args(labels: list[str], width: int, height: int, fps: int) -> None:
    for label in labels:
        if label not in CLASSES:
            raise ValueError(f"unknown class {label!r}; valid names: {', '.join(CLASSES)}")
    if width < 16 or height < 16 or fps < 1:
        raise ValueError(f"need width, height >= 16 and fps >= 1, got {width}x{height}@{fps}")


def _split(rng: np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    """Separate generators for the main shape and the scene, so ``clutter`` keeps the track."""
    main_seed, scene_seed = rng.integers(2**63, size=2)
    return np.random.default_rng(int(main_seed)), np.random.default_rng(int(scene_seed))


def _main_track(
    label: str, rng: np.random.Generator, n: int, width: int, height: int, fps: int, kind: str
) -> _Track:
    """The main shape's track; a pair's second class plays the first one's track backwards."""
    forward = _REVERSED_OF.get(label, label)
    scale = min(width, height) / 120
    make = {"left_to_right": _track_move, "grow": _track_grow, "red_then_blue": _track_colour}
    track = make[forward](rng, n, width, height, fps, scale, kind)
    return track.reversed() if label in _REVERSED_OF else track


def _continue(before: _Track, after: _Track, width: int, height: int) -> _Track:
    """Move ``after`` to start where ``before`` ends (clamped to the frame), keep its colour."""
    room = float(after.r.max()) + _MARGIN_PX
    dx = np.clip(before.cx[-1] - after.cx[0], room - after.cx.min(), width - room - after.cx.max())
    dy = np.clip(before.cy[-1] - after.cy[0], room - after.cy.min(), height - room - after.cy.max())
    colour_changes = np.ptp(after.colour, axis=0).max() > 0
    colour = after.colour if colour_changes else _constant(before.colour[-1], len(after))
    return _Track(after.kind, after.cx + dx, after.cy + dy, after.r, colour)


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
) -> _Track:
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
    return _Track(kind, cx, cy, np.full(n, r), _constant(_vivid(rng), n))


def _track_grow(
    rng: np.random.Generator, n: int, width: int, height: int, fps: int, scale: float, kind: str
) -> _Track:
    """Small to large (at least 3x), drifting a little on the way."""
    r_small = rng.uniform(3.0, 7.0) * scale
    r_large = min(rng.uniform(18.0, 30.0) * scale, min(width, height) / 2 - _MARGIN_PX - 1)
    f = _progress(rng, n)
    r = r_small + (r_large - r_small) * f
    drift = rng.uniform(0.0, 8.0) * scale
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = drift * np.cos(angle), drift * np.sin(angle)
    room = r_large + _MARGIN_PX
    cx0 = rng.uniform(room + max(0.0, -dx), width - room - max(0.0, dx))
    cy0 = rng.uniform(room + max(0.0, -dy), height - room - max(0.0, dy))
    return _Track(kind, cx0 + dx * f, cy0 + dy * f, r, _constant(_vivid(rng), n))


def _track_colour(
    rng: np.random.Generator, n: int, width: int, height: int, fps: int, scale: float, kind: str
) -> _Track:
    """Red, then blue from 30-70 % of the clip (a blend of up to 3 frames), drifting slowly."""
    r = rng.uniform(8.0, 16.0) * scale
    drift = rng.uniform(0.0, 20.0) * scale
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = drift * np.cos(angle), drift * np.sin(angle)
    room = r + _MARGIN_PX
    cx0 = rng.uniform(room + max(0.0, -dx), width - room - max(0.0, dx))
    cy0 = rng.uniform(room + max(0.0, -dy), height - room - max(0.0, dy))
    u = np.linspace(0.0, 1.0, n)
    red = np.array([210.0, 35.0, 35.0]) + rng.uniform(-25, 25, size=3)
    blue = np.array([35.0, 60.0, 215.0]) + rng.uniform(-25, 25, size=3)
    switch = int(round(rng.uniform(0.3, 0.7) * (n - 1)))
    blend = int(rng.integers(1, 5))
    mix = np.clip((np.arange(n) - switch + 1) / blend, 0.0, 1.0)[:, None]
    colour = red * (1 - mix) + blue * mix
    return _Track(kind, cx0 + dx * u, cy0 + dy * u, np.full(n, r), colour)


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


def _draw_scene(
    track: _Track, rng: np.random.Generator, width: int, height: int, fps: int, clutter: bool
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


def _distractor(rng: np.random.Generator, n: int, width: int, height: int, fps: int) -> _Track:
    """A small, greyish shape moving in a straight line and bouncing off the edges."""
    scale = min(width, height) / 120
    r = rng.uniform(2.5, 6.0) * scale
    speed = rng.uniform(10.0, 60.0) * scale
    angle = rng.uniform(0, 2 * np.pi)
    t = np.arange(n) / fps
    cx = _bounce(rng.uniform(r, width - r) + speed * np.cos(angle) * t, r, width - r)
    cy = _bounce(rng.uniform(r, height - r) + speed * np.sin(angle) * t, r, height - r)
    colour = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.2, 1.0))
    kind = _KINDS[int(rng.integers(len(_KINDS)))]
    return _Track(kind, cx, cy, np.full(n, r), _constant(colour, n))


def _bounce(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] as if reflected off both ends."""
    length = hi - lo
    y = np.mod(x - lo, 2 * length)
    return lo + np.where(y > length, 2 * length - y, y)


def _draw_shape(frame: np.ndarray, track: _Track, t: int) -> None:
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
