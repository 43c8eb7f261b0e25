"""tf.data pipelines over labelled clips: targets and sample weights per model output,
shuffling, augmentation, batching.

Clips stay uint8 up to the augmentation (the model scales them itself), so a pipeline holds
no float copy of the data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.learn.augment import spatial as augment_spatial
from training.learn.augment import temporal as augment_temporal
from training.learn.dataset import ClipArrays


@dataclass(frozen=True)
class _Targets:
    """Every clip's targets and sample weights, laid out for the model's outputs.

    Dicts keyed by the model's outputs: ``"classes"`` (the one-hot class and its weight) when
    there are classes, ``"timeline"`` (one-hot per frame over 1 + timeline_labels) when there
    is a timeline head.
    """

    onehot: np.ndarray
    sample_w: np.ndarray
    frame_onehot: np.ndarray | None
    frame_w: np.ndarray | None
    num_classes: int
    timeline_labels: int

    @classmethod
    def of(
        cls,
        data: ClipArrays,
        num_classes: int,
        weights: dict[int, float] | None,
        timeline_labels: int,
        frame_weights: dict[int, float] | None,
    ) -> _Targets:
        n, t = len(data), data.frames.shape[1]
        has_class = data.y >= 0
        onehot = np.zeros((n, max(num_classes, 1)), np.float32)
        onehot[has_class, data.y[has_class]] = 1.0
        sample_w = np.asarray(
            [(weights or {}).get(int(c), 1.0) if c >= 0 else 0.0 for c in data.y], np.float32
        )
        frame_onehot = frame_w = None
        if timeline_labels:
            if data.frame_y is None:
                raise ValueError("a timeline model needs per-frame targets (ClipArrays.frame_y)")
            counted = data.frame_y >= 0
            frame_onehot = np.zeros((n, t, timeline_labels + 1), np.float32)
            frame_onehot[counted, data.frame_y[counted]] = 1.0
            lookup = np.asarray(
                [(frame_weights or {}).get(i, 1.0) for i in range(timeline_labels + 1)],
                np.float32,
            )
            frame_w = np.where(counted, lookup[np.clip(data.frame_y, 0, None)], 0.0)
            frame_w = frame_w.astype(np.float32)
        return cls(onehot, sample_w, frame_onehot, frame_w, num_classes, timeline_labels)

    def at(self, i: int):
        """Clip ``i``'s targets and sample weights."""
        y, sw = {}, {}
        if self.num_classes:
            y["classes"], sw["classes"] = self.onehot[i], self.sample_w[i]
        if self.timeline_labels:
            y["timeline"], sw["timeline"] = self.frame_onehot[i], self.frame_w[i]
        return y, sw

    def specs(self, frames: int):
        """tf.data specs of the targets and of the sample weights."""
        import tensorflow as tf

        y_spec, sw_spec = {}, {}
        if self.num_classes:
            y_spec["classes"] = tf.TensorSpec((self.num_classes,), tf.float32)
            sw_spec["classes"] = tf.TensorSpec((), tf.float32)
        if self.timeline_labels:
            y_spec["timeline"] = tf.TensorSpec((frames, self.timeline_labels + 1), tf.float32)
            sw_spec["timeline"] = tf.TensorSpec((frames,), tf.float32)
        return y_spec, sw_spec


def make_dataset(
    data: ClipArrays,
    num_classes: int,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool,
    seed: int,
    temporal: bool = False,
    min_batches: int = 1,
    weights: dict[int, float] | None = None,
    timeline_labels: int = 0,
    frame_weights: dict[int, float] | None = None,
):
    """A tf.data pipeline over uint8 clips: shuffle, augment, batch, prefetch.

    ``augment``: the spatial augmentation, ``temporal``: the temporal one
    (training/learn/augment.py); both keep the clip's label, order and direction.
    ``min_batches``: go over the clips as many times as it takes to fill that many batches
    (each pass reshuffled and, with augmentation, differently augmented).

    Targets and sample weights are dicts keyed by output: ``"classes"`` (when num_classes > 0:
    ``weights`` per class, 0 for a clip without a class) and ``"timeline"`` (one-hot per frame
    over 1 + timeline_labels, weight ``frame_weights[target]`` per frame and 0 where the
    target is IGNORE).
    """
    import tensorflow as tf

    n, t, h, w = len(data), *data.frames.shape[1:4]
    targets = _Targets.of(data, num_classes, weights, timeline_labels, frame_weights)
    rng = np.random.default_rng(seed)

    passes = max(1, -(-min_batches * batch_size // max(n, 1)))

    def generate():
        for _ in range(passes):
            order = rng.permutation(n) if shuffle else np.arange(n)
            for i in order:
                y, sw = targets.at(i)
                yield {"frames": data.frames[i], "mask": data.mask[i]}, y, sw

    inputs = {
        "frames": tf.TensorSpec((t, h, w, 3), tf.uint8),
        "mask": tf.TensorSpec((t,), tf.bool),
    }
    signature = (inputs, *targets.specs(t))
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if temporal:
        ds = ds.map(augment_temporal(t), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        ds = ds.map(augment_spatial(t, h, w), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
