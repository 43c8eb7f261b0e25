"""A published version loaded for inference: the Keras model, its labels and sampling.

Loading runs one warm-up prediction so the first real request does not pay for tracing.
Prediction goes through one ``tf.function`` with a fixed input signature: one trace for every
batch size, no 50-90 ms ``model.predict()`` overhead per call, and safe from many threads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from training.sampling import SamplingConfig
from training.store import VersionInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """An immutable bundle: swap the whole object, never its parts."""

    version: str
    labels: list[str]
    sampling: SamplingConfig
    batch_size: int
    meta: dict = field(repr=False)
    _predict_fn: object = field(repr=False)

    def predict_proba(self, frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Class probabilities for clips.

        Args:
            frames: (B, T, H, W, 3) uint8, as sampled with ``self.sampling``.
            mask: (B, T) bool, True for real frames.

        Returns:
            (B, len(labels)) float32 probabilities, rows summing to 1.
        """
        if len(frames) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        expected = (self.sampling.frames, self.sampling.height, self.sampling.width, 3)
        if frames.shape[1:] != expected:
            raise ValueError(f"frames of shape {frames.shape[1:]}, model expects {expected}")
        out = []
        for start in range(0, len(frames), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            probs = self._predict_fn(frames[chunk], mask[chunk].astype(bool))  # type: ignore[operator]
            out.append(np.asarray(probs, dtype=np.float32))
        return np.concatenate(out)


def load_version(info: VersionInfo, batch_size: int = 8) -> LoadedModel:
    """Load a version's model from the store and warm it up.

    Raises:
        OSError / ValueError: the model file is missing or unreadable.
    """
    import keras
    import tensorflow as tf

    import training.model  # noqa: F401  (registers the custom layers for deserialisation)

    started = time.perf_counter()
    model = keras.saving.load_model(info.model_path, compile=False)
    sampling = SamplingConfig.from_dict(info.meta["sampling"])
    t, h, w = sampling.frames, sampling.height, sampling.width

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, t, h, w, 3), tf.uint8),
            tf.TensorSpec((None, t), tf.bool),
        ],
        reduce_retracing=True,
    )
    def predict_fn(frames, mask):
        return model({"frames": frames, "mask": mask}, training=False)

    loaded = LoadedModel(
        version=info.version,
        labels=list(info.meta["labels"]),
        sampling=sampling,
        batch_size=batch_size,
        meta=info.meta,
        _predict_fn=predict_fn,
    )
    warm = np.zeros((1, t, h, w, 3), np.uint8)
    loaded.predict_proba(warm, np.ones((1, t), bool))
    log.info(
        "loaded project %s version %s in %.2f s",
        info.project,
        info.version,
        time.perf_counter() - started,
    )
    return loaded
