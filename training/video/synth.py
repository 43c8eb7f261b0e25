"""Synthetic labelled videos whose classes differ only in temporal order.

Why: a model that averages frames, or that pools away where things are, cannot tell these
classes apart, so the data set tells a real temporal model from one that only looks at
single frames. The classes come in pairs; the second class of each pair is the first one's
main-shape track played backwards, so every frame of a clip could belong to either class of
its pair:

- ``left_to_right`` / ``right_to_left``: a shape moves horizontally over the same range.
- ``grow`` / ``shrink``: a shape's size changes over the same range of sizes.
- ``red_then_blue`` / ``blue_then_red``: a shape changes colour once; both colours show.
- ``approaching`` / ``receding``: a shape comes closer in perspective (grows as 1 / depth and
  slides away from a vanishing point) or goes away.

Named sets (``select_classes("motion4")``) are rendered *paired*: clip i of a pair's second
class is clip i of its first class, whole scene included, played backwards, so a clip and its
partner hold exactly the same frames and only their order tells the class.

Each clip varies: a textured background (low-frequency pattern, stripes, a fixed fine
texture and per-frame noise), 0-2 small greyish distractors moving on their own, the main
shape's kind (square or disc), colour, size, position, speed and the clip's length.

Only numpy draws; PyAV (libx264) writes the MP4 files. No TensorFlow here.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from training.learn.labelled_files import MANIFEST_NAME
from training.video.synth_scene import (
    KINDS,
    REVERSED_OF,
    Track,
    continue_track,
    draw_scene,
    main_track,
    split_rng,
)

CLASSES: tuple[str, ...] = (
    "left_to_right",
    "right_to_left",
    "grow",
    "shrink",
    "red_then_blue",
    "blue_then_red",
    "approaching",
    "receding",
)
"""Every class, in the order ``select_classes(n)`` takes them (pairs stay together)."""

SETS: dict[str, tuple[str, ...]] = {
    "motion4": ("left_to_right", "right_to_left", "approaching", "receding"),
}
"""Named class sets, rendered paired (see the module's docstring). ``motion4`` is the set the
default model is measured on (bench/quality.py ``--datasets motion``): 60 training clips a
class from seed 1, 30 test clips a class from seed 2."""

CLIP_SECONDS = (1.5, 4.0)
"""Range of a clip's length, in seconds (uniform)."""

SEGMENTED_CLIP_SECONDS = (3.0, 6.0)
"""Range of a two-segment clip's length, in seconds (uniform)."""


def select_classes(spec: str | int | None) -> list[str]:
    """Pick the classes to generate: None (all), the first n, a named set, or names.

    Args:
        spec: None for every class; an int n for ``CLASSES[:n]`` (2 gives the left/right pair,
            4 adds grow/shrink); a name of SETS (``"motion4"``); or a string such as
            ``"grow,shrink"`` (a digit string counts as n).

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
    if spec.strip() in SETS:
        return list(SETS[spec.strip()])
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no class names given; valid names: {valid}; sets: {', '.join(SETS)}")
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


def is_paired_set(classes: list[str] | tuple[str, ...]) -> bool:
    """Whether ``classes`` are exactly one of SETS (in any order): rendered paired."""
    return any(set(classes) == set(named) for named in SETS.values())


def paired_clip(
    label: str, seed: int, i: int, *, width: int = 160, height: int = 120, fps: int = 25
) -> np.ndarray:
    """Clip i of ``label`` in a paired set: a pair's second class plays clip i of the first
    class backwards, frame for frame (background, noise and distractors included).

    Returns:
        (N, height, width, 3) uint8 RGB frames; ``paired_clip(second, s, i)`` equals
        ``paired_clip(first, s, i)[::-1]``.
    """
    forward = REVERSED_OF.get(label, label)
    rng = clip_rng(seed, CLASSES.index(forward), i)
    frames = render_clip(forward, rng, width=width, height=height, fps=fps)
    return np.ascontiguousarray(frames[::-1]) if label in REVERSED_OF else frames


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
    main_rng, scene_rng = split_rng(rng)
    n = max(2, round(main_rng.uniform(*CLIP_SECONDS) * fps))
    kind = KINDS[int(main_rng.integers(len(KINDS)))]
    track = main_track(label, main_rng, n, width, height, fps, kind)
    return draw_scene(track, scene_rng, width, height, fps, clutter)


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
    main_rng, scene_rng = split_rng(rng)
    n = max(4, round(main_rng.uniform(*SEGMENTED_CLIP_SECONDS) * fps))
    split = min(n - 2, max(2, round(n * main_rng.uniform(0.35, 0.65))))
    kind = KINDS[int(main_rng.integers(len(KINDS)))]
    a = main_track(first, main_rng, split, width, height, fps, kind)
    b = main_track(second, main_rng, n - split, width, height, fps, kind)
    b = continue_track(a, b, width, height)
    track = Track(
        kind,
        np.concatenate([a.cx, b.cx]),
        np.concatenate([a.cy, b.cy]),
        np.concatenate([a.r, b.r]),
        np.concatenate([a.colour, b.colour]),
    )
    frames = draw_scene(track, scene_rng, width, height, fps, clutter)
    return frames, [first] * split + [second] * (n - split)


def write_video(
    path: str | os.PathLike[str], frames: np.ndarray, fps: int, *, gop_frames: int = 0
) -> None:
    """Encode RGB frames as an H.264 (yuv420p) MP4, the format Label Studio plays.

    The same frames give the same file with the same libx264 build, on any machine.
    ``gop_frames`` > 0 puts a keyframe exactly every that many frames (no scene-cut ones);
    0 leaves x264's choice (at most 250 frames apart).

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
        options = {"preset": "veryfast", "crf": "23", "threads": "1", "x264-params": "mbtree=0"}
        if gop_frames:
            options.update(g=str(gop_frames), sc_threshold="0")
        stream.options = options
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
    CLASSES.index(label), i)``; classes that are exactly a named set (SETS) are rendered
    paired (:func:`paired_clip`).

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
    _check_dataset_args(classes, per_class, seed, width, height, fps)
    out = Path(out_dir)
    rows: list[tuple[str, str]] = []
    total = len(classes) * per_class
    paired = is_paired_set(classes)
    size = {"width": width, "height": height, "fps": fps}
    for label in classes:
        (out / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f"{label}/{label}_{i:04d}.mp4"
            if paired:
                frames = paired_clip(label, seed, i, **size)
            else:
                frames = render_clip(label, clip_rng(seed, CLASSES.index(label), i), **size)
            write_video(out / rel, frames, fps)
            rows.append((rel, label))
            if progress is not None:
                progress(len(rows), total)
    return _write_manifest(out, rows)


def _write_manifest(out: Path, rows: list[tuple[str, str]]) -> Path:
    """``out/manifest.csv`` (header ``path,label``), written atomically."""
    manifest = out / MANIFEST_NAME
    tmp = out / f".{MANIFEST_NAME}.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest


def _check_dataset_args(
    classes: list[str], per_class: int, seed: int, width: int, height: int, fps: int
) -> None:
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {CLASSES}, got {classes}")
    if per_class < 1 or seed < 0:
        raise ValueError(f"need per_class >= 1 and seed >= 0, got {per_class} and {seed}")
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even, got {width}x{height}")
    _check_args(classes, width, height, fps)


def _check_args(labels: list[str], width: int, height: int, fps: int) -> None:
    for label in labels:
        if label not in CLASSES:
            raise ValueError(f"unknown class {label!r}; valid names: {', '.join(CLASSES)}")
    if width < 16 or height < 16 or fps < 1:
        raise ValueError(f"need width, height >= 16 and fps >= 1, got {width}x{height}@{fps}")
