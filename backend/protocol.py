"""Label Studio's JSON shapes: project ids, results, predictions. No Flask, no I/O.

See DESIGN.md "Label Studio protocol": a prediction is ``{"result": [...], "score": float,
"model_version": str}``, one per task, and ``score`` is a confidence in [0, 1] that Label
Studio sorts ascending to pick the next tasks to label. The result and prediction builders
live in ``training/labelstudio/results.py`` (the refresh job writes the same predictions,
and training never imports backend); they are re-exported here for the serving side.
"""

from __future__ import annotations

import re

from training.labelstudio.results import (
    allowed_label_indices,
    choices_result,
    empty_prediction,
    make_prediction,
    pick_label,
    video_prediction,
)
from training.versions.store import validate_project

__all__ = [
    "allowed_label_indices",
    "choices_result",
    "empty_prediction",
    "make_prediction",
    "normalize_project",
    "pick_label",
    "video_prediction",
]

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
