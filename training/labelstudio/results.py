"""Label Studio's result and prediction shapes, built from a model's probabilities.

Shared by serving (``/predict`` answers, through backend/protocol.py) and the refresh job that
writes predictions to Label Studio itself, so both produce the same JSON. No I/O here.

See DESIGN.md "Label Studio protocol": a prediction is ``{"result": [...], "score": float,
"model_version": str}`` and ``score`` is a confidence in [0, 1] that Label Studio sorts
ascending to pick the next tasks to label (how it is measured: training/model/uncertainty.py).
<Choices> get one ``choices`` result, <TimelineLabels> one region per predicted segment
(training/labelstudio/timeline.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from training.labelstudio.labelconfig import VideoControls
from training.labelstudio.timeline import predict_segments, timeline_result
from training.model.uncertainty import DEFAULT_MEASURE, Measure, confidence
from training.video.clip import Clip


def choices_result(from_name: str, to_name: str, label: str) -> dict:
    """One classification region, as Label Studio stores it for <Choices>."""
    return {
        "from_name": from_name,
        "to_name": to_name,
        "type": "choices",
        "value": {"choices": [label]},
    }


def make_prediction(result: list[dict], score: float, model_version: str) -> dict:
    """A task's prediction; ``score`` is clipped to [0, 1] (NaN becomes 0)."""
    score = float(score)
    score = 0.0 if math.isnan(score) else min(max(score, 0.0), 1.0)
    return {"result": result, "score": score, "model_version": model_version}


def empty_prediction(model_version: str) -> dict:
    """The entry for a task we could not predict: keeps results aligned with tasks."""
    return make_prediction([], 0.0, model_version)


def allowed_label_indices(model_labels: Sequence[str], choice_values: Sequence[str]) -> list[int]:
    """Indices of the model's labels that the config offers; a model may know labels the
    config dropped, and the config may have choices the model never saw."""
    offered = set(choice_values)
    return [i for i, label in enumerate(model_labels) if label in offered]


def pick_label(
    probs: Sequence[float] | np.ndarray, model_labels: Sequence[str], allowed: Sequence[int]
) -> tuple[str, float] | None:
    """The most probable allowed label and its probability, or None if nothing is allowed.

    The probability is the model's own (not renormalised over the allowed labels), so a
    model unsure between an offered and a dropped label still reports low confidence.
    """
    if not allowed:
        return None
    p = np.asarray(probs, dtype=np.float64)
    best = max(allowed, key=lambda i: p[i])
    return model_labels[best], float(np.clip(p[best], 0.0, 1.0))


def fillable_controls(model, controls: VideoControls) -> list[str]:
    """Which of the config's controls a model can fill: ``"choices"`` when one of its class
    labels is offered, ``"timeline"`` when one of its timeline labels is. ``model`` is a
    LoadedModel or anything with ``labels`` and ``timeline_labels``."""
    out = []
    if controls.has_choices and allowed_label_indices(model.labels, controls.choice_values):
        out.append("choices")
    timeline = controls.timeline
    if timeline is not None and set(model.timeline_labels) & set(timeline.labels):
        out.append("timeline")
    return out


def video_prediction(
    outputs: Mapping[str, np.ndarray],
    labels: Sequence[str],
    controls: VideoControls,
    model_version: str,
    *,
    timeline_labels: Sequence[str] = (),
    clip: Clip | None = None,
    frame_rate: float | None = None,
    measure: str | Measure = DEFAULT_MEASURE,
) -> dict:
    """A task's prediction from one clip's model outputs: one result per control it can fill.

    Args:
        outputs: ``"classes"`` -> (K,) class probabilities and/or ``"timeline"`` ->
            (T, 1 + len(timeline_labels)) per-frame probabilities (output 0: no label).
        labels, timeline_labels: the model's labels for each output.
        controls: the config's video and controls; a control the model has no output for
            (or whose labels it does not know) is left out.
        model_version: carried on the prediction.
        clip: the sampled clip (frame indices, fps, frame count), needed for the timeline.
        frame_rate: the frame rate Label Studio numbers this task's frames at.
        measure: how ``score`` is computed (training/model/uncertainty.py).

    Returns:
        ``{"result", "score", "model_version"}``; the score is the lowest confidence of the
        parts (a task is as uncertain as its least certain control). Empty when no control
        could be filled.
    """
    result: list[dict] = []
    scores: list[float] = []
    probs = outputs.get("classes")
    if probs is not None and controls.choices_name is not None:
        allowed = allowed_label_indices(labels, controls.choice_values)
        picked = pick_label(probs, labels, allowed)
        if picked is not None:
            label = picked[0]
            result.append(choices_result(controls.choices_name, controls.video_name, label))
            p = np.asarray(probs, np.float64)
            scores.append(float(confidence(p, measure, picked=list(labels).index(label))))
    frame_probs = outputs.get("timeline")
    if frame_probs is not None and controls.timeline is not None and clip is not None:
        part = _timeline_part(frame_probs, timeline_labels, controls, clip, frame_rate, measure)
        if part is not None:
            result.extend(part[0])
            scores.append(part[1])
    if not scores:
        return empty_prediction(model_version)
    return make_prediction(result, min(scores), model_version)


def _timeline_part(
    frame_probs: np.ndarray,
    timeline_labels: Sequence[str],
    controls: VideoControls,
    clip: Clip,
    frame_rate: float | None,
    measure: str | Measure,
) -> tuple[list[dict], float] | None:
    """The timeline regions of one clip and their confidence (the mean over its frames), or
    None when none of the model's timeline labels is offered by the config."""
    assert controls.timeline is not None
    offered = set(controls.timeline.labels)
    keep = [0] + [i + 1 for i, label in enumerate(timeline_labels) if label in offered]
    if len(keep) == 1:
        return None
    n = min(len(clip.indices), len(frame_probs))
    if n == 0:
        return None
    p = np.asarray(frame_probs[:n], np.float64)
    masked = np.zeros_like(p)  # labels the config dropped are never predicted
    masked[:, keep] = p[:, keep]
    segments = predict_segments(
        masked,
        clip.indices,
        clip.fps,
        clip.frame_count,
        frame_rate if frame_rate is not None else controls.task_frame_rate(None),
        timeline_labels,
    )
    regions = [timeline_result(controls.timeline.name, controls.video_name, s) for s in segments]
    score = float(np.mean(confidence(p, measure, picked=masked.argmax(axis=1))))
    return regions, score
