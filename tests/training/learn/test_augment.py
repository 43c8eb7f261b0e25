"""training/learn/augment.py: label-keeping augmentation keeps shapes, masks and the order of
time, in the real tf.data pipeline the training runs."""

from __future__ import annotations

import numpy as np
import pytest

from training.learn.augment import parse_augment
from training.learn.dataset import ClipArrays
from training.learn.pipeline import make_dataset

T, SIZE = 8, 16


def numbered_clips(real: list[int]) -> ClipArrays:
    """Clips whose frame i is filled with the value 10 * (i + 1), padded past ``real`` frames."""
    n = len(real)
    frames = np.zeros((n, T, SIZE, SIZE, 3), np.uint8)
    mask = np.zeros((n, T), bool)
    for c, count in enumerate(real):
        for i in range(count):
            frames[c, i] = 10 * (i + 1)
        mask[c, :count] = True
    frame_y = np.where(mask, np.arange(T)[None, :] % 3, -1).astype(np.int32)
    y = np.arange(n, dtype=np.int32) % 2
    return ClipArrays(frames, mask, y, [f"c{i}" for i in range(n)], frame_y=frame_y)


def test_parse_augment_names_and_refuses_typos():
    assert parse_augment("temporal, Spatial") == ("spatial", "temporal")
    assert parse_augment("none") == () == parse_augment("")
    with pytest.raises(ValueError, match="flip"):
        parse_augment("spatial,flip")


def test_temporal_augmentation_never_reverses_time_and_keeps_masks_and_targets():
    data = numbered_clips([8, 8, 6, 5] * 8)
    ds = make_dataset(
        data, 2, 4, shuffle=False, augment=False, temporal=True, seed=0, timeline_labels=2
    )
    speeds_seen = set()
    for _ in range(3):
        for x, y, sw in ds:
            frames, mask = x["frames"].numpy(), x["mask"].numpy()
            assert frames.shape == (4, T, SIZE, SIZE, 3) and mask.shape == (4, T)
            targets, weights = y["timeline"].numpy(), sw["timeline"].numpy()
            for f, m, fy, fw in zip(frames, mask, targets, weights, strict=True):
                real = int(m.sum())
                assert real >= 1 and m[:real].all() and not m[real:].any()  # a prefix
                values = f[:real, 0, 0, 0].astype(int)
                assert (np.diff(values) >= 0).all(), values  # forward, never reversed
                assert (values > 0).all() and not f[real:].any()  # padding is black
                source = values // 10 - 1  # which original frame each one is
                assert (fy[:real].argmax(-1) == source % 3).all()  # targets follow frames
                assert (fw[real:] == 0).all()
                speeds_seen.add(tuple(np.diff(values)))
    assert len(speeds_seen) > 3  # the speed and start vary from clip to clip


def test_spatial_augmentation_keeps_shape_mask_and_order():
    data = numbered_clips([8, 5])
    ds = make_dataset(data, 2, 2, shuffle=False, augment=True, seed=0)
    (x, _, _) = next(iter(ds))
    assert x["frames"].shape == (2, T, SIZE, SIZE, 3)
    assert (x["mask"].numpy() == data.mask).all()
    means = x["frames"].numpy()[0].astype(float).mean(axis=(1, 2, 3))
    # one brightness change for the whole clip (dark frames may clip at 0): order kept
    assert (np.diff(means) >= 0).all() and means[-1] > means[0] + 50
