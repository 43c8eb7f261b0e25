"""Label Studio's JSON shapes: project ids, choices results, predictions. No Flask, no I/O.

See DESIGN.md "Label Studio protocol": a prediction is ``{"result": [...], "score": float,
"model_version": str}``, one per task, and ``score`` is a confidence in [0, 1] that Label
Studio sorts ascending to pick the next tasks to label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from training.labelconfig import VideoChoices
from training.store import validate_project

_LS_PROJECT_RE = re.compile(r"^(\d+)\.\d+$")


def normalize_project(project: object) -> str:
    """The bare project id from what Label Studio sends.

    /setup and /predict send ``"12.1700000000"`` (id and creation timestamp), webhooks send
    ``{"id": 12, ...}``; the CLI may pass ``12`` or ``"12"``. All give ``"12"``.

    Raises:
        ValueError: missing, or not usable as a project id in the model store.
    """
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or isinstance(project, bool) or project == "":
        raise ValueError("missing project id")
    if isinstance(project, float) and project.is_integer():
        project = int(project)
    text = str(project).strip()
    match = _LS_PROJECT_RE.match(text)
    return validate_project(match.group(1) if match else text)


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
