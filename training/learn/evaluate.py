"""What a trained model says about clips, and how right it is: every output for every clip,
and the metrics a version stores (per class and, with a timeline head, per frame).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.labelstudio.timeline import timeline_metrics
from training.learn.dataset import ClipArrays
from training.learn.metrics import classification_metrics, confusion_matrix

NO_LABEL_NAME = "(no label)"
"""How timeline output 0 is named in metrics and pictures."""


def predict_outputs(model, data: ClipArrays, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Every output for every clip, batch by batch, without model.predict's overhead."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(data), batch_size):
        batch = {"frames": data.frames[i : i + batch_size], "mask": data.mask[i : i + batch_size]}
        for head, value in model.predict_on_batch(batch).items():
            parts.setdefault(head, []).append(np.asarray(value))
    if not parts:  # no clips: empty arrays of the right width
        return {k: np.zeros((0, *v.shape[1:]), np.float32) for k, v in model.output.items()}
    return {head: np.concatenate(values) for head, values in parts.items()}


def predict_arrays(model, data: ClipArrays, batch_size: int = 16) -> np.ndarray:
    """Class probabilities for every clip (the ``"classes"`` output)."""
    return predict_outputs(model, data, batch_size)["classes"]


def evaluate(
    outputs: dict[str, np.ndarray],
    data: ClipArrays,
    labels: Sequence[str],
    timeline_labels: Sequence[str] = (),
) -> dict:
    """A version's metrics on some clips: classification metrics of the clips with a class
    (``accuracy`` None for a timeline-only model) and, with a timeline head, ``"timeline"``:
    frame accuracy, segmental F1 and the per-frame confusion matrix."""
    if labels:
        keep = data.has_class
        out = classification_metrics(data.y[keep], outputs["classes"][keep], labels)
    else:
        out = {"accuracy": None, "count": 0}
    if timeline_labels:
        frame_y = data.frame_y if data.frame_y is not None else np.full(data.mask.shape, -1)
        probs = outputs["timeline"]
        timeline = timeline_metrics(frame_y, probs, timeline_labels)
        counted = frame_y >= 0
        predicted = probs.argmax(axis=-1) if len(probs) else np.zeros_like(frame_y)
        timeline["confusion_matrix"] = confusion_matrix(
            frame_y[counted], predicted[counted], len(timeline_labels) + 1
        ).tolist()
        out["timeline"] = timeline
    return out
