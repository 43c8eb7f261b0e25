"""Long synthetic videos (minutes) with many motion segments, labelled as Label Studio would.

Why: T frames spread over a whole video cannot place a boundary finer than the video's length
over 2T, so windowed sampling (training/video/windows.py) has to be measured on videos long
enough to show it: 2-5 minutes with 10-30 segments of random lengths and random gaps. Between
segments the main shape stands still ("no label"); during one it moves as a class of
training/video/synth.py does, starting where it stood.

The set is written as Label Studio tasks (``tasks.json``, importable as is): each task's
``data`` names the video and its ``fps`` (the config's ``frameRate="$fps"``) and its one
annotation holds ``timelinelabels`` regions in Label Studio's numbering (1-based, inclusive
frames at the video's own rate). Frames are drawn and encoded a chunk at a time, so a 10-minute
360p video never sits in memory whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from training.labelstudio.timeline import Segment, segments_from_result
from training.video.synth import CLASSES, clip_rng
from training.video.synth_scene import KINDS, Track, continue_track, draw_scene, main_track

LONG_TASKS_NAME = "tasks.json"
"""The Label Studio task list a long set is written as, in its folder."""

LONG_LABELS: tuple[str, ...] = ("left_to_right", "right_to_left")
"""The timeline labels of a long set unless others are asked for."""

SEGMENT_SECONDS = (2.0, 8.0)
"""Range of one motion segment's length, in seconds (uniform)."""

MIN_GAP_S = 0.5
"""Shortest stillness between two segments (and at both ends), in seconds."""

CHUNK_FRAMES = 48
"""Frames drawn at once; each chunk redraws the scene from the same seed, so distractors jump
at chunk edges, which fall anywhere relative to the labels."""

FROM_NAME, TO_NAME = "motion", "video"
"""The <TimelineLabels> and <Video> names of the tasks' annotations."""


@dataclass(frozen=True)
class LongVideo:
    """One video of a long set: its file, its frame rate and its true segments."""

    path: Path
    fps: float
    segments: list[Segment]


def plan_segments(
    rng: np.random.Generator, frames: int, fps: int, count: tuple[int, int], labels: Sequence[str]
) -> list[Segment]:
    """Random segments for a video of ``frames`` frames: ``count`` (min, max) of them, each
    SEGMENT_SECONDS long, with random gaps of at least MIN_GAP_S; fewer when they do not fit.

    Returns:
        Segments in time order, in Label Studio's numbering at ``fps``.
    """
    gap = max(1, round(MIN_GAP_S * fps))
    wanted = int(rng.integers(count[0], count[1] + 1))
    lengths = [max(2, round(rng.uniform(*SEGMENT_SECONDS) * fps)) for _ in range(wanted)]
    while lengths and sum(lengths) + gap * (len(lengths) + 1) > frames:
        lengths.pop()
    spare = frames - sum(lengths) - gap * (len(lengths) + 1)
    extra = np.floor(rng.dirichlet(np.ones(len(lengths) + 1)) * spare).astype(int)
    out, start = [], 1
    for i, length in enumerate(lengths):
        start += gap + int(extra[i])
        label = labels[int(rng.integers(len(labels)))]
        out.append(Segment(start, start + length - 1, label))
        start += length
    return out


