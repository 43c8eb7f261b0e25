"""The clip embedding and the classifier head's weights, for acquisition (acquisition.py).

Why here and not as a new model output: the embedding is the input of the ``head_dropout``
layer that every classifier already has (training/model/build.py ``_heads``), so a second
functional model over the same layers returns it beside the outputs in the same forward pass:
no new weights, the parameter count unchanged, and versions saved before this existed give it
too. BALD's MC dropout (acquisition.mc_dropout_probs) replays only that last dropout and Dense
layer in numpy: calling the whole model with ``training=True`` would also switch its batch
normalisation to batch statistics, and the LiteRT runtime has no dropout at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

EMBEDDING = "embedding"
"""The extra output's name in LoadedModel.predict's answer."""


@dataclass(frozen=True)
class ClassifierHead:
    """The ``classes`` Dense layer's weights and the dropout rate before it."""

    kernel: np.ndarray = field(repr=False)
    """(D, K)"""
    bias: np.ndarray = field(repr=False)
    """(K,)"""
    rate: float


def with_embedding(model: Any) -> tuple[Any, ClassifierHead | None]:
    """``model`` with an ``"embedding"`` output added, and its head; ``(model, None)`` for a
    model without a classes head (timeline only) or without the named layers."""
    import keras

    try:
        dropout = model.get_layer("head_dropout")
        dense = model.get_layer("classes")
    except ValueError:
        return model, None
    outputs = {**dict(model.output), EMBEDDING: dropout.input}
    extended = keras.Model(model.input, outputs, name=model.name)
    kernel, bias = (np.asarray(w, np.float32) for w in dense.get_weights())
    return extended, ClassifierHead(kernel, bias, float(dropout.rate))
