"""Distinct short clips at 360p and 720p for bench/scale.py, cut from the real videos of
tests/data and cached, so a rerun skips the encoding.

Why cuts of real videos: decoding cost depends on real content (motion, detail, B-frames), and
a large project's videos are all different files. Each clip is one (source, start) cut,
encoded at 640x360 and at 1280x720: no two clips have the same bytes, so the clip cache (keyed
by content) decodes each once, as it would in a project of that many videos. Encoded with
x264's ``ultrafast`` preset straight from the decoded frames (no RGB round trip): the
product's ``write_video`` (``veryfast``, from RGB arrays) takes about 3 s a 720p clip here.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av

SOURCES = ("bikes.mp4", "bigbuckbunny.mp4", "b.mp4", "carphone_pristine.mp4")
"""tests/data videos with distinct pictures (muted_b and carphone_distorted repeat two)."""
SIZES = ((640, 360), (1280, 720))
CLIP_S = 2.0
STEP_S = 0.1
"""Seconds between the starts of two cuts of one source."""


def make_clips(data_dir: Path, out: Path, count: int) -> list[Path]:
    """``count`` distinct clips under ``out``, half of them 720p (made once: a ``done`` file
    marks the set)."""
    done = out / "done"
    if done.exists() and done.read_text() == str(count):
        return sorted(out.glob("*.mp4"))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.mp4"):
        old.unlink()
    started = time.monotonic()
    sources = {name: _decode(data_dir / name) for name in SOURCES}
    cuts = list(_cuts(sources))
    if count > len(cuts) * len(SIZES):
        raise SystemExit(f"--clips {count}: at most {len(cuts) * len(SIZES)} distinct clips")
    paths = []
    for i in range(count):
        name, first = cuts[i // len(SIZES)]
        fps, frames = sources[name]
        width, height = SIZES[i % len(SIZES)]
        path = out / f"clip{i:04d}-{height}p.mp4"
        _encode(path, frames[first : first + round(CLIP_S * fps)], fps, width, height)
        paths.append(path)
    done.write_text(str(count))
    print(f"made {count} clips in {time.monotonic() - started:.0f} s under {out}")
    return paths


def _decode(path: Path) -> tuple[float, list[av.VideoFrame]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or 25), list(container.decode(stream))


def _cuts(sources: dict[str, tuple[float, list]]) -> Iterator[tuple[str, int]]:
    """(source, first frame) of every cut, the sources taking turns."""
    per_source = []
    for name, (fps, frames) in sources.items():
        last = len(frames) - round(CLIP_S * fps)
        per_source.append([(name, s) for s in range(0, last + 1, max(1, round(STEP_S * fps)))])
    for group in itertools.zip_longest(*per_source):
        yield from (cut for cut in group if cut is not None)


def _encode(path: Path, frames: list[av.VideoFrame], fps: float, width: int, height: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", "threads": "1"}
        for n, frame in enumerate(frames):
            scaled = frame.reformat(width=width, height=height, format="yuv420p")
            scaled.pts, scaled.time_base = n, Fraction(1, round(fps))
            container.mux(stream.encode(scaled))
        container.mux(stream.encode())
