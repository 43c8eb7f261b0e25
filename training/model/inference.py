"""The one path from videos to model outputs: fetch and decode on a bounded pool, batch, predict.

``/predict`` (backend/predictor.py), the refresh job (training/jobs/refresh.py) and
``videoloop predict`` all go through :func:`predict_clips`, so a limit, a deadline or a new
output added here reaches all three. It knows nothing of Label Studio's JSON or the CLI's
rows: it yields a :class:`ClipPrediction` (or a :class:`Failure` with its reason) per video,
which training/labelstudio/results.py and the CLI format. Scores are measured here, once
(:meth:`ClipPrediction.class_confidence`, :meth:`ClipPrediction.timeline_confidence`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from training.labelstudio.timeline import ScoredSegment, predict_segments
from training.model.embedding import EMBEDDING
from training.model.loaded import LoadedModel
from training.model.uncertainty import Measure, confidence
from training.model.windowed import DeadlineReached, predict_windowed
from training.video.clip import Clip, stack_clips
from training.video.decoder import VideoDecodeError
from training.video.media import HttpStatusError, MediaError, MediaRefused
from training.video.windows import WindowedVideo

log = logging.getLogger(__name__)

ClipSource = Callable[[], Clip | WindowedVideo]
"""Fetches and decodes one video; runs on the decode pool. Raises MediaError or
VideoDecodeError for a video that cannot be read (that video fails alone). A WindowedVideo
(windowed sampling, training/video/windows.py ``open_video``) is only probed there: its
windows are decoded while the model predicts them (training/model/windowed.py)."""

BatchObserver = Callable[[int, float], object]
"""Called with a batch's clip count and its forward pass's seconds (/predict's metrics)."""


LIMIT_SETTINGS = (
    "MAX_VIDEO_MB",
    "DOWNLOAD_DEADLINE_S",
    "MAX_VIDEO_PIXELS",
    "MAX_VIDEO_SECONDS",
    "MAX_VIDEO_FRAMES",
    "DECODE_DEADLINE_S",
)
"""The per-video limits (docs/security.md); a video over one fails with the setting's name in
its message, and its Failure's ``kind`` is that name in lower case."""


@dataclass(frozen=True)
class Failure:
    """A video that got no prediction, and why (logged and reported, never raised).

    ``unfinished``: not a fault of the video: the caller's deadline came first. ``kind``: the
    reason as one of a few fixed words (a limit of LIMIT_SETTINGS in lower case,
    ``media_refused``, ``http_status``, ``media_error``, ``decode_error``, ``internal_error``
    or ``deadline``), for counting; ``reason`` is the sentence for people.
    """

    reason: str
    unfinished: bool = False
    kind: str = "internal_error"


DEADLINE_REACHED = Failure(
    "the request's deadline came before this video was ready", True, kind="deadline"
)


def failure_kind(exc: BaseException) -> str:
    """The Failure ``kind`` of what a clip source raised: the limit it is over (named in its
    message by design: training/video/decode_limits.py, download.py), else its family."""
    if isinstance(exc, MediaError | VideoDecodeError):
        message = str(exc)
        for setting in LIMIT_SETTINGS:
            if setting in message:
                return setting.lower()
    if isinstance(exc, MediaRefused):
        return "media_refused"
    if isinstance(exc, HttpStatusError):
        return "http_status"
    if isinstance(exc, MediaError):
        return "media_error"
    if isinstance(exc, VideoDecodeError):
        return "decode_error"
    return "internal_error"


@dataclass(frozen=True)
class ClipPrediction:
    """What the model says about one clip, before any output format.

    ``classes`` is (K,) over ``labels``; ``timeline`` is (n, 1 + len(timeline_labels)) for the
    clip's n real frames (output 0: no label). ``offered`` arguments restrict the labels to
    those a Label Studio config offers (None: every label the model knows); a probability
    stays the model's own, so a model torn between an offered and a dropped label still
    reports low confidence.
    """

    version: str
    clip: Clip
    labels: tuple[str, ...]
    timeline_labels: tuple[str, ...]
    classes: np.ndarray | None
    timeline: np.ndarray | None
    embedding: np.ndarray | None = None
    """(D,) the classifier head's input, when the model was loaded with embeddings."""

    def best_label(self, offered: Collection[str] | None = None) -> tuple[str, float] | None:
        """The most probable offered label and its probability; None if none is offered."""
        if self.classes is None:
            return None
        allowed = [i for i, label in enumerate(self.labels) if _offers(offered, label)]
        if not allowed:
            return None
        best = max(allowed, key=lambda i: self.classes[i])  # type: ignore[index]
        return self.labels[best], float(np.clip(self.classes[best], 0.0, 1.0))

    def class_confidence(
        self, measure: str | Measure, offered: Collection[str] | None = None
    ) -> float | None:
        """The confidence of :meth:`best_label` under ``measure``, in [0, 1]."""
        best = self.best_label(offered)
        if best is None:
            return None
        p = np.asarray(self.classes, np.float64)
        return float(confidence(p, measure, picked=self.labels.index(best[0])))

    def _timeline_probs(self, offered: Collection[str] | None) -> np.ndarray | None:
        """Per-frame probabilities with labels not offered zeroed (never predicted)."""
        if self.timeline is None or len(self.timeline) == 0:
            return None
        keep = [0] + [i + 1 for i, lbl in enumerate(self.timeline_labels) if _offers(offered, lbl)]
        if len(keep) == 1:
            return None
        masked = np.zeros_like(self.timeline, dtype=np.float64)
        masked[:, keep] = self.timeline[:, keep]
        return masked

    def segments(
        self, frame_rate: float, offered: Collection[str] | None = None
    ) -> list[ScoredSegment] | None:
        """Labelled segments in Label Studio's frame numbering at ``frame_rate``; None when
        the model has no timeline output or none of its timeline labels is offered."""
        masked = self._timeline_probs(offered)
        if masked is None:
            return None
        clip = self.clip
        return predict_segments(
            masked, clip.indices, clip.fps, clip.frame_count, frame_rate, self.timeline_labels
        )

    def timeline_confidence(
        self, measure: str | Measure, offered: Collection[str] | None = None
    ) -> float | None:
        """The mean confidence over the clip's frames of the label picked at each frame."""
        masked = self._timeline_probs(offered)
        if masked is None:
            return None
        p = np.asarray(self.timeline, np.float64)
        return float(np.mean(confidence(p, measure, picked=masked.argmax(axis=1))))


def _offers(offered: Collection[str] | None, label: str) -> bool:
    return offered is None or label in offered


def predict_clips(
    model: LoadedModel,
    sources: Sequence[ClipSource],
    pool: Executor,
    *,
    window: int | None = None,
    deadline: float | None = None,
    on_batch: BatchObserver | None = None,
) -> Iterator[tuple[int, ClipPrediction | Failure]]:
    """Predict every source's clip with ``model``; yields ``(index, outcome)`` once per source.

    Sources run on ``pool`` at most ``window`` ahead of the model (default: two batches), so
    memory stays bounded however many videos come; decoded clips go through the model in full
    batches of ``model.batch_size``, in input order. A source that fails yields its Failure as
    soon as it is known (so before the batch it would have joined); the others go on. Past
    ``deadline`` (a time.monotonic() value), the clips already decoded are still predicted and
    every other source yields DEADLINE_REACHED; sources still running are left to finish on
    ``pool`` (the caller decides whether to wait for them). ``on_batch(clips, seconds)`` is
    told how long each forward pass took.
    """
    batch_size = max(1, model.batch_size)
    window = max(1, window or 2 * batch_size)
    pending: deque[tuple[int, Future[Clip | WindowedVideo]]] = deque()
    batch: list[tuple[int, Clip]] = []
    next_source = 0
    while next_source < len(sources) or pending:
        while next_source < len(sources) and len(pending) < window:
            pending.append((next_source, pool.submit(sources[next_source])))
            next_source += 1
        index, future = pending[0]
        if deadline is not None and time.monotonic() >= deadline:
            outcome = DEADLINE_REACHED  # decoding keeps ahead of a busy model: checked here too
        else:
            outcome = _clip_or_failure(future, deadline)
        if outcome is DEADLINE_REACHED:
            yield from _run_batch(model, batch, on_batch)
            for late, _ in pending:
                yield late, DEADLINE_REACHED
            for late in range(next_source, len(sources)):
                yield late, DEADLINE_REACHED
            return
        pending.popleft()
        if isinstance(outcome, Failure):
            yield index, outcome  # at once: a failure never breaks up a batch
            continue
        if isinstance(outcome, WindowedVideo):
            yield index, _predict_windows(model, outcome, deadline, on_batch)
            continue
        batch.append((index, outcome))
        if len(batch) >= batch_size:
            yield from _run_batch(model, batch, on_batch)
            batch.clear()
    yield from _run_batch(model, batch, on_batch)


def _predict_windows(
    model: LoadedModel,
    video: WindowedVideo,
    deadline: float | None,
    on_batch: BatchObserver | None,
) -> ClipPrediction | Failure:
    """One long video's windows through the model, stitched into one ClipPrediction."""
    try:
        clip, stitched = predict_windowed(model, video, deadline=deadline, on_batch=on_batch)
    except DeadlineReached:
        return DEADLINE_REACHED
    except VideoDecodeError as exc:
        return Failure(str(exc), kind=failure_kind(exc))
    return ClipPrediction(
        version=model.version,
        clip=clip,
        labels=tuple(model.labels),
        timeline_labels=tuple(model.timeline_labels),
        classes=stitched.mean("classes"),
        timeline=stitched.smoothed_timeline(),
        embedding=stitched.mean(EMBEDDING),
    )


def _clip_or_failure(
    future: Future[Clip | WindowedVideo], deadline: float | None
) -> Clip | WindowedVideo | Failure:
    timeout_s = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        future.exception(timeout=timeout_s)  # waits; raises only if still running
    except FutureTimeout:
        future.cancel()  # not started yet: never will be
        return DEADLINE_REACHED
    try:
        return future.result()
    except (MediaError, VideoDecodeError) as exc:
        return Failure(str(exc), kind=failure_kind(exc))
    except Exception as exc:
        log.exception("a video could not be prepared")
        return Failure(f"internal error: {type(exc).__name__}", kind="internal_error")


def _run_batch(
    model: LoadedModel, batch: list[tuple[int, Clip]], on_batch: BatchObserver | None
) -> Iterator[tuple[int, ClipPrediction]]:
    if not batch:
        return
    inputs = stack_clips([clip for _, clip in batch])
    started = time.perf_counter()
    outputs = model.predict(*inputs)
    if on_batch is not None:
        on_batch(len(batch), time.perf_counter() - started)
    labels, timeline_labels = tuple(model.labels), tuple(model.timeline_labels)
    for row, (index, clip) in enumerate(batch):
        classes = outputs.get("classes")
        timeline = outputs.get("timeline")
        embedding = outputs.get(EMBEDDING)
        n = len(clip.indices)
        yield (
            index,
            ClipPrediction(
                version=model.version,
                clip=clip,
                labels=labels,
                timeline_labels=timeline_labels,
                classes=None if classes is None else np.asarray(classes[row], np.float32),
                timeline=None if timeline is None else np.asarray(timeline[row][:n], np.float32),
                embedding=None if embedding is None else np.asarray(embedding[row], np.float32),
            ),
        )
