"""Classification metrics from predicted probabilities (numpy only, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro F1, per-label precision/recall/F1/support and the confusion matrix."""
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    per_label = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(f1), 4),
            "support": int(actual),
        }
        if actual:
            f1s.append(f1)
    return {
        "accuracy": round(float((y_pred == y_true).mean()), 4) if len(y_true) else None,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else None,
        "count": int(len(y_true)),
        "per_label": per_label,
        "confusion_matrix": matrix.tolist(),
    }
