"""The motion4 set of training/video/synth.py: paired by time reversal, cluttered, approaching
and receding in perspective."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from training.learn.labelled_files import read_manifest
from training.video import synth

SIZE = {"width": 96, "height": 64, "fps": 25}
PAIRS = (("left_to_right", "right_to_left"), ("approaching", "receding"))


def shape_area(frames: np.ndarray) -> np.ndarray:
    """Per-frame pixel count of the main shape in a ``clutter=False`` render."""
    return (np.abs(frames.astype(np.int16) - 128).max(axis=-1) > 30).sum(axis=(1, 2))


def test_motion4_is_a_named_set_of_two_reversed_pairs() -> None:
    classes = synth.select_classes("motion4")
    assert classes == ["left_to_right", "right_to_left", "approaching", "receding"]
    assert synth.select_classes(" motion4 ") == classes
    assert synth.is_paired_set(classes) and synth.is_paired_set(classes[::-1])
    assert not synth.is_paired_set(classes[:2])


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("forward", "backward"), PAIRS)
def test_a_pairs_second_class_is_the_first_played_backwards(
    seed: int, forward: str, backward: str
) -> None:
    for i in range(3):
        a = synth.paired_clip(forward, seed, i, **SIZE)
        b = synth.paired_clip(backward, seed, i, **SIZE)
        np.testing.assert_array_equal(b, a[::-1])
        assert not np.array_equal(a, b)
    # another seed is another clip
    other = synth.paired_clip(forward, seed + 10, 0, **SIZE)
    first = synth.paired_clip(forward, seed, 0, **SIZE)
    assert other.shape != first.shape or not np.array_equal(other, first)


@pytest.mark.parametrize(("forward", "backward"), PAIRS)
def test_no_single_frame_tells_a_pair_apart(forward: str, backward: str) -> None:
    for i in range(4):
        a = synth.paired_clip(forward, 1, i, **SIZE).astype(np.float64)
        b = synth.paired_clip(backward, 1, i, **SIZE).astype(np.float64)
        # the same frames: every per-frame statistic has the same distribution over the clip
        for stat in (np.mean, np.std, np.median):
            np.testing.assert_allclose(
                np.sort(stat(a, axis=(1, 2, 3))), np.sort(stat(b, axis=(1, 2, 3)))
            )
        # textured and noisy, not flat: strong spatial variation and per-frame noise
        assert a.std(axis=(1, 2)).mean() > 8.0
        assert np.abs(np.diff(a, axis=0)).mean() > 1.0


def test_clips_carry_distractors_beside_the_main_shape() -> None:
    """Cluttered minus background: moving things other than the main shape show up in the
    frame differences of some clips (0-2 distractors a clip)."""
    moving_elsewhere = 0
    for i in range(8):
        rng = synth.clip_rng(1, synth.CLASSES.index("left_to_right"), i)
        clean = synth.render_clip("left_to_right", rng, clutter=False, **SIZE)
        rng = synth.clip_rng(1, synth.CLASSES.index("left_to_right"), i)
        busy = synth.render_clip("left_to_right", rng, **SIZE).astype(np.int16)
        main = np.abs(clean.astype(np.int16) - 128).max(axis=-1) > 0
        main = main | np.roll(main, 1, axis=0)  # where the shape is now or was a frame ago
        change = np.abs(np.diff(busy, axis=0)).max(axis=-1) > 40
        moving_elsewhere += int((change & ~main[1:]).sum() > 20)
    assert moving_elsewhere >= 3


def test_approaching_grows_faster_and_faster_and_receding_shrinks() -> None:
    for i in range(5):
        rng = synth.clip_rng(0, synth.CLASSES.index("approaching"), i)
        area = shape_area(synth.render_clip("approaching", rng, clutter=False))
        assert area[-1] > 6 * area[0], i
        half = len(area) // 2
        assert area[-1] - area[half] > area[half] - area[0], i  # 1 / depth: slow, then fast
        rng = synth.clip_rng(0, synth.CLASSES.index("approaching"), i)
        away = shape_area(synth.render_clip("receding", rng, clutter=False))
        np.testing.assert_array_equal(away, area[::-1])


def test_generate_dataset_writes_the_paired_set(tmp_path: Path) -> None:
    manifest = synth.generate_dataset(
        tmp_path, classes=synth.select_classes("motion4"), per_class=1, seed=3, **SIZE
    )
    rows = read_manifest(manifest)
    assert sorted(label for _, label in rows) == sorted(synth.SETS["motion4"])
    decoded = {}
    for path, label in rows:
        with av.open(str(path)) as container:
            decoded[label] = np.stack(
                [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            ).astype(np.int16)
    for forward, backward in PAIRS:
        rendered = synth.paired_clip(forward, 3, 0, **SIZE).astype(np.int16)[::-1]
        unpaired_rng = synth.clip_rng(3, synth.CLASSES.index(backward), 0)
        unpaired = synth.render_clip(backward, unpaired_rng, **SIZE).astype(np.int16)
        assert decoded[backward].shape == rendered.shape
        loss = np.abs(decoded[backward] - rendered).mean()  # H.264's losses, on noisy frames
        assert loss < 6.0
        if unpaired.shape == rendered.shape:
            assert np.abs(decoded[backward] - unpaired).mean() > 2 * loss
