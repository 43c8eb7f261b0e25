"""Pictures of a training run, written beside its numbers: learning curves, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

LEARNING_CURVE_FILE = "learning_curve.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
TIMELINE_CONFUSION_MATRIX_FILE = "timeline_confusion_matrix.png"
"""Per sampled frame, for models with a timeline head (row and column 0: no label)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation, side by side.

    A model with several heads logs ``classes_accuracy``, ``timeline_accuracy``: each gets
    its own line in the accuracy panel.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        names = [metric] if metric == "loss" else []
        names += sorted(
            k for k in history if k.endswith(metric) and not k.startswith("val_") and k != "loss"
        )
        for name in dict.fromkeys(names):
            for key, style in ((name, "-"), (f"val_{name}", "--")):
                if history.get(key):
                    epochs = range(1, len(history[key]) + 1)
                    ax.plot(epochs, history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    """Rows: true label; columns: predicted label; cells: counts."""
    plt = _pyplot()
    size = 1.2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if count > threshold else "black"
        ax.text(j, i, str(int(count)), ha="center", va="center", color=color)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
