"""Predict a long video window by window and stitch the windows into one prediction.

Why: under windowed sampling (training/video/windows.py) a video is many windows of T
samples; Label Studio wants one answer per task: a timeline as fine as the sampling rate and
one class. Per-sample outputs are averaged where windows overlap, then smoothed once (a
centred moving average over SMOOTH_SAMPLES samples, so a lone flip inside a segment does not
split it); the class is the mean of the windows' class probabilities.

Decoding runs on a thread of its own, at most two batches of windows ahead of the model, so
memory stays flat however long the video is: besides those windows only a few numbers per
sample are kept. Used by training/model/inference.py ``predict_clips``, the one prediction
path of /predict, the refresh job and ``videoloop predict``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from training.model.embedding import EMBEDDING
from training.model.loaded import LoadedModel
from training.video.clip import Clip, stack_clips
from training.video.windows import WindowedVideo

SMOOTH_SAMPLES = 3
"""Width of the one smoothing pass over the stitched per-sample probabilities, in samples."""

_POLL_S = 0.1
"""How often a blocked decode thread checks whether it was told to stop, in seconds."""

_END = object()


class DeadlineReached(Exception):
    """The caller's deadline came before the last window was predicted."""


@dataclass
class Stitched:
    """Sums of per-sample and per-window outputs, merged as windows arrive."""

    indices: list[int] = field(default_factory=list)
    timeline: list[np.ndarray] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    windows: int = 0

    def add(self, clip: Clip, outputs: dict[str, np.ndarray], row: int) -> None:
        """Add one window's outputs (row ``row`` of a batch)."""
        self.windows += 1
        for name in ("classes", EMBEDDING):
            if name in outputs:
                value = np.asarray(outputs[name][row], np.float64)
                self.outputs[name] = self.outputs.get(name, 0.0) + value
        if "timeline" not in outputs:
            return
        probs = np.asarray(outputs["timeline"][row], np.float64)
        first = _position(self.indices, clip.indices[0])
        for t, index in enumerate(clip.indices):
            at = first + t
            if at == len(self.indices):
                self.indices.append(index)
                self.timeline.append(probs[t].copy())
                self.counts.append(1)
            else:
                self.timeline[at] += probs[t]
                self.counts[at] += 1

    def mean(self, name: str) -> np.ndarray | None:
        value = self.outputs.get(name)
        return None if value is None else np.asarray(value / self.windows, np.float32)

    def smoothed_timeline(self) -> np.ndarray | None:
        """(N, C) averaged over windows, then one centred moving average."""
        if not self.timeline:
            return None
        mean = np.stack(self.timeline) / np.asarray(self.counts, np.float64)[:, None]
        return smooth(mean, SMOOTH_SAMPLES).astype(np.float32)


def _position(indices: list[int], first: int) -> int:
    """Where a window starting at video frame ``first`` starts among the samples so far
    (windows arrive in order and overlap only the latest samples)."""
    at = len(indices)
    while at > 0 and indices[at - 1] >= first:
        at -= 1
    return at


def smooth(probs: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along axis 0 over ``width`` rows (fewer at the ends)."""
    if width <= 1 or len(probs) < 2:
        return probs
    half = width // 2
    padded = np.cumsum(np.vstack([np.zeros((1, probs.shape[1])), probs]), axis=0)
    n = len(probs)
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    return (padded[hi] - padded[lo]) / (hi - lo)[:, None]


def predict_windowed(
    model: LoadedModel,
    video: WindowedVideo,
    *,
    deadline: float | None = None,
    on_batch: Callable[[int, float], object] | None = None,
) -> tuple[Clip, Stitched]:
    """Run every window of ``video`` through ``model`` in batches and stitch them.

    Returns:
        A Clip standing for the whole video (every sample's frame index, no pixels) and the
        stitched outputs.

    Raises:
        VideoDecodeError: the video cannot be read (or is over a limit) partway.
        DeadlineReached: ``deadline`` (a time.monotonic() value) passed between batches.
    """
    batch_size = max(1, model.batch_size)
    stitched = Stitched()
    batch: list[Clip] = []
    for window in _decoded_ahead(video, 2 * batch_size, deadline):
        batch.append(window)
        if len(batch) == batch_size:
            _run(model, batch, stitched, on_batch)
            batch.clear()
    _run(model, batch, stitched, on_batch)
    config = video.config
    clip = Clip(
        np.zeros((0, config.height, config.width, 3), np.uint8),
        np.ones(len(stitched.indices), bool),
        stitched.indices,
        video.fps,
        video.frame_count,
        video.duration_s,
    )
    return clip, stitched


def _run(
    model: LoadedModel,
    batch: list[Clip],
    stitched: Stitched,
    on_batch: Callable[[int, float], object] | None,
) -> None:
    if not batch:
        return
    started = time.perf_counter()
    outputs = model.predict(*stack_clips(batch))
    if on_batch is not None:
        on_batch(len(batch), time.perf_counter() - started)
    for row, clip in enumerate(batch):
        stitched.add(clip, outputs, row)


def _decoded_ahead(video: WindowedVideo, ahead: int, deadline: float | None) -> Iterator[Clip]:
    """``video.windows()`` decoded on a thread, at most ``ahead`` windows ahead; the thread
    stops (and closes the file) when the caller stops or its deadline passes."""
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        windows = video.windows()
        try:
            for window in windows:
                if not put(window):
                    return
            put(_END)
        except BaseException as exc:  # handed to the caller, raised there
            put(exc)
        finally:
            windows.close()

    thread = threading.Thread(target=decode, name="windows", daemon=True)
    thread.start()
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineReached
            try:
                item = ready.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