def long_track(
    segments: Sequence[Segment], rng: np.random.Generator, frames: int, width: int, height: int,
    fps: int,
) -> Track:  # fmt: skip
    """The main shape over the whole video: still between segments, each segment's motion
    starting where the shape stood."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    still = main_track(LONG_LABELS[0], rng, 2, width, height, fps, kind)
    parts: list[Track] = []
    done = 0
    for s in [*segments, None]:
        end = frames if s is None else s.start - 1
        if end > done:
            parts.append(_hold(still, end - done))
        if s is None:
            break
        move = main_track(s.label, rng, s.length, width, height, fps, kind)
        still = continue_track(parts[-1] if parts else still, move, width, height)
        parts.append(still)
        done = s.end
    return Track(
        kind,
        *(np.concatenate([getattr(p, name) for p in parts]) for name in ("cx", "cy", "r")),
        np.concatenate([np.asarray(p.colour) for p in parts]),
    )


def moving_parts(segments: Sequence[Segment], track: Track) -> list[Segment]:
    """Each segment trimmed to the frames where the shape moves: a class's motion may pause
    at its start and end (synth_scene ``_progress``), which would look like the stillness
    between segments; the labels follow what is seen. A segment that never moves is dropped."""
    steps = np.abs(np.diff(np.stack([track.cx, track.cy, track.r], axis=1), axis=0)).sum(axis=1)
    colour = np.abs(np.diff(np.asarray(track.colour), axis=0)).sum(axis=1)
    moving = np.concatenate([[False], (steps > 1e-3) | (colour > 1e-3)])  # frame k moved from k-1
    out = []
    for s in segments:
        inside = np.flatnonzero(moving[s.start - 1 : s.end])
        if len(inside):
            out.append(Segment(s.start + int(inside[0]), s.start + int(inside[-1]), s.label))
    return out


def _hold(before: Track, n: int) -> Track:
    """The shape standing still for n frames where ``before`` ends."""
    return Track(
        before.kind,
        np.full(n, before.cx[-1]),
        np.full(n, before.cy[-1]),
        np.full(n, before.r[-1]),
        np.broadcast_to(np.asarray(before.colour)[-1], (n, 3)),
    )


def render_long_video(
    path: str | os.PathLike[str],
    rng: np.random.Generator,
    *,
    seconds: float,
    width: int = 160,
    height: int = 120,
    fps: int = 10,
    count: tuple[int, int] = (10, 30),
    labels: Sequence[str] = LONG_LABELS,
    clutter: bool = True,
) -> list[Segment]:
    """Draw and encode one long video (H.264 MP4) chunk by chunk; returns its true segments.
    ``clutter=False``: the shape alone on grey (for tests that measure its motion)."""
    frames = max(2, round(seconds * fps))
    planned = plan_segments(rng, frames, fps, count, labels)
    track = long_track(planned, rng, frames, width, height, fps)
    segments = moving_parts(planned, track)
    scene_seed = int(rng.integers(2**63))
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "threads": "1"}
        for chunk in _chunks(track, scene_seed, width, height, fps, clutter):
            for frame in chunk:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return segments


def _chunks(
    track: Track, scene_seed: int, width: int, height: int, fps: int, clutter: bool
) -> Iterator[np.ndarray]:
    for first in range(0, len(track), CHUNK_FRAMES):
        part = slice(first, first + CHUNK_FRAMES)
        piece = Track(track.kind, track.cx[part], track.cy[part], track.r[part], track.colour[part])
        yield draw_scene(piece, np.random.default_rng(scene_seed), width, height, fps, clutter)


def generate_long_set(
    out_dir: str | os.PathLike[str],
    *,
    videos: int,
    seed: int = 0,
    seconds: tuple[float, float] = (120.0, 300.0),
    segments: tuple[int, int] = (10, 30),
    width: int = 160,
    height: int = 120,
    fps: int = 10,
    labels: Sequence[str] = LONG_LABELS,
    clutter: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``videos`` long videos and their Label Studio tasks (LONG_TASKS_NAME, written last
    and atomically); the same arguments give the same set.

    Raises:
        ValueError: no videos, unknown labels, an odd frame size, or a bad range.
    """
    if videos < 1 or seed < 0 or not 0 < seconds[0] <= seconds[1] or segments[0] > segments[1]:
        raise ValueError(f"bad long set arguments: {videos} videos, {seconds} s, {segments}")
    if width % 2 or height % 2 or min(width, height) < 16 or fps < 1:
        raise ValueError(f"need an even size >= 16 and fps >= 1, got {width}x{height}@{fps}")
    if not labels or any(label not in CLASSES for label in labels):
        raise ValueError(f"labels must be from {CLASSES}, got {labels}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(videos):
        rng = clip_rng(seed, len(CLASSES), i)
        rel = f"long_{i:04d}.mp4"
        length = float(rng.uniform(*seconds))
        truth = render_long_video(
            out / rel, rng, seconds=length, width=width, height=height, fps=fps,
            count=segments, labels=labels, clutter=clutter,
        )  # fmt: skip
        tasks.append(_task(i, rel, fps, truth))
        if progress is not None:
            progress(i + 1, videos)
    target = out / LONG_TASKS_NAME
    tmp = out / f".{LONG_TASKS_NAME}.tmp"
    tmp.write_text(json.dumps(tasks, indent=1), encoding="utf-8")
    os.replace(tmp, target)
    return target


def _task(i: int, rel: str, fps: int, truth: Sequence[Segment]) -> dict:
    result = [
        {
            "id": f"{FROM_NAME}-{s.start}",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "timelinelabels",
            "value": {"ranges": [{"start": s.start, "end": s.end}], "timelinelabels": [s.label]},
        }
        for s in truth
    ]
    return {"id": i + 1, "data": {TO_NAME: rel, "fps": fps}, "annotations": [{"result": result}]}


def read_long_set(folder: str | os.PathLike[str]) -> list[LongVideo]:
    """The videos of a long set and their true segments, read back from its tasks."""
    folder = Path(folder)
    tasks = json.loads((folder / LONG_TASKS_NAME).read_text(encoding="utf-8"))
    return [
        LongVideo(
            folder / task["data"][TO_NAME],
            float(task["data"]["fps"]),
            segments_from_result(task["annotations"][0]["result"], FROM_NAME, TO_NAME),
        )
        for task in tasks
    ]
