"""How sure the model is of a prediction: the score Label Studio sorts tasks by.

Label Studio's Data Manager sorts by a prediction's ``score`` ascending, so the least certain
tasks come first (docs/design.md): the score is a *confidence* in [0, 1] and the uncertainty is
``1 - score``. Three classic measures (Settles, "Active Learning Literature Survey", 2009):

* ``least_confidence``: the probability of the predicted label;
* ``margin``: that probability minus the next most probable label's, so a model torn
  between two labels scores near 0 even when a third is ruled out;
* ``entropy``: one minus the normalised entropy of the whole distribution, which counts
  every label's share.

Every function works on the last axis, so the same code scores a clip (``(K,)``), a batch
(``(B, K)``) or every frame of a clip (``(T, K)``). Only numpy; no TensorFlow here.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class Measure(StrEnum):
    """The uncertainty measures; the value is what UNCERTAINTY_MEASURE takes."""

    LEAST_CONFIDENCE = "least_confidence"
    MARGIN = "margin"
    ENTROPY = "entropy"


DEFAULT_MEASURE = Measure.LEAST_CONFIDENCE
"""The measure used when none is configured: the predicted label's probability."""


def parse_measure(value: str | Measure | None) -> Measure:
    """The Measure named by ``value`` (case and surrounding spaces ignored); None: the default.

    Raises:
        ValueError: not one of the measures, naming the valid ones.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_MEASURE
    if isinstance(value, Measure):
        return value
    try:
        return Measure(value.strip().lower())
    except ValueError:
        valid = ", ".join(m.value for m in Measure)
        raise ValueError(f"unknown uncertainty measure {value!r}; one of {valid}") from None


def confidence(
    probs: np.ndarray,
    measure: str | Measure = DEFAULT_MEASURE,
    picked: np.ndarray | int | None = None,
) -> np.ndarray:
    """The confidence in [0, 1] of each distribution over the last axis (1 = certain).

    Args:
        probs: probabilities, shape ``(..., K)`` with K >= 1; rows need not sum exactly to 1.
        measure: one of :class:`Measure` (or its value).
        picked: the index of the label actually predicted, per row (``(...)``), when it is not
            the most probable one (a config that no longer offers the model's favourite);
            default the argmax. Least confidence and margin are measured for that label.

    Returns:
        An array of shape ``probs.shape[:-1]`` (a 0-d array for one distribution).
    """
    measure = parse_measure(measure)
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    if p.ndim == 0 or p.shape[-1] < 1:
        raise ValueError(f"probs must have a last axis of at least one label, got {p.shape}")
    k = p.shape[-1]
    if picked is None:
        picked = np.argmax(p, axis=-1)
    picked = np.asarray(picked)
    top = np.take_along_axis(p, picked[..., None], axis=-1)[..., 0]
    if measure is Measure.LEAST_CONFIDENCE:
        return top
    if measure is Measure.MARGIN:
        if k == 1:
            return top
        others = p.copy()
        np.put_along_axis(others, picked[..., None], -1.0, axis=-1)
        return np.clip(top - others.max(axis=-1), 0.0, 1.0)
    if k == 1:
        return np.ones(p.shape[:-1])
    total = p.sum(axis=-1, keepdims=True)
    q = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / k)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q), 0.0)
    return np.clip(1.0 + terms.sum(axis=-1) / np.log(k), 0.0, 1.0)


def uncertainty(probs: np.ndarray, measure: str | Measure = DEFAULT_MEASURE) -> np.ndarray:
    """``1 - confidence``: what active learning ranks by (highest first)."""
    return 1.0 - confidence(probs, measure)


def most_uncertain(
    probs: np.ndarray, k: int, measure: str | Measure = DEFAULT_MEASURE
) -> list[int]:
    """Indices of the ``k`` rows of ``probs`` (``(N, K)``) the model is least sure of, most
    uncertain first; ties keep the lower index first (a stable order for reproducible runs)."""
    scores = confidence(probs, measure)
    order = np.argsort(scores, kind="stable")
    return [int(i) for i in order[: max(0, k)]]
