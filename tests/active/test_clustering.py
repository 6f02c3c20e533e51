"""Average-linkage clustering: the weighted linkage against scipy, the scalable approximation against exact."""

import numpy as np
import pytest
from scipy.cluster import hierarchy
from sklearn.metrics import adjusted_rand_score

from active.clustering import cluster_margin_clusters, cut_linkage, weighted_average_linkage


def test_unit_weights_reproduce_scipy_average_linkage():
    points = np.random.default_rng(0).normal(size=(300, 6))
    ours = weighted_average_linkage(points, np.ones(300))
    reference = hierarchy.linkage(points, "average")
    np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(reference[:, 2]), rtol=1e-12)
    for clusters in (2, 7, 30):
        assert adjusted_rand_score(cut_linkage(ours, clusters, None), cut_linkage(reference, clusters, None)) == 1.0


def test_weights_act_as_repeated_points():
    rng = np.random.default_rng(1)
    points, weights = rng.normal(size=(40, 3)), rng.integers(1, 5, 40)
    repeated = np.repeat(points, weights, axis=0)  # duplicates merge at height 0 first
    reference = hierarchy.linkage(repeated, "average")
    positive_heights = np.sort(reference[:, 2])[-(len(points) - 1) :]
    np.testing.assert_allclose(np.sort(weighted_average_linkage(points, weights)[:, 2]), positive_heights, rtol=1e-10)


def test_cut_by_distance_threshold_counts_merges_above_it():
    points = np.random.default_rng(2).normal(size=(60, 2))
    linkage = weighted_average_linkage(points, np.ones(60))
    threshold = float(np.median(linkage[:, 2]))
    ids = cut_linkage(linkage, None, threshold)
    assert ids.max() + 1 == 1 + np.count_nonzero(linkage[:, 2] > threshold)
    with pytest.raises(ValueError, match="exactly one"):
        cut_linkage(linkage, 3, threshold)


@pytest.mark.parametrize("centre_scale, num_clusters", [(3.0, 10), (1.5, 50)])
def test_scalable_clustering_agrees_with_exact_on_a_mixture(centre_scale, num_clusters):
    """Separated blobs cut at 10, and overlapping blobs cut finer (measured ARI 1.0 and 0.94).

    Agreement drops where exact average linkage spends its clusters on outlier singletons (e.g.
    150 clusters of these overlapping blobs: ARI ~0.4), which k-means cells cannot isolate.
    """
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=centre_scale, size=(10, 16))
    points = (centres[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    exact = cluster_margin_clusters(points, num_clusters=num_clusters)
    approximate = cluster_margin_clusters(points, num_clusters=num_clusters, exact_max_points=0, num_centroids=300)
    assert approximate.max() + 1 == num_clusters
    assert adjusted_rand_score(exact, approximate) >= 0.9


def test_more_clusters_than_centroids_is_an_error():
    with pytest.raises(ValueError, match="num_centroids"):
        cluster_margin_clusters(np.zeros((30, 2)), num_clusters=20, exact_max_points=10, num_centroids=10)
