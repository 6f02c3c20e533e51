"""Average-linkage agglomerative clustering of pool embeddings, exact or scalable (for Cluster-Margin).

Exact: scipy's average linkage (UPGMA) on all points. It stores the n(n-1)/2 pairwise distances
(float64), so it is used up to `EXACT_MAX_POINTS` (20K points: 1.6 GB).

Scalable approximation, for larger pools:
1. k-means (scikit-learn's Lloyd k-means on a uniform sample, then one assignment pass over
   all points) to `num_centroids` centroids (a thousand or a few);
2. exact average linkage on the centroids, each weighted by the number of points it holds: the
   distance between two groups of centroids is the size-weighted mean of their centroid-to-centroid
   distances (UPGMA started from clusters of the given sizes);
3. every point takes the cluster of its centroid.
The approximation replaces the mean distance between the points of two k-means cells by the
distance between their centroids (a lower bound, by Jensen's inequality), and never splits a cell.
Costs: k-means O(n k d) per pass, the linkage O(k^2) memory and roughly O(k^2) time.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial import distance

EXACT_MAX_POINTS = 20_000


def weighted_average_linkage(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average linkage (UPGMA) of points that stand for `weights` observations each.

    Returns a scipy linkage matrix (rows: [node a, node b, merge height, leaf count]); with unit
    weights it equals `scipy.cluster.hierarchy.linkage(points, "average")` up to tie order.
    """
    k = len(points)
    dist = distance.squareform(distance.pdist(np.asarray(points, np.float64)))
    np.fill_diagonal(dist, np.inf)
    size = np.asarray(weights, np.float64).copy()
    leaves = np.ones(k)
    node = np.arange(k)
    active = np.ones(k, bool)
    nearest = np.argmin(dist, axis=1)
    nearest_dist = dist[np.arange(k), nearest]
    linkage = np.empty((max(k - 1, 0), 4))
    for step in range(k - 1):
        a = int(np.argmin(nearest_dist))
        b = int(nearest[a])
        linkage[step] = [min(node[a], node[b]), max(node[a], node[b]), nearest_dist[a], leaves[a] + leaves[b]]
        merged = (size[a] * dist[a] + size[b] * dist[b]) / (size[a] + size[b])
        dist[a], dist[:, a] = merged, merged
        dist[b], dist[:, b] = np.inf, np.inf
        size[a] += size[b]
        leaves[a] += leaves[b]
        node[a] = k + step
        active[b] = False
        nearest_dist[b] = np.inf
        _update_nearest(dist, nearest, nearest_dist, active, a, b)
    return linkage


def _update_nearest(dist, nearest, nearest_dist, active, merged: int, removed: int) -> None:
    """Repairs each row's nearest neighbour after `removed` was merged into `merged`."""
    stale = active & ((nearest == merged) | (nearest == removed))
    stale[merged] = True
    closer = ~stale & (dist[merged] < nearest_dist)
    nearest[closer] = merged
    nearest_dist[closer] = dist[merged, closer]
    rows = np.flatnonzero(stale)
    nearest[rows] = np.argmin(dist[rows], axis=1)
    nearest_dist[rows] = dist[rows, nearest[rows]]


def cut_linkage(linkage: np.ndarray, num_clusters: int | None, distance_threshold: float | None) -> np.ndarray:
    """Flat cluster ids 0..C-1 from a linkage: at most `num_clusters`, or merges below `distance_threshold`."""
    if (num_clusters is None) == (distance_threshold is None):
        raise ValueError("give exactly one of num_clusters and distance_threshold")
    if num_clusters is not None:
        flat = hierarchy.fcluster(linkage, t=num_clusters, criterion="maxclust")
    else:
        flat = hierarchy.fcluster(linkage, t=distance_threshold, criterion="distance")
    return np.unique(flat, return_inverse=True)[1].astype(np.int64)


def kmeans_cells(
    embeddings: np.ndarray, num_centroids: int, seed: int, points_per_centroid: int = 50, iterations: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """k-means centroids [k, d] and each point's centroid [n]; empty centroids are dropped.

    Lloyd's k-means (scikit-learn, random initial centroids) runs on a uniform sample of
    `points_per_centroid * num_centroids` points; then every point is assigned to its nearest
    centroid in one pass. Cost: about two passes of O(n k d) over the pool.
    """
    from sklearn.cluster import KMeans

    points = np.asarray(embeddings, np.float32)
    rng = np.random.default_rng(seed)
    sample_size = min(len(points), points_per_centroid * num_centroids)
    sample = points[np.sort(rng.choice(len(points), sample_size, replace=False))]
    kmeans = KMeans(n_clusters=num_centroids, init="random", n_init=1, max_iter=iterations, random_state=seed).fit(
        sample
    )
    used, assignment = np.unique(kmeans.predict(points), return_inverse=True)
    return kmeans.cluster_centers_[used], assignment


def cluster_margin_clusters(
    embeddings: np.ndarray,
    num_clusters: int | None = None,
    distance_threshold: float | None = None,
    *,
    exact_max_points: int = EXACT_MAX_POINTS,
    num_centroids: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Average-linkage cluster id (0..C-1) per pool example, cut at `num_clusters` or `distance_threshold`.

    Exact for pools of at most `exact_max_points`; otherwise the k-means + weighted-linkage
    approximation of the module docstring with `num_centroids` cells (whose merge heights, and so
    the meaning of `distance_threshold`, are centroid distances).
    """
    if len(embeddings) <= exact_max_points:
        linkage = hierarchy.linkage(np.asarray(embeddings, np.float64), method="average")
        return cut_linkage(linkage, num_clusters, distance_threshold)
    if num_clusters is not None and num_clusters > num_centroids:
        raise ValueError(f"num_clusters={num_clusters} exceeds num_centroids={num_centroids}")
    centroids, assignment = kmeans_cells(embeddings, num_centroids, seed)
    weights = np.bincount(assignment, minlength=len(centroids))
    centroid_clusters = cut_linkage(weighted_average_linkage(centroids, weights), num_clusters, distance_threshold)
    return centroid_clusters[assignment]
