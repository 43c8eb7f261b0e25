"""Sequential decoding vs seeking per target, to choose training.video.decoder.SEEK_ABOVE_S.

Why: decoding every frame is cheapest for short videos, seeking for long ones; this finds the
crossover. Samples 16 frames at 112x112 both ways from the real clips in tests/data and from
synthetic videos of 10-120 s with short and long keyframe intervals (written to a temp dir),
and prints the best wall-clock and CPU time per clip with their ratios ("seq/seek" above 1:
seeking is faster). Run from the repository root (about 3.5 minutes):

    .venv/bin/python bench/sampling.py 2>/dev/null

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from training.video.clip import SamplingConfig
from training.video.decoder import sample_clip

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
CONFIG = SamplingConfig(frames=16, height=112, width=112)
FPS = 25
REPEATS = 7


def make_video(path: Path, seconds: int, gop_frames: int) -> None:
    """640x360 libx264 (preset veryfast, B-frames on, a keyframe every ``gop_frames`` exactly)
    with moving content, so that P and B frames cost something to decode."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 40, (360 + 64, 640 + 64, 3), dtype=np.uint8)
    y, x = np.mgrid[0:360, 0:640]
    with av.open(str(path), "w") as out:
        options = {"preset": "veryfast", "g": str(gop_frames), "sc_threshold": "0"}
        stream = out.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for k in range(seconds * FPS):
            dx, dy = (3 * k) % 64, k % 64
            image = noise[dy : dy + 360, dx : dx + 640].copy()
            image[..., 0] += ((x + 4 * k) % 200).astype(np.uint8)
            image[..., 1] += ((y + 2 * k) % 200).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def time_ms(path: Path) -> dict[str, tuple[float, float]]:
    """Best of REPEATS (interleaved) wall-clock and CPU milliseconds per clip, per method."""
    methods = {"seq": float("inf"), "seek": 0.0}
    best = {name: (float("inf"), float("inf")) for name in methods}
    for _ in range(REPEATS):
        for name, seek_above_s in methods.items():
            wall, cpu = time.perf_counter(), time.process_time()
            sample_clip(path, CONFIG, seek_above_s=seek_above_s)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall * 1000), min(best[name][1], cpu * 1000))
    return best


def describe(path: Path) -> tuple[str, float, int]:
    """Size, length in seconds and number of keyframes."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keyframes = sum(1 for p in container.demux(stream) if p.size and p.is_keyframe)
        return (
            f"{stream.width}x{stream.height}",
            float(stream.duration * stream.time_base),
            keyframes,
        )


def main() -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: nproc={os.cpu_count()} python={platform.python_version()} av={av.__version__}")
    print(f"load average at start: {load} (best of {REPEATS}, interleaved, to damp it)")
    print(f"sampling {CONFIG.frames} frames at {CONFIG.width}x{CONFIG.height}")
    print("ms: best wall-clock time per clip; cpu: the same for CPU time (all threads)")
    print(
        f"{'video':26} {'size':>9} {'len s':>6} {'keys':>5}"
        f" {'seq ms':>7} {'seek ms':>7} {'seq/seek':>8} {'cpu seq/seek':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        videos = sorted(DATA.glob("*.mp4"))
        for gop_s in (2, 10):
            for seconds in (10, 20, 30, 60, 120):
                path = Path(tmp) / f"synth_{seconds}s_gop{gop_s}s.mp4"
                make_video(path, seconds, gop_s * FPS)
                videos.append(path)
        for path in videos:
            size, length_s, keyframes = describe(path)
            (seq, seq_cpu), (seek, seek_cpu) = time_ms(path).values()
            print(
                f"{path.name:26} {size:>9} {length_s:6.1f} {keyframes:5d}"
                f" {seq:7.0f} {seek:7.0f} {seq / seek:8.2f} {seq_cpu / seek_cpu:12.2f}"
            )


if __name__ == "__main__":
    main()
