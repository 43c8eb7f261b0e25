"""The last model a worker trained, kept built, compiled and traced for its next run.

Why: a retrain on a few dozen clips spends most of its time before its steady epochs. In the
real-Label-Studio suite, 14 of the 25.6 s from a Submit to the new version's first stored
prediction went to building the model, its input pipeline and tracing the train and test
steps in the first epoch (a steady epoch took 0.4 s). Keras keeps the traced steps on the
model object, so a model of the same shape, given back its initial weights and a zeroed
optimizer, trains as a new one would without tracing again (bench/warm_worker.py).

Only ``videoloop worker`` turns this on (``WORKER_WARM_MODEL``): one slot, so a worker holds
one model more at most, and a worker still replaces itself every ``WORKER_MAX_JOBS`` jobs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.model.config import ModelConfig
from training.video.clip import SamplingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """Everything a built and compiled model depends on; equal shapes, interchangeable
    models. Label names are not here: a warm start compares them with the parent's."""

    num_classes: int
    timeline_labels: int
    sampling: SamplingConfig
    model_config: ModelConfig
    seed: int


class WarmModel:
    """One slot: :meth:`model_for` builds a model, or hands back the kept one reset."""

    def __init__(self) -> None:
        self.enabled = False
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._shape: ModelShape | None = None
        self._model: Any = None
        self._initial: list | None = None

    def model_for(self, shape: ModelShape, build: Callable[[], Any]) -> Any:
        """A compiled model of ``shape`` at its initial weights, with no optimizer state.

        Disabled, or under a mixed-precision policy (its loss-scale state must not be zeroed),
        this is ``build()``. Enabled, the model is kept for the next call, which gets it back
        reset when its shape is the same; otherwise a new one replaces it.
        """
        import keras

        if not self.enabled or keras.mixed_precision.global_policy().name != "float32":
            return build()
        with self._lock:
            if self._shape == shape:
                self._reset()
                self.hits += 1
                log.info("training on the warm model: no build, no tracing")
                return self._model
            self.clear()
            model = build()
            # Variables, not weights: the dropout layers' seed states too, so a kept model's
            # run is the very run a new one makes (same masks, same losses).
            initial = [variable.numpy() for variable in model.variables]
            self._shape, self._model, self._initial = shape, model, initial
            self.misses += 1
            return model

    def _reset(self) -> None:
        for variable, value in zip(self._model.variables, self._initial, strict=True):
            variable.assign(value)
        import numpy as np

        for variable in self._model.optimizer.variables:  # iterations, moments; fit sets the rate
            variable.assign(np.zeros(tuple(variable.shape), dtype=variable.dtype))

    def clear(self) -> None:
        """Drop the kept model (a failed run, a test)."""
        self._shape = self._model = self._initial = None


WARM_MODEL = WarmModel()
"""This process's slot; ``videoloop worker`` enables it."""


def set_learning_rate(model, learning_rate: float) -> None:
    """Set a compiled model's learning rate in place: its traced train step reads the
    optimizer's variable, so no recompiling (which would trace again)."""
    model.optimizer.learning_rate = learning_rate
