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

from training.model.embedding import ClassifierHead, with_embedding
from training.versions.store import VersionInfo
from training.video.clip import SamplingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """An immutable bundle: swap the whole object, never its parts.

    ``labels`` name the ``"classes"`` output (empty for a timeline-only model),
    ``timeline_labels`` the ``"timeline"`` output's 1.. (empty without a timeline head).
    """

    version: str
    labels: list[str]
    sampling: SamplingConfig
    batch_size: int
    meta: dict = field(repr=False)
    _predict_fn: object = field(repr=False)
    timeline_labels: list[str] = field(default_factory=list)
    head: ClassifierHead | None = field(default=None, repr=False)
    """With ``embeddings=True`` at load: the classifier head, for BALD (embedding.py)."""

    def predict(self, frames: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model for clips.

        Args:
            frames: (B, T, H, W, 3) uint8, as sampled with ``self.sampling``.
            mask: (B, T) bool, True for real frames.

        Returns:
            ``"classes"``: (B, len(labels)) and/or ``"timeline"``: (B, T,
            1 + len(timeline_labels)) float32 probabilities (output 0: no label); loaded with
            ``embeddings=True``, also ``"embedding"``: (B, D), the classifier head's input.
        """
        expected = (self.sampling.frames, self.sampling.height, self.sampling.width, 3)
        if len(frames) == 0:
            out = {}
            if self.labels:
                out["classes"] = np.zeros((0, len(self.labels)), np.float32)
            if self.timeline_labels:
                shape = (0, expected[0], 1 + len(self.timeline_labels))
                out["timeline"] = np.zeros(shape, np.float32)
            return out
        if frames.shape[1:] != expected:
            raise ValueError(f"frames of shape {frames.shape[1:]}, model expects {expected}")
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(frames), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            raw = self._predict_fn(frames[chunk], mask[chunk].astype(bool))  # type: ignore[operator]
            for head, value in raw.items():
                parts.setdefault(head, []).append(np.asarray(value, dtype=np.float32))
        return {head: np.concatenate(values) for head, values in parts.items()}

    def predict_proba(self, frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Class probabilities for clips: (B, len(labels)), rows summing to 1."""
        return self.predict(frames, mask)["classes"]


def warmed_up(
    info: VersionInfo, batch_size: int, predict_fn, head: ClassifierHead | None = None
) -> LoadedModel:
    """A version's bundle around ``predict_fn(frames, mask) -> {output: array}`` (any
    runtime's), after one prediction so the first request pays no tracing or allocation."""
    sampling = SamplingConfig.from_dict(info.meta["sampling"])
    loaded = LoadedModel(
        version=info.version,
        labels=list(info.meta["labels"]),
        timeline_labels=list(info.meta.get("timeline_labels") or []),
        sampling=sampling,
        batch_size=batch_size,
        meta=info.meta,
        _predict_fn=predict_fn,
        head=head,
    )
    t, h, w = sampling.frames, sampling.height, sampling.width
    loaded.predict(np.zeros((1, t, h, w, 3), np.uint8), np.ones((1, t), bool))
    return loaded


def load_version(info: VersionInfo, batch_size: int = 8, embeddings: bool = False) -> LoadedModel:
    """Load a version's model from the store and warm it up; with ``embeddings``, its
    predictions carry each clip's embedding and ``head`` is set (acquisition, embedding.py).
    In a worker that keeps versions (WORKER_KEEP_WARM), the bundle made before, if any.

    Raises:
        OSError / ValueError: the model file is missing or unreadable.
    """
    from training.model.kept_versions import KEPT_VERSIONS

    key = (str(info.model_path), batch_size, embeddings)
    return KEPT_VERSIONS.keep(key, lambda: _load_version(info, batch_size, embeddings))


def _load_version(info: VersionInfo, batch_size: int, embeddings: bool) -> LoadedModel:
    import tensorflow as tf

    from training.model.kept_versions import KEPT_VERSIONS

    started = time.perf_counter()
    model = KEPT_VERSIONS.load(info.model_path)
    head = None
    if embeddings:
        model, head = with_embedding(model)
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

    loaded = warmed_up(info, batch_size, predict_fn, head)
    log.info(
        "loaded project %s version %s in %.2f s",
        info.project,
        info.version,
        time.perf_counter() - started,
    )
    return loaded
