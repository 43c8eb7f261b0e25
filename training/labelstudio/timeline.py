"""Frame-level labels: Label Studio's <TimelineLabels> regions <-> the model's per-frame targets.

Label Studio stores a timeline region as ``{"type": "timelinelabels", "value": {"ranges":
[{"start": 3, "end": 9}], "timelinelabels": ["Running"]}}``: frame numbers 1-based and
inclusive, counted at the ``<Video frameRate>`` of the config (Label Studio's default is 24).
The model sees T sampled frames (training/video/decoder.py: the centre frame of T equal parts of the
video, by 0-based decode index), so

* **training** asks, for each sampled frame, which region covers it: its Label Studio frame
  number is ``floor(index / fps * frame_rate) + 1`` (``index + 1`` when the config's rate is
  the video's own); the target is 0 for "no region" and ``1 + i`` for label i;
* **prediction** gives each sampled frame the stretch of video frames nearest to it (the
  boundaries are half-way between neighbouring samples), joins neighbours with the same
  label into one segment and turns it back into Label Studio frame numbers: one region per
  segment, with the mean probability of its label over its frames as the region's score.

Segments are only as fine as the sampling: with T samples over N frames a boundary lands
within about N / (2T) frames of the truth. Overlapping regions in an annotation resolve to the
one that starts last (then the shortest): the more specific event inside a longer one.

Numpy only; no TensorFlow here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_FRAME_RATE = 24.0
"""Label Studio's frame rate for a <Video> without ``frameRate``, in frames per second."""

NO_LABEL = 0
"""Per-frame target of a frame no region covers (the background class, output 0)."""

IGNORE = -1
"""Per-frame target of a frame that does not count: padding, or a clip not annotated on the
timeline at all."""

_EPS = 1e-6


@dataclass(frozen=True, order=True)
class Segment:
    """A labelled stretch of a video in Label Studio's numbering: frames ``start..end``,
    1-based, both inclusive."""

    start: int
    end: int
    label: str

    def __post_init__(self) -> None:
        if self.start < 1 or self.end < self.start:
            raise ValueError(f"segment frames must satisfy 1 <= start <= end, got {self}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def segments_from_result(
    result: Iterable[Mapping], from_name: str, to_name: str, labels: Sequence[str] | None = None
) -> list[Segment]:
    """The segments of one annotation's result for a <TimelineLabels> control.

    Regions of other controls are ignored, as are ranges that are not whole frame numbers
    with start <= end. A region may carry several ranges (each becomes a segment) and several
    labels (each range counts for each label). With ``labels``, labels outside it are dropped.
    """
    allowed = set(labels) if labels is not None else None
    out: list[Segment] = []
    for region in result:
        if not isinstance(region, Mapping) or region.get("type") != "timelinelabels":
            continue
        if region.get("from_name") != from_name or region.get("to_name") != to_name:
            continue
        value = region.get("value") or {}
        names = value.get("timelinelabels") or []
        ranges = value.get("ranges") or []
        for name in names if isinstance(names, list) else ():
            if not isinstance(name, str) or (allowed is not None and name not in allowed):
                continue
            for span in ranges if isinstance(ranges, list) else ():
                segment = _segment(span, name)
                if segment is not None:
                    out.append(segment)
    return sorted(out)


def segments_from_labels(per_frame: Sequence[str | None]) -> list[Segment]:
    """Segments of a label per video frame (frame 1 first), one per run of equal labels;
    None marks frames without a label. For data made with known per-frame labels
    (training/video/synth.py ``render_segmented_clip``)."""
    out: list[Segment] = []
    for number, label in enumerate(per_frame, start=1):
        if label is None:
            continue
        if out and out[-1].label == label and out[-1].end == number - 1:
            out[-1] = Segment(out[-1].start, number, label)
        else:
            out.append(Segment(number, number, label))
    return out


def _segment(span: object, label: str) -> Segment | None:
    if not isinstance(span, Mapping):
        return None
    try:
        start, end = int(span["start"]), int(span["end"])
    except (KeyError, TypeError, ValueError):
        return None
    if start < 1 or end < start:
        return None
    return Segment(start, end, label)


