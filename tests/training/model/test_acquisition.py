"""training/model/acquisition.py: BALD, k-center, BADGE and the order they give, on inputs
whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from training.model.acquisition import (
    Strategy,
    bald,
    choose_order,
    gradient_embeddings,
    kcenter_greedy,
    kmeans_pp,
    mc_dropout_probs,
    parse_strategy,
)


def test_bald_is_high_where_passes_disagree_not_where_each_is_unsure():
    agree_sure = [[0.95, 0.05]] * 4
    agree_unsure = [[0.5, 0.5]] * 4  # ambiguous clip: every pass says 50/50
    disagree = [[0.95, 0.05], [0.05, 0.95]] * 2  # each pass sure, of different labels
    samples = np.array([agree_sure, agree_unsure, disagree]).transpose(1, 0, 2)
    scores = bald(samples)
    assert scores[2] > 0.4, scores  # near log 2 minus a small entropy
    assert scores[0] == pytest.approx(0.0, abs=1e-9)
    assert scores[1] == pytest.approx(0.0, abs=1e-9)
    assert np.argmax(scores) == 2


def test_mc_dropout_passes_vary_only_with_dropout_on():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(5, 16))
    kernel, bias = rng.normal(size=(16, 3)), np.zeros(3)
    still = mc_dropout_probs(h, kernel, bias, 0.0, 6, rng)
    assert np.allclose(still, still[0])
    shaken = mc_dropout_probs(h, kernel, bias, 0.5, 6, rng)
    assert shaken.shape == (6, 5, 3)
    assert np.allclose(shaken.sum(axis=-1), 1.0)
    assert bald(shaken).min() > 0.0  # every clip's passes differ somewhat
    assert bald(still).max() == pytest.approx(0.0, abs=1e-9)


def test_kcenter_picks_one_point_of_each_cluster_first():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float)
    points = np.concatenate([c + rng.normal(scale=0.1, size=(20, 2)) for c in centres])
    picked = kcenter_greedy(points, 4, first=0)
    assert len(set(picked)) == 4
    assert sorted(i // 20 for i in picked) == [0, 1, 2, 3]  # one per cluster


def test_kcenter_stops_at_the_pool_and_at_duplicates():
    assert kcenter_greedy(np.zeros((3, 2)), 5) == [0]  # the others duplicate it
    assert kcenter_greedy(np.empty((0, 2)), 3) == []
    assert sorted(kcenter_greedy(np.eye(3), 10)) == [0, 1, 2]


def test_badge_batch_holds_no_near_duplicates_where_uncertainty_sort_does():
    """Ten near-copies of one confusing clip and spread, milder ones: the score sort takes the
    copies first, BADGE takes at most one or two of them in its batch."""
    rng = np.random.default_rng(2)
    copies = np.tile([[1.0, 0.0, 0.0, 0.0]], (10, 1)) + rng.normal(scale=1e-3, size=(10, 4))
    spread = rng.normal(size=(30, 4)) * 3
    h = np.concatenate([copies, spread])
    probs = np.concatenate(
        [np.tile([[0.4, 0.35, 0.15, 0.1]], (10, 1)), np.tile([[0.6, 0.2, 0.1, 0.1]], (30, 1))]
    )
    for row, shift in zip(range(10, 40), rng.integers(0, 4, 30), strict=True):
        probs[row] = np.roll(probs[row], shift)  # milder doubts, about any label
    scores = probs.max(axis=1)
    plain = choose_order("score", scores)
    assert set(plain[:8]) <= set(range(10))  # the copies fill the plain batch
    for strategy in ("badge", "kcenter"):
        order = choose_order(strategy, scores, embeddings=h, probs=probs, batch=8, seed=3)
        assert sorted(order) == list(range(40))  # every clip, once
        assert sum(i < 10 for i in order[:8]) <= 2, (strategy, order[:8])


def test_gradient_embedding_length_grows_with_uncertainty():
    h = np.ones((2, 3))
    g = gradient_embeddings(np.array([[0.99, 0.01], [0.55, 0.45]]), h)
    assert g.shape == (2, 6)
    assert np.linalg.norm(g[1]) > 10 * np.linalg.norm(g[0])


def test_kmeans_pp_never_repeats_a_point():
    x = np.array([[0.0, 0.0]] * 5 + [[1.0, 1.0]])
    picked = kmeans_pp(x, 6, np.random.default_rng(0))
    assert len(picked) == len(set(picked)) == 2  # the rest duplicate those two


def test_bald_order_is_by_mutual_information_and_missing_inputs_fall_back():
    scores = np.array([0.9, 0.2, 0.5])
    assert choose_order("bald", scores, bald_scores=np.array([0.3, 0.0, 0.1])) == [0, 2, 1]
    assert choose_order("bald", scores) == [1, 2, 0]
    assert choose_order("kcenter", scores) == [1, 2, 0]
    assert choose_order("badge", scores, embeddings=np.eye(3)) == [1, 2, 0]


def test_parse_strategy():
    assert parse_strategy(None) is Strategy.SCORE
    assert parse_strategy(" BADGE ") is Strategy.BADGE
    with pytest.raises(ValueError, match="one of score, bald, kcenter, badge"):
        parse_strategy("coreset")
