"""bench/active_learning.py's loop trains each round as the job would under
TRAIN_SCRATCH_BELOW: from scratch below the threshold (the ``scratch `` method prefix), else
fine-tuning the last round's model.

Why: the bench's halving of the labels rests on which rounds fine-tune; a loop that quietly
passed a parent (or dropped it) would measure another product. The learner here records what
the loop hands it instead of training (the real training is ``fit``, tested on its own).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from active_learning import SCRATCH, Learner, _annotate, _methods
from unlabelled import METHODS

from training.learn.config import TrainConfig
from training.learn.dataset import ClipArrays


class SavedModel:
    """What the loop saves as the next round's parent."""

    def save(self, path: Path) -> None:
        Path(path).write_bytes(b"model")


def two_class_clips(n: int) -> ClipArrays:
    """``n`` blank clips of two alternating classes, keyed as the job keys tasks."""
    return ClipArrays(
        np.zeros((n, 2, 4, 4, 3), np.uint8),
        np.ones((n, 2), bool),
        np.arange(n, dtype=np.int32) % 2,
        [f"clip{i}" for i in range(n)],
        [f"task:{i}" for i in range(n)],
    )


def test_the_scratch_prefix_takes_an_unlabelled_method_and_refuses_unknown_ones():
    fields = _methods([f"{SCRATCH}x8 pseudo3 p40", "spatial"])
    assert fields == {f"{SCRATCH}x8 pseudo3 p40": METHODS["x8 pseudo3 p40"], "spatial": {}}
    with pytest.raises(SystemExit, match="unknown methods"):
        _methods([f"{SCRATCH}jigsaw"])


@pytest.mark.parametrize(("scratch_below", "fine_tuned"), [(0, [1, 2]), (8, [2]), (99, [])])
def test_rounds_below_the_threshold_train_from_scratch(scratch_below, fine_tuned):
    n = 20
    data = two_class_clips(n)
    parents: list = []

    def train(chosen, tr, va, parent, unlabelled):
        parents.append(parent)
        return SavedModel(), {"loss": [1.0]}, "scratch" if parent is None else "parent"

    job = {
        "seed": 0,
        "k": 2,
        "budget": 8,
        "holdout": "none",
        "kind": "random",
        "init": "parent",
        "scratch_below": scratch_below,
    }
    learner = Learner(train, lambda model: {"accuracy": 0.5}, None, lambda c: [len(c)], {})
    rounds = _annotate(job, data, np.arange(n), [0, 1, 2, 3], TrainConfig(), learner)
    assert [r["labels"] for r in rounds] == [4, 6, 8]
    assert [i for i, p in enumerate(parents) if p is not None] == fine_tuned
    assert [r["init"] for r in rounds] == [
        "parent" if i in fine_tuned else "scratch" for i in range(3)
    ]


@pytest.mark.parametrize("train_all_below", [0, 9])
def test_the_product_split_holds_nothing_out_under_train_all_below(train_all_below):
    # The loop splits as the product's run does (TrainConfig.split_fractions): under
    # TRAIN_ALL_BELOW every label trains; from it on, a test and a validation part again.
    n = 20
    data = two_class_clips(n)

    def train(chosen, tr, va, parent, unlabelled):
        return SavedModel(), {"loss": [1.0]}, "scratch"

    job = {"seed": 0, "k": 4, "budget": 12, "holdout": "product", "kind": "random"}
    learner = Learner(train, lambda model: {"accuracy": 0.5}, None, lambda c: [len(c)], {})
    config = TrainConfig(train_all_below=train_all_below)
    rounds = _annotate(job, data, np.arange(n), [0, 1, 2, 3], config, learner)
    assert [r["labels"] for r in rounds] == [4, 8, 12]
    held_out = [r["val"] + r["gate"] for r in rounds]
    assert held_out[0] == 0  # 2 a class: too few to hold any out, whatever the setting
    assert held_out[2] > 0  # 12 labels: not under 9
    assert (held_out[1] == 0) == (train_all_below == 9)
    assert all(r["train"] + r["val"] + r["gate"] == r["labels"] for r in rounds)
