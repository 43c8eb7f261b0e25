"""Label-keeping augmentation of training clips, as tf.data map functions.

Why: a first model learns from 2 clips a label; every variation of those clips that keeps
the label is free data. Each change is drawn once per clip, so temporal order and direction
are kept: no time reversal (it turns "left to right" into "right to left") and no horizontal
flip (the same for left/right classes). docs/unlabelled-data.md has the measured effect.

- spatial: one brightness/contrast change and one small translation for all of a clip's
  frames;
- temporal: a speed change (0.75-1.33x, nearest frame) from a random start, so a clip is
  cropped in time (slower) or ends early, padded and masked (faster).
"""

from __future__ import annotations

AUGMENTATIONS = ("spatial", "temporal")
"""What AUGMENT may list (comma-separated), or ``none``."""

SPEEDS = (0.75, 1.33)
"""The range a clip's playback speed is drawn from (never negative: no time reversal)."""


def parse_augment(text: str) -> tuple[str, ...]:
    """The augmentations named in ``text`` (``spatial,temporal``, ``none`` or empty: none).

    Raises:
        ValueError: an unknown name.
    """
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; any of {', '.join(AUGMENTATIONS)}")
    return tuple(n for n in AUGMENTATIONS if n in names)


def spatial(t: int, h: int, w: int):
    """The map function of the spatial augmentation over ``(inputs, targets, weights)``."""
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


def temporal(t: int):
    """The map function of the temporal augmentation: frame ``i`` of the result is frame
    ``round(start + speed * i)`` of the clip's real frames, or padding past the last one.

    Per-frame targets and weights (a timeline head) follow their frames; padding weighs 0.
    """
    import tensorflow as tf

    def resample(x, y, sw):
        real = tf.maximum(tf.reduce_sum(tf.cast(x["mask"], tf.int32)), 1)
        last = tf.cast(real - 1, tf.float32)
        speed = tf.exp(tf.random.uniform((), *_log_speeds()))
        slack = tf.maximum(0.0, last - speed * last)  # slower: a window of the clip
        start = tf.random.uniform((), 0.0, 1.0) * slack
        at = tf.round(start + speed * tf.range(t, dtype=tf.float32))
        keep = at <= last
        idx = tf.cast(tf.minimum(at, last), tf.int32)
        frames = tf.gather(x["frames"], idx) * tf.cast(keep, tf.uint8)[:, None, None, None]
        mask = tf.logical_and(tf.gather(x["mask"], idx), keep)
        y, sw = dict(y), dict(sw)
        if "timeline" in y:
            y["timeline"] = tf.gather(y["timeline"], idx)
            sw["timeline"] = tf.gather(sw["timeline"], idx) * tf.cast(keep, tf.float32)
        return {"frames": frames, "mask": mask}, y, sw

    return resample


def _log_speeds() -> tuple[float, float]:
    import math

    return math.log(SPEEDS[0]), math.log(SPEEDS[1])
