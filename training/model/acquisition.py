"""Which unlabelled clips to label next: the acquisition strategies beyond a score sort.

The prediction score (uncertainty.py) ranks each clip alone, so a batch of the 8 least certain
clips is often 8 near-copies of one confusion. Two additions, after Beck et al. ("Effective
Evaluation of Deep Active Learning on Image Classification Tasks", 2021) and the papers below:

* ``bald`` (Houlsby et al. 2011; Gal et al. 2017): the mutual information between the label and
  the model's weights, estimated from stochastic passes with dropout on (MC dropout). High
  where the passes disagree, not where each pass is merely unsure (an ambiguous clip).
* ``kcenter`` (Sener & Savarese 2018, core-set): greedy k-center on the clip embeddings, started
  from the least certain clip, so the batch covers the pool rather than one corner of it.
* ``badge`` (Ash et al. 2020): k-means++ seeding on gradient embeddings ``(p - onehot(argmax p))
  (x) h``, whose length grows with uncertainty and whose direction is the clip's: uncertain and
  diverse at once, without a weight to tune.

``score`` is the plain sort by the prediction score. Only numpy; every function is given
arrays and returns indices, so it is tested on constructed inputs.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class Strategy(StrEnum):
    """The acquisition strategies; the value is what ACQUISITION takes."""

    SCORE = "score"
    BALD = "bald"
    KCENTER = "kcenter"
    BADGE = "badge"


BATCH_AWARE = (Strategy.KCENTER, Strategy.BADGE)
"""Strategies whose choice of one clip depends on the clips chosen before it."""


def parse_strategy(value: str | Strategy | None) -> Strategy:
    """The Strategy named by ``value`` (case and spaces ignored); None or empty: ``score``.

    Raises:
        ValueError: not a strategy, naming the valid ones.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return Strategy.SCORE
    try:
        return Strategy(str(value).strip().lower())
    except ValueError:
        valid = ", ".join(s.value for s in Strategy)
        raise ValueError(f"unknown acquisition strategy {value!r}; one of {valid}") from None


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def bald(samples: np.ndarray) -> np.ndarray:
    """BALD's mutual information per clip from stochastic passes.

    Args:
        samples: ``(S, N, K)`` probabilities of S passes over N clips.

    Returns:
        ``(N,)``: entropy of the mean minus mean entropy, >= 0 (nats).
    """
    p = np.clip(np.asarray(samples, np.float64), 0.0, 1.0)
    return np.maximum(_entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0), 0.0)


def mc_dropout_probs(
    embeddings: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray,
    rate: float,
    samples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Class probabilities of ``samples`` passes through the classifier head with its dropout
    on (inverted dropout, as Keras applies it during training).

    Args:
        embeddings: ``(N, D)`` the head's input (what its Dropout layer sees).
        kernel, bias: the ``classes`` Dense layer's weights, ``(D, K)`` and ``(K,)``.
        rate: the Dropout layer's rate; 0 gives ``samples`` identical passes.

    Returns:
        ``(samples, N, K)``.
    """
    h = np.asarray(embeddings, np.float64)
    keep = 1.0 - float(rate)
    masks = rng.random((samples, *h.shape)) < keep
    dropped = h[None] * masks / max(keep, 1e-9)
    return _softmax(dropped @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64))


def kcenter_greedy(points: np.ndarray, k: int, first: int = 0) -> list[int]:
    """Greedy k-center: start at ``first``, then repeatedly the point farthest from every
    point chosen so far (ties: the lower index), never a duplicate of a chosen one. Returns
    up to ``min(k, N)`` distinct indices."""
    x = np.asarray(points, np.float64)
    n = len(x)
    if n == 0 or k <= 0:
        return []
    chosen = [int(first)]
    nearest = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < min(k, n):
        nearest[chosen] = -1.0
        pick = int(np.argmax(nearest))
        if nearest[pick] <= 0:
            break  # every point left duplicates a chosen one
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[pick], axis=1))
    return chosen


def gradient_embeddings(probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """BADGE's embeddings: the gradient of the loss of the predicted label with respect to the
    last layer's weights, ``(p - onehot(argmax p)) (x) h``, flattened: ``(N, K * D)``."""
    p = np.asarray(probs, np.float64)
    h = np.asarray(embeddings, np.float64)
    g = p.copy()
    g[np.arange(len(p)), p.argmax(axis=1)] -= 1.0
    return (g[:, :, None] * h[:, None, :]).reshape(len(p), -1)


def kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """k-means++ seeding: the longest point first, then each next point with probability
    proportional to its squared distance from the nearest chosen one (never a point already
    chosen, nor a duplicate of one). Returns up to ``min(k, N)`` distinct indices."""
    x = np.asarray(points, np.float64)
    n = len(x)
    if n == 0 or k <= 0:
        return []
    chosen = [int(np.argmax(np.linalg.norm(x, axis=1)))]
    d2 = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < min(k, n):
        d2[chosen] = 0.0
        total = d2.sum()
        if total <= 0:
            break  # every point left duplicates a chosen one
        pick = int(rng.choice(n, p=d2 / total))
        chosen.append(pick)
        d2 = np.minimum(d2, ((x - x[pick]) ** 2).sum(axis=1))
    return chosen


def choose_order(
    strategy: str | Strategy,
    scores: np.ndarray,
    *,
    bald_scores: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    batch: int = 32,
    seed: int = 0,
) -> list[int]:
    """Every clip's index in the order to label them.

    The first ``batch`` come from the strategy; the rest follow by the strategy's own
    per-clip value (BALD for ``bald``, else the score, lowest confidence first), so the order
    stays useful past the batch and costs O(batch * N) however large the pool.

    Args:
        scores: ``(N,)`` prediction scores (confidence; lowest first is the plain sort).
        bald_scores: ``(N,)`` for ``bald``; embeddings ``(N, D)`` for ``kcenter`` and
            ``badge``, which also needs ``probs`` ``(N, K)``. A strategy missing what it
            needs falls back to the score sort.
    """
    strategy = parse_strategy(strategy)
    s = np.asarray(scores, np.float64)
    by_score = [int(i) for i in np.argsort(s, kind="stable")]
    if strategy is Strategy.BALD and bald_scores is not None:
        return [int(i) for i in np.argsort(-np.asarray(bald_scores), kind="stable")]
    if strategy not in BATCH_AWARE or embeddings is None or len(s) == 0:
        return by_score
    if strategy is Strategy.KCENTER:
        head = kcenter_greedy(embeddings, batch, first=by_score[0])
    elif probs is None:
        return by_score
    else:
        grads = gradient_embeddings(probs, embeddings)
        head = kmeans_pp(grads, batch, np.random.default_rng(seed))
    taken = set(head)
    return head + [i for i in by_score if i not in taken]
