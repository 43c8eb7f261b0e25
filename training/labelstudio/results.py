"""Label Studio's result and prediction shapes, built from a model's probabilities.

Shared by serving (``/predict`` answers) and the refresh job that writes predictions to Label
Studio itself, so both produce the same JSON from the same ClipPrediction. No I/O here.

See docs/design.md "Label Studio protocol": a prediction is ``{"result": [...], "score": float,
"model_version": str}`` and ``score`` is a confidence in [0, 1] that Label Studio sorts
ascending to pick the next tasks to label (how it is measured: training/model/uncertainty.py).
<Choices> get one ``choices`` result, <TimelineLabels> one region per predicted segment
(training/labelstudio/timeline.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from training.labelstudio.labelconfig import VideoControls
from training.labelstudio.timeline import timeline_result
from training.model.uncertainty import DEFAULT_MEASURE, Measure

if TYPE_CHECKING:
    from training.model.inference import ClipPrediction


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


def fillable_controls(model, controls: VideoControls) -> list[str]:
    """Which of the config's controls a model can fill: ``"choices"`` when one of its class
    labels is offered, ``"timeline"`` when one of its timeline labels is. ``model`` is a
    LoadedModel or anything with ``labels`` and ``timeline_labels``."""
    out = []
    if controls.has_choices and set(model.labels) & set(controls.choice_values):
        out.append("choices")
    timeline = controls.timeline
    if timeline is not None and set(model.timeline_labels) & set(timeline.labels):
        out.append("timeline")
    return out


def video_prediction(
    prediction: ClipPrediction,
    controls: VideoControls,
    *,
    frame_rate: float | None = None,
    measure: str | Measure = DEFAULT_MEASURE,
) -> dict | None:
    """A task's prediction in Label Studio's format: one result per control it can fill.

    Args:
        prediction: one clip's model outputs (training/model/inference.py).
        controls: the config's video and controls; a control the model has no output for
            (or whose labels it does not know) is left out.
        frame_rate: the frame rate Label Studio numbers this task's frames at.
        measure: how ``score`` is computed (training/model/uncertainty.py).

    Returns:
        ``{"result", "score", "model_version"}``; the score is the lowest confidence of the
        parts (a task is as uncertain as its least certain control). None when no control
        could be filled: an empty prediction is never stored (docs/design.md).
    """
    result: list[dict] = []
    scores: list[float] = []
    if controls.choices_name is not None:
        offered = controls.choice_values
        best = prediction.best_label(offered)
        score = prediction.class_confidence(measure, offered)
        if best is not None and score is not None:
            result.append(choices_result(controls.choices_name, controls.video_name, best[0]))
            scores.append(score)
    timeline = controls.timeline
    if timeline is not None:
        rate = frame_rate if frame_rate is not None else controls.task_frame_rate(None)
        segments = prediction.segments(rate, timeline.labels)
        score = prediction.timeline_confidence(measure, timeline.labels)
        if segments is not None and score is not None:
            result.extend(timeline_result(timeline.name, controls.video_name, s) for s in segments)
            scores.append(score)
    if not scores:
        return None
    return make_prediction(result, min(scores), prediction.version)
