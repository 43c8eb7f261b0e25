"""tf.data pipelines over labelled clips: targets and sample weights per model output,
shuffling, augmentation, batching.

Clips stay uint8 up to the augmentation (the model scales them itself), so a pipeline holds
no float copy of the data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    weights: dict[int, float] | None = None,
    timeline_labels: int = 0,
    frame_weights: dict[int, float] | None = None,
):
    """A tf.data pipeline over uint8 clips: shuffle, augment, batch, prefetch.

    Targets and sample weights are dicts keyed by output: ``"classes"`` (when num_classes > 0:
    ``weights`` per class, 0 for a clip without a class) and ``"timeline"`` (one-hot per frame
    over 1 + timeline_labels, weight ``frame_weights[target]`` per frame and 0 where the
    target is IGNORE).
    """
    import tensorflow as tf

    n, t, h, w = len(data), *data.frames.shape[1:4]
    targets = _Targets.of(data, num_classes, weights, timeline_labels, frame_weights)
    rng = np.random.default_rng(seed)

    def generate():
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
    if augment:
        ds = ds.map(_jitter(t, h, w), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _jitter(t: int, h: int, w: int):
    """The augmentation: one brightness/contrast change and one small translation per clip,
    the same for all its frames, so temporal order and direction are kept."""
    import tensorflow as tf

    pad = max(2, h // 16)

    def jitter(x, y, sw):
        f = tf.cast(x["frames"], tf.float32)
        f = f * tf.random.uniform((), 0.75, 1.25) + tf.random.uniform((), -25.0, 25.0)
        f = tf.pad(f, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        oy = tf.random.uniform((), 0, 2 * pad + 1, tf.int32)
        ox = tf.random.uniform((), 0, 2 * pad + 1, tf.int32)
        f = f[:, oy : oy + h, ox : ox + w, :]
        f = tf.cast(tf.clip_by_value(f, 0.0, 255.0), tf.uint8)
        return {"frames": tf.ensure_shape(f, (t, h, w, 3)), "mask": x["mask"]}, y, sw

    return jitter