def ls_frame(index: int | np.ndarray, fps: float, frame_rate: float) -> np.ndarray:
    """Label Studio's 1-based frame number of 0-based video frame ``index``."""
    index = np.asarray(index)
    if abs(fps - frame_rate) < _EPS:
        return index + 1
    return np.floor(index / fps * frame_rate + _EPS).astype(np.int64) + 1


def frame_targets(
    segments: Sequence[Segment] | None,
    labels: Sequence[str],
    indices: Sequence[int],
    fps: float,
    frame_rate: float,
    frames: int,
) -> np.ndarray:
    """Per-frame training targets of one clip.

    Args:
        segments: the clip's annotated segments; None when the clip is not annotated on the
            timeline (every frame is IGNORE); an empty list means "nothing happens here".
        labels: the model's timeline labels; target ``1 + labels.index(label)``.
        indices: 0-based video frame index of each real sampled frame (``Clip.indices``).
        fps: the video's own frame rate; frame_rate: the config's (Label Studio numbering).
        frames: T, the clip's length with padding.

    Returns:
        (T,) int32: IGNORE for padding (and for every frame when ``segments`` is None),
        NO_LABEL where no segment covers the frame, else the label's output index.
    """
    out = np.full(frames, IGNORE, np.int32)
    if segments is None:
        return out
    index = {label: i + 1 for i, label in enumerate(labels)}
    # the latest-starting (then shortest) covering segment wins: apply them in that order
    ordered = sorted((s for s in segments if s.label in index), key=lambda s: (s.start, -s.length))
    numbers = ls_frame(np.asarray(indices, np.int64), fps, frame_rate)
    for t, number in enumerate(numbers[:frames]):
        out[t] = NO_LABEL
        for s in ordered:
            if s.start <= number <= s.end:
                out[t] = index[s.label]
    return out


@dataclass(frozen=True)
class ScoredSegment:
    """A predicted segment and its score (mean probability of its label over its samples)."""

    segment: Segment
    score: float


