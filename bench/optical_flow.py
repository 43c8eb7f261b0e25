"""Dense optical flow between consecutive frames, three ways, and how fast each is (issue 17).

Why: the two-stream extension (bench/extensions.py) feeds a model the flow beside the RGB
frames, and the flow is computed on the CPU for every clip a worker trains on or serves, so
its cost per frame pair decides which implementation is worth it. Compared on the same
frames (motion4 clips, 16 frames sampled over each, as the product samples them):

* ``farneback``: OpenCV's Farneback (polynomial expansion; the classic dense flow);
* ``dis``: OpenCV's DIS (dense inverse search, ULTRAFAST preset), built to be fast on CPUs;
* ``normal``: "poor man's flow", numpy only: the normal flow from brightness constancy,
  ``-dI/dt * grad I / (|grad I|^2 + eps)``, exact only along the image gradient but with the
  right sign of motion, from one difference and two gradients.

OpenCV is the ``bench`` extra (``pip install -e .[bench]``), never a dependency of the
product. Single-threaded OpenCV (``cv2.setNumThreads(1)``), so the figures are per core:

    TF_NUM_INTRAOP_THREADS=1 .venv/bin/python bench/optical_flow.py [--clips 8] [--sizes 112 64]

Results: bench/RESULTS.md#extensions-issue-17.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("farneback", "dis", "normal")
FLOW_SCALE = 4.0
"""Pixels of motion per unit of model input: the flow is divided by this and clipped."""
FLOW_CLIP = 3.0


def _cv2():
    import cv2  # the ``bench`` extra

    cv2.setNumThreads(1)
    return cv2


def pair_flow(method: str):
    """A function (previous, current) gray uint8 frames -> (H, W, 2) float32 flow in pixels."""
    if method == "farneback":
        cv2 = _cv2()
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    if method == "dis":
        cv2 = _cv2()
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        return lambda a, b: dis.calc(a, b, None)
    if method == "normal":
        return normal_flow
    raise ValueError(f"unknown flow method {method!r}; one of {', '.join(METHODS)}")


def normal_flow(previous: np.ndarray, current: np.ndarray, eps: float = 4.0) -> np.ndarray:
    """The normal flow of brightness constancy (gray uint8 frames in, pixels out): the motion
    along the image gradient that explains the frame difference."""
    a, b = previous.astype(np.float32), current.astype(np.float32)
    gy, gx = np.gradient(0.5 * (a + b))
    dt = b - a
    scale = -dt / (gx * gx + gy * gy + eps)
    return np.stack([scale * gx, scale * gy], axis=-1)


def clip_flow(gray: np.ndarray, method: str, flow=None) -> np.ndarray:
    """(T, H, W) uint8 frames -> (T, H, W, 2) float32 flow into each frame from the one
    before (zero for the first, as FrameDifferences does), scaled for a model's input."""
    flow = flow or pair_flow(method)
    out = np.zeros((*gray.shape, 2), np.float32)
    for t in range(1, len(gray)):
        out[t] = flow(gray[t - 1], gray[t])
    return np.clip(out / FLOW_SCALE, -FLOW_CLIP, FLOW_CLIP)


def batch_flow(gray: np.ndarray, method: str) -> np.ndarray:
    """(B, T, H, W) uint8 -> (B, T, H, W, 2) float32: clip_flow over a batch."""
    flow = pair_flow(method)
    out = np.zeros((*gray.shape, 2), np.float32)
    for i, clip in enumerate(gray):
        out[i] = clip_flow(clip, method, flow)
    return out


def _clips(n: int, size: int, frames: int) -> np.ndarray:
    """``n`` motion4 clips (data seed 1), ``frames`` frames spread over each, gray uint8."""
    from training.video.synth import paired_clip, select_classes

    labels = select_classes("motion4")
    clips = []
    for i in range(n):
        clip = paired_clip(labels[i % len(labels)], 1, i, width=size, height=size)
        at = np.linspace(0, len(clip) - 1, frames).round().astype(int)
        rgb = clip[at].astype(np.float32)
        clips.append((rgb @ np.float32([0.299, 0.587, 0.114])).round().astype(np.uint8))
    return np.stack(clips)


def time_methods(clips: np.ndarray, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per frame pair of each method on ``clips`` (B, T, H, W): best of
    ``repeats`` passes over all of them."""
    pairs = clips.shape[0] * (clips.shape[1] - 1)
    ms = {}
    for method in METHODS:
        flow = pair_flow(method)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for clip in clips:
                clip_flow(clip, method, flow)
            best = min(best, time.perf_counter() - started)
        ms[method] = best / pairs * 1000
    return ms


def agreement(clips: np.ndarray, reference: str = "farneback") -> dict[str, float]:
    """Cosine similarity of each method's flow vectors with ``reference``'s, over pixels where
    the reference moves more than half a pixel: does the cheap flow point the same way?"""
    ref = np.concatenate([clip_flow(c, reference)[1:] for c in clips]) * FLOW_SCALE
    moving = np.linalg.norm(ref, axis=-1) > 0.5
    out = {}
    for method in METHODS:
        other = np.concatenate([clip_flow(c, method)[1:] for c in clips]) * FLOW_SCALE
        dot = (ref * other).sum(-1)
        norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(other, axis=-1) + 1e-6
        out[method] = float((dot / norms)[moving].mean()) if moving.any() else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 64])
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    cv2 = _cv2()
    print(f"opencv {cv2.__version__}, numpy {np.__version__}, 1 OpenCV thread")
    print(
        f"{'size':>7} {'method':10} {'ms/pair':>8} {'x farneback':>11} {'ms/clip':>8} "
        f"{'cos vs farneback':>16}"
    )
    for size in args.sizes:
        clips = _clips(args.clips, size, args.frames)
        ms, cos = time_methods(clips), agreement(clips)
        for method in METHODS:
            print(
                f"{size:>3}x{size:<3} {method:10} {ms[method]:8.3f} "
                f"{ms[method] / ms['farneback']:11.3f} {ms[method] * (args.frames - 1):8.1f} "
                f"{cos[method]:16.3f}"
            )


if __name__ == "__main__":
    main()
