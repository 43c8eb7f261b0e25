"""training/model/uncertainty.py: the confidence scores Label Studio sorts tasks by."""

from __future__ import annotations

import numpy as np
import pytest

from training.model.uncertainty import (
    Measure,
    confidence,
    most_uncertain,
    parse_measure,
    uncertainty,
)

ROWS = np.array(
    [
        [0.5, 0.3, 0.2],  # unsure
        [1.0, 0.0, 0.0],  # certain
        [1 / 3, 1 / 3, 1 / 3],  # no idea
        [0.45, 0.45, 0.10],  # torn between two
    ]
)


def test_least_confidence_is_the_top_probability():
    assert confidence(ROWS, "least_confidence") == pytest.approx([0.5, 1.0, 1 / 3, 0.45])


def test_margin_is_the_gap_to_the_runner_up():
    assert confidence(ROWS, Measure.MARGIN) == pytest.approx([0.2, 1.0, 0.0, 0.0])


def test_entropy_is_one_for_certainty_and_zero_for_uniform():
    scores = confidence(ROWS, "entropy")
    assert scores[1] == pytest.approx(1.0)
    assert scores[2] == pytest.approx(0.0, abs=1e-12)
    assert 0 < scores[0] < 1 and 0 < scores[3] < 1
    # the measures disagree on purpose: entropy counts the third label being ruled out, the
    # margin only sees the tie between the first two
    assert scores[3] > scores[0]
    assert confidence(ROWS, "margin")[3] < confidence(ROWS, "margin")[0]


@pytest.mark.parametrize("measure", list(Measure))
def test_every_measure_is_in_the_unit_interval_and_ranks_certainty_first(measure):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=200)
    scores = confidence(probs, measure)
    assert scores.shape == (200,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert confidence(np.eye(5)[2], measure) == pytest.approx(1.0)
    assert uncertainty(probs, measure) == pytest.approx(1 - scores)


def test_works_on_every_frame_of_a_clip():
    frames = np.stack([ROWS, ROWS[::-1]])  # (2 clips, 4 frames, 3 labels)
    assert confidence(frames, "margin").shape == (2, 4)


def test_picked_label_that_is_not_the_favourite():
    # the config dropped label 0: the prediction is label 1, and its own probability counts
    p = np.array([0.6, 0.3, 0.1])
    assert confidence(p, "least_confidence", picked=1) == pytest.approx(0.3)
    assert confidence(p, "margin", picked=1) == 0.0  # the favourite beats it


def test_most_uncertain_orders_by_confidence_then_index():
    assert most_uncertain(ROWS, 2, "least_confidence") == [2, 3]
    assert most_uncertain(ROWS, 3, "margin") == [2, 3, 0]  # 2 and 3 tie: lower index first
    assert most_uncertain(ROWS, 0) == []


def test_parse_measure():
    assert parse_measure(None) is Measure.LEAST_CONFIDENCE
    assert parse_measure(" Entropy ") is Measure.ENTROPY
    with pytest.raises(ValueError, match="least_confidence, margin, entropy"):
        parse_measure("variance")