def predict_segments(
    frame_probs: np.ndarray,
    indices: Sequence[int],
    fps: float,
    frame_count: int,
    frame_rate: float,
    labels: Sequence[str],
) -> list[ScoredSegment]:
    """Segments from the per-frame probabilities of one clip.

    Args:
        frame_probs: (T, 1 + len(labels)) probabilities of the sampled frames; output 0 is
            "no label". Rows past ``len(indices)`` (padding) are ignored.
        indices: 0-based video frame index of each real sampled frame, increasing.
        fps, frame_count: the video's own frame rate and number of frames.
        frame_rate: the config's frame rate (Label Studio numbering).
        labels: names of outputs 1.. .

    Returns:
        Segments in time order, none for stretches predicted as "no label"; neighbouring
        segments never overlap.
    """
    n = min(len(indices), len(frame_probs))
    if n == 0:
        return []
    probs = np.asarray(frame_probs[:n], np.float64)
    picked = probs.argmax(axis=1)
    idx = np.asarray(indices[:n], np.int64)
    last = max(int(frame_count), int(idx[-1]) + 1) - 1
    # sample i stands for video frames [bounds[i], bounds[i + 1])
    bounds = np.concatenate([[0], (idx[:-1] + idx[1:] + 1) // 2, [last + 1]])
    starts = ls_frame(bounds[:-1], fps, frame_rate)
    end_of_video = int(ls_frame(last, fps, frame_rate))
    out: list[ScoredSegment] = []
    i = 0
    while i < n:
        j = i
        while j + 1 < n and picked[j + 1] == picked[i]:
            j += 1
        if picked[i] != NO_LABEL:
            start = int(starts[i])
            end = int(starts[j + 1]) - 1 if j + 1 < n else end_of_video
            score = float(probs[i : j + 1, picked[i]].mean())
            if end >= start:
                out.append(ScoredSegment(Segment(start, end, labels[picked[i] - 1]), score))
        i = j + 1
    return out


def timeline_result(from_name: str, to_name: str, scored: ScoredSegment) -> dict:
    """One region of a prediction for a <TimelineLabels> control, as Label Studio stores it.

    The ``id`` tells a prediction's regions apart (segments never share a start frame).
    """
    s = scored.segment
    return {
        "id": f"{from_name}-{s.start}",
        "from_name": from_name,
        "to_name": to_name,
        "type": "timelinelabels",
        "value": {"ranges": [{"start": s.start, "end": s.end}], "timelinelabels": [s.label]},
        "score": round(float(scored.score), 4),
    }


def runs(sequence: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal values: ``(value, first, last)`` with inclusive positions."""
    out: list[tuple[int, int, int]] = []
    for t, value in enumerate(sequence):
        if out and out[-1][0] == value and out[-1][2] == t - 1:
            out[-1] = (value, out[-1][1], t)
        else:
            out.append((int(value), t, t))
    return out


def segment_f1(
    true_segments: Sequence[Segment], predicted: Sequence[Segment], iou: float = 0.5
) -> float | None:
    """Segmental F1 at an overlap threshold (Lea et al., 2017): a predicted segment is a hit
    when it has the label of a not yet matched true segment and overlaps it by at least
    ``iou`` (intersection over union of their frames).

    Returns None when there is nothing on either side (no score to give).
    """
    if not true_segments and not predicted:
        return None
    used = [False] * len(true_segments)
    hits = 0
    for p in sorted(predicted):
        best, best_iou = -1, 0.0
        for k, t in enumerate(true_segments):
            if used[k] or t.label != p.label:
                continue
            inter = min(p.end, t.end) - max(p.start, t.start) + 1
            if inter <= 0:
                continue
            overlap = inter / (p.length + t.length - inter)
            if overlap > best_iou:
                best, best_iou = k, overlap
        if best >= 0 and best_iou >= iou:
            used[best] = True
            hits += 1
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(true_segments) if true_segments else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def sequence_segments(sequence: Sequence[int], labels: Sequence[str]) -> list[Segment]:
    """Segments of a per-sample label sequence (positions as frames 1..T), for metrics on the
    sampled frames; NO_LABEL and IGNORE runs are not segments."""
    return [
        Segment(first + 1, last + 1, labels[value - 1])
        for value, first, last in runs(sequence)
        if value > NO_LABEL
    ]


def timeline_metrics(
    targets: np.ndarray, frame_probs: np.ndarray, labels: Sequence[str], iou: float = 0.5
) -> dict:
    """Frame accuracy over the frames that count, and segmental F1 on the sampled frames.

    Args:
        targets: (N, T) per-frame targets (IGNORE where a frame does not count).
        frame_probs: (N, T, 1 + len(labels)) predicted probabilities.
        labels: the timeline labels.

    Returns:
        ``{"frame_accuracy", "segment_f1", "frames", "clips"}``; None where nothing counted.
    """
    targets = np.asarray(targets)
    counted = targets != IGNORE
    frames = int(counted.sum())
    if not frames:
        return {"frame_accuracy": None, f"segment_f1@{iou:g}": None, "frames": 0, "clips": 0}
    predicted = np.asarray(frame_probs).argmax(axis=-1)
    accuracy = float((predicted[counted] == targets[counted]).mean())
    scores = []
    clips = 0
    for target, pred, keep in zip(targets, predicted, counted, strict=True):
        if not keep.any():
            continue
        clips += 1
        score = segment_f1(
            sequence_segments(target[keep], labels), sequence_segments(pred[keep], labels), iou
        )
        if score is not None:
            scores.append(score)
    return {
        "frame_accuracy": round(accuracy, 4),
        f"segment_f1@{iou:g}": round(float(np.mean(scores)), 4) if scores else None,
        "frames": frames,
        "clips": clips,
    }


def resolve_frame_rate(
    frame_rate: float | None, frame_rate_key: str | None, data: Mapping | None
) -> float:
    """The frame rate Label Studio numbers a task's frames at: the config's number, else the
    task's ``data[frame_rate_key]`` (``frameRate="$fps"``), else Label Studio's default."""
    if frame_rate is not None:
        return float(frame_rate)
    if frame_rate_key and isinstance(data, Mapping):
        try:
            value = float(data.get(frame_rate_key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value) and value > 0:
            return value
    return DEFAULT_FRAME_RATE
