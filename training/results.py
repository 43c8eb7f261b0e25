"""Label Studio's result and prediction shapes for a classification, built from probabilities.

Shared by serving (``/predict`` answers, through backend/protocol.py) and the refresh job that
writes predictions to Label Studio itself, so both produce the same JSON. No I/O here.

See DESIGN.md "Label Studio protocol": a prediction is ``{"result": [...], "score": float,
"model_version": str}`` and ``score`` is a confidence in [0, 1] that Label Studio sorts
ascending to pick the next tasks to label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from training.labelconfig import VideoChoices


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


def classification_prediction(
    probs: Sequence[float] | np.ndarray,
    model_labels: Sequence[str],
    choices: VideoChoices,
    model_version: str,
) -> dict:
    """A task's prediction from the model's class probabilities; empty if no label fits."""
    picked = pick_label(
        probs, model_labels, allowed_label_indices(model_labels, choices.choice_values)
    )
    if picked is None:
        return empty_prediction(model_version)
    label, score = picked
    return make_prediction(
        [choices_result(choices.choices_name, choices.video_name, label)], score, model_version
    )
