"""Active covering: both algorithms find a compact positive region with few queries, using queried labels only."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from active.covering import CoveringResult, explore_then_commit, offline_covering


def _blob_pool():
    """500 uniform points in [0, 10]^2; positives are the 30 inside a disc of radius 1 around (7, 7)."""
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 10, size=(500, 2))
    points[:30] = (7.0, 7.0) + rng.uniform(-0.7, 0.7, size=(30, 2))
    positive = np.linalg.norm(points - (7.0, 7.0), axis=1) <= 1.0
    return points, positive


class _CountingOracle:
    """Answers label queries and records every index asked, to check nothing is asked twice."""

    def __init__(self, positive):
        self.positive, self.asked = positive, []

    def __call__(self, indices):
        self.asked.extend(indices.tolist())
        return self.positive[indices]


def test_offline_covering_queries_exactly_the_support_estimate():
    points, positive = _blob_pool()
    oracle = _CountingOracle(positive)
    result = offline_covering(points, oracle, sample_size=100, radius=1.5, rng=np.random.default_rng(1))
    sample = result.queried[:100]
    sampled_positives = points[sample[positive[sample]]]
    assert len(sampled_positives) > 0
    near = cdist(points, sampled_positives).min(axis=1) <= 1.5
    near[sample] = False
    assert set(result.queried[100:]) == set(np.flatnonzero(near))
    assert len(oracle.asked) == len(set(oracle.asked)) == len(result.queried)
    np.testing.assert_array_equal(result.labels, positive[result.queried])
    assert set(result.positives) == set(np.flatnonzero(positive))  # all found: the blob fits in the balls


def test_explore_then_commit_finds_all_positives_soon_after_the_first():
    points, positive = _blob_pool()
    num_positive = int(positive.sum())
    oracle = _CountingOracle(positive)
    result = explore_then_commit(points, oracle, explore_size=40, budget=150, rng=np.random.default_rng(2))
    assert len(result.queried) == 150 == len(set(oracle.asked))
    cost = result.queries_to_find(num_positive)
    assert cost is not None and cost <= 40 + num_positive + 10
    # Uniform querying would need about 500 * n / (n + 1) queries to find all n positives.
    assert cost < 0.4 * 500


def test_explore_then_commit_commits_to_the_nearest_unqueried_point():
    points, positive = _blob_pool()
    result = explore_then_commit(
        points, _CountingOracle(positive), explore_size=60, budget=70, rng=np.random.default_rng(3)
    )
    for step in range(60, 70):
        known = result.queried[:step][result.labels[:step]]
        unqueried = np.setdiff1d(np.arange(500), result.queried[:step])
        nearest = unqueried[np.argmin(cdist(points[unqueried], points[known]).min(axis=1))]
        assert result.queried[step] == nearest


def test_queries_to_find_counts_queries_up_to_the_kth_positive():
    result = CoveringResult(np.arange(6), np.array([False, True, False, False, True, False]))
    assert [result.queries_to_find(k) for k in range(4)] == [0, 2, 5, None]


def test_budget_errors_name_the_values():
    points, positive = _blob_pool()
    with pytest.raises(ValueError, match=r"explore_size \(20\) <= budget \(10\)"):
        explore_then_commit(points, _CountingOracle(positive), 20, 10, np.random.default_rng(0))
