"""Project ids as Label Studio sends them to the backend's routes. No Flask, no I/O.

The prediction JSON lives in training/labelstudio/results.py: the refresh job writes the same
predictions, and training never imports backend.
"""

from __future__ import annotations

import re

from training.versions.store import validate_project

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
