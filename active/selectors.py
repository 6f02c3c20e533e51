"""Active-learning selectors behind one interface: `Selector.select(pool, budget, rng) -> Selection`.

A `Pool` carries whatever a selector may look at for the n unlabelled examples (predictive
probabilities, embeddings, ...); each selector reads only the fields it needs and names a missing
one in its error. Selectors (docs/methods/active.md):

- random: uniform without replacement.
- margin / entropy / least_confidence: the `budget` most uncertain examples under one score.
- coreset: greedy k-center on embeddings (farthest point from labelled points and earlier picks).
- badge: k-means++ seeding on last-layer gradient embeddings (Ash et al. 2020).
- cluster_margin: the 10 * budget lowest-margin examples, taken round-robin over clusters, smallest
  cluster first, one random example per cluster per pass (Citovsky et al. 2021).
- iwes_dis / iwes_ent: IWeS (Citovsky et al. 2023): each pool example, visited in random order, is
  kept with its own probability p(x) (one Bernoulli draw) until `budget` are kept; weights 1/p(x),
  capped. p is the entropy-based disagreement of two models at the true label (iwes_dis, subset
  selection: needs labels) or one model's normalised entropy (iwes_ent, active learning).
- iwes_systematic: not the paper's sampler: TV disagreement or entropy rescaled to sum to the budget,
  mixed with uniform mass, exactly `budget` drawn by systematic sampling; weights 1/p capped.
- highest_score: the `budget` highest values of a per-example score computed elsewhere
  (`Pool.scores`, e.g. SALT_DS's teacher-loss medians).

Distances to many points are computed as `|x|^2 - 2 x.c + |c|^2`, one matrix-vector product per new
centre and blocked matrix products for the labelled set, so a 1M x 64 float32 pool needs only the
pool itself plus a few n-vectors.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
from scipy.special import xlogy

from active.validation import SelectionInputError, check_known, check_label_range, check_labels, check_pool

# Number of float32 entries in one block of a blocked distance computation (64 MiB).
_BLOCK_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True)
class Pool:
    """What selectors may look at for the unlabelled pool (n examples). Fields a selector does not need may be None."""

    probabilities: np.ndarray | None = None  # [n, classes] predictive probabilities of the current model
    embeddings: np.ndarray | None = None  # [n, d] e.g. penultimate-layer features
    gradient_embeddings: np.ndarray | None = None  # [n, g] BADGE's last-layer gradient embeddings
    labelled_embeddings: np.ndarray | None = None  # [m, d] already-labelled points (coreset centres)
    second_probabilities: np.ndarray | None = None  # [n, classes] a second model's probabilities (IWeS disagreement)
    labels: np.ndarray | None = None  # [n] true classes, where known at selection time (iwes_dis: subset selection)
    cluster_ids: np.ndarray | None = None  # [n] precomputed clustering (Cluster-Margin)
    scores: np.ndarray | None = None  # [n] one score per example, higher preferred (highest_score)

    def __post_init__(self):
        sizes = {name: len(value) for name, value in self._per_example_fields().items()}
        if len(set(sizes.values())) > 1:
            raise SelectionInputError(f"Pool fields disagree on the number of examples: {sizes}")

    def _per_example_fields(self) -> dict[str, np.ndarray]:
        names = (
            "probabilities",
            "embeddings",
            "gradient_embeddings",
            "second_probabilities",
            "labels",
            "cluster_ids",
            "scores",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def size(self) -> int:
        """Number of pool examples (n)."""
        fields = self._per_example_fields()
        if not fields:
            raise SelectionInputError("Pool has no per-example field set; its size is unknown")
        return len(next(iter(fields.values())))

    def require(self, field: str, selector: str) -> np.ndarray:
        """The named field, or a SelectionInputError naming the selector that needs it."""
        value = getattr(self, field)
        if value is None:
            raise SelectionInputError(f"selector {selector!r} needs Pool.{field}, which is None")
        return value


@dataclasses.dataclass(frozen=True)
class Selection:
    """Chosen pool indices and, for importance-sampling selectors, their training weights."""

    indices: np.ndarray  # [budget] distinct pool indices, int64 (IWeS's Bernoulli stream: at most budget)
    weights: np.ndarray | None = None  # importance weights for weighted training (IWeS), capped


class Selector(Protocol):
    """Chooses `budget` distinct pool examples (iwes_dis and iwes_ent: at most `budget`).

    An implementation calls `active.validation.check_pool(pool, budget)` first: it refuses an empty
    pool, a budget outside [0, pool size] and NaN or Inf in any Pool field.
    """

    name: str

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection: ...


# ----------------------------------------------------------------------------------------------
# Uncertainty scores (higher = more uncertain, except `margins`).


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 class probability per example (small = near the decision boundary)."""
    top_two = np.partition(probabilities, -2, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]


def negative_margins(probabilities: np.ndarray) -> np.ndarray:
    """Minus the margin, so that larger means more uncertain."""
    return -margins(probabilities)


def entropies(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row."""
    p = np.asarray(probabilities, np.float64)
    return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=1)


def least_confidences(probabilities: np.ndarray) -> np.ndarray:
    """One minus the top class probability."""
    return 1.0 - np.max(probabilities, axis=1)


def lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest scores, ordered by (score, index): of the scores equal at the cut, the
    lower indices are taken."""
    if k == 0:
        return np.zeros(0, np.int64)
    part = np.arange(len(scores))
    if k < len(scores):
        part = np.flatnonzero(scores <= scores[np.argpartition(scores, k - 1)[k - 1]])
    return part[np.lexsort((part, scores[part]))][:k].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class RandomSelector:
    """Uniform sampling without replacement."""

    name: str = "random"

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        check_pool(pool, budget)
        return Selection(np.sort(rng.choice(pool.size, budget, replace=False)).astype(np.int64))


@dataclasses.dataclass(frozen=True)
class UncertaintySelector:
    """Takes the `budget` examples with the highest `uncertainty(probabilities)`."""

    name: str
    uncertainty: Callable[[np.ndarray], np.ndarray]

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        check_pool(pool, budget)
        probabilities = pool.require("probabilities", self.name)
        return Selection(lowest(-self.uncertainty(probabilities), budget))


@dataclasses.dataclass(frozen=True)
class HighestScoreSelector:
    """Takes the `budget` examples with the highest `Pool.scores` (of equal scores, the lower indices)."""

    name: str = "highest_score"

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        check_pool(pool, budget)
        scores = np.asarray(pool.require("scores", self.name), np.float64)
        if scores.ndim != 1:
            raise SelectionInputError(f"selector {self.name!r} needs Pool.scores of shape [n], got {scores.shape}")
        return Selection(lowest(-scores, budget))


# ----------------------------------------------------------------------------------------------
# Distance-based selectors: k-center coreset and BADGE.


def min_squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance from each point to its nearest centre, in blocks of ~64 MiB."""
    best = np.full(len(points), np.inf, np.float32)
    point_norms = np.einsum("ij,ij->i", points, points)
    centre_block = max(1, min(len(centres), 4096))
    point_block = max(1, _BLOCK_ELEMENTS // centre_block)
    for c0 in range(0, len(centres), centre_block):
        block = centres[c0 : c0 + centre_block]
        block_norms = np.einsum("ij,ij->i", block, block)
        for p0 in range(0, len(points), point_block):
            sq = point_norms[p0 : p0 + point_block, None] - 2.0 * (points[p0 : p0 + point_block] @ block.T)
            sq += block_norms[None, :]
            np.minimum(best[p0 : p0 + point_block], sq.min(axis=1), out=best[p0 : p0 + point_block])
    return np.maximum(best, 0.0)


class _NearestCentreDistances:
    """Squared distance from every point to its nearest chosen centre, updated one centre at a time."""

    def __init__(self, points: np.ndarray, initial: np.ndarray):
        self.points = points
        self.norms = np.einsum("ij,ij->i", points, points)
        self.min_sq = initial.astype(np.float32, copy=True)
        self._scratch = np.empty(len(points), np.float32)

    def add_centre(self, index: int) -> None:
        """Lowers each point's distance by the new centre `index` (one matrix-vector product)."""
        np.matmul(self.points, self.points[index], out=self._scratch)
        self._scratch *= -2.0
        self._scratch += self.norms
        self._scratch += self.norms[index]
        np.minimum(self.min_sq, self._scratch, out=self.min_sq)
        self.min_sq[index] = -1.0  # chosen: never the farthest, never sampled again


def _initial_distances(points: np.ndarray, labelled: np.ndarray | None) -> np.ndarray:
    if labelled is None or len(labelled) == 0:
        return np.full(len(points), np.inf, np.float32)
    return min_squared_distances(points, np.asarray(labelled, points.dtype))


def kcenter_greedy(
    points: np.ndarray, budget: int, labelled: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """Greedy k-center: repeatedly takes the point farthest from the labelled points and earlier picks.

    With no labelled points the first pick is uniform. The greedy radius is within 2x of the optimal
    k-center radius (Gonzalez 1985). Cost: O(n d) per pick.
    """
    state = _NearestCentreDistances(points, _initial_distances(points, labelled))
    chosen = np.empty(budget, np.int64)
    for t in range(budget):
        farthest = int(np.argmax(state.min_sq))
        chosen[t] = rng.integers(len(points)) if np.isinf(state.min_sq[farthest]) else farthest
        state.add_centre(int(chosen[t]))
    return chosen


class _BlockedNearestCentreDistances:
    """`_NearestCentreDistances` over points stored block by block (k-means cells), skipping far blocks.

    A new centre c cannot lower the distance of any point x of a block with centroid m and radius
    rho (max |x - m|) if |c - m| - rho > the block's largest nearest-centre distance, by the triangle
    inequality; such blocks are not visited. Each block keeps its farthest point.
    """

    def __init__(self, points: np.ndarray, initial: np.ndarray, num_blocks: int, seed: int):
        from active.clustering import kmeans_cells

        _, cell = kmeans_cells(points, min(num_blocks, len(points)), seed, iterations=5)
        self.order = np.argsort(cell, kind="stable")
        self.points = points[self.order]
        self.norms = np.einsum("ij,ij->i", self.points, self.points)
        self.min_sq = initial[self.order].astype(np.float32)
        ends = np.cumsum(np.bincount(cell))
        self.bounds = np.stack([ends - np.bincount(cell), ends], axis=1)
        self.centroids = np.stack([self.points[s:e].mean(axis=0) for s, e in self.bounds])
        self.radii = np.array(
            [np.linalg.norm(self.points[s:e] - m, axis=1).max() for (s, e), m in zip(self.bounds, self.centroids)]
        )
        self.block_max = np.empty(len(self.bounds), np.float32)
        self.block_arg = np.empty(len(self.bounds), np.int64)
        for block in range(len(self.bounds)):
            self._refresh(block)

    def _refresh(self, block: int) -> None:
        start, end = self.bounds[block]
        self.block_arg[block] = start + int(np.argmax(self.min_sq[start:end]))
        self.block_max[block] = self.min_sq[self.block_arg[block]]

    def farthest(self) -> tuple[int, float]:
        """Stored position of the point farthest from every centre, and its squared distance."""
        block = int(np.argmax(self.block_max))
        return int(self.block_arg[block]), float(self.block_max[block])

    def add_centre(self, position: int) -> None:
        """Lowers distances by the point at stored `position`, visiting only blocks it can reach."""
        centre = self.points[position]
        self.min_sq[position] = -1.0
        reach = np.sqrt(np.maximum(self.block_max, 0.0)) * (1 + 1e-4) + 1e-6  # slack for float32 rounding
        gap = np.linalg.norm(self.centroids - centre, axis=1) - self.radii
        for block in np.flatnonzero(gap <= reach):
            start, end = self.bounds[block]
            sq = self.norms[start:end] - 2.0 * (self.points[start:end] @ centre) + self.norms[position]
            np.minimum(self.min_sq[start:end], sq, out=self.min_sq[start:end])
            self._refresh(block)


def kcenter_greedy_blocked(
    points: np.ndarray, budget: int, labelled: np.ndarray | None, rng: np.random.Generator, num_blocks: int
) -> np.ndarray:
    """`kcenter_greedy` with the pool split into `num_blocks` k-means cells; far cells are skipped.

    Same picks as `kcenter_greedy` (up to float32 rounding ties); far faster when the pool is
    clustered, since a new centre only updates the cells it can reach.
    """
    seed = int(rng.spawn(1)[0].integers(2**31))  # leaves `rng`'s own stream (the first pick) untouched
    state = _BlockedNearestCentreDistances(points, _initial_distances(points, labelled), num_blocks, seed)
    chosen = np.empty(budget, np.int64)
    for t in range(budget):
        position, value = state.farthest()
        if np.isinf(value):  # no centre yet: a uniform first pick, as in `kcenter_greedy`
            position = int(np.flatnonzero(state.order == rng.integers(len(points)))[0])
        state.add_centre(position)
        chosen[t] = state.order[position]
    return chosen


@functools.cache
def _kcenter_jax_fn():
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnames="budget")
    def greedy(points, min_sq, budget):
        norms = jnp.einsum("ij,ij->i", points, points)

        def body(t, carry):
            min_sq, chosen = carry
            index = jnp.argmax(min_sq)
            sq = norms - 2.0 * (points @ points[index]) + norms[index]
            return jnp.minimum(min_sq, sq).at[index].set(-1.0), chosen.at[t].set(index)

        return jax.lax.fori_loop(0, budget, body, (min_sq, jnp.zeros(budget, jnp.int32)))[1]

    return greedy


def kcenter_greedy_jax(
    points: np.ndarray, budget: int, labelled: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """`kcenter_greedy` with the whole greedy loop compiled by JAX (one fused pass per pick)."""
    initial = _initial_distances(points, labelled)
    if np.isinf(initial).all() and budget > 0:
        initial[rng.integers(len(points))] = 1.0  # uniform first pick, then farthest-point
    initial = np.minimum(initial, np.finfo(np.float32).max)
    return np.asarray(_kcenter_jax_fn()(points, initial, budget), np.int64)


@dataclasses.dataclass(frozen=True)
class CoresetSelector:
    """k-center greedy coreset (Sener & Savarese 2018) on `Pool.embeddings`.

    backend: "numpy" (BLAS matrix-vector products) or "jax" (the greedy loop jitted; fastest on
    an accelerator). num_blocks > 0 (numpy only): split the pool into that many k-means cells and
    skip the cells a new centre cannot reach (`kcenter_greedy_blocked`; same picks).
    """

    name: str = "coreset"
    backend: str = "numpy"
    num_blocks: int = 0

    def __post_init__(self):
        if self.backend not in ("numpy", "jax"):
            raise SelectionInputError(f"CoresetSelector.backend must be 'numpy' or 'jax', got {self.backend!r}")
        if self.num_blocks and self.backend != "numpy":
            raise SelectionInputError("CoresetSelector.num_blocks needs backend='numpy'")

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        check_pool(pool, budget)
        points = np.ascontiguousarray(pool.require("embeddings", self.name), np.float32)
        labelled = pool.labelled_embeddings
        if self.num_blocks:
            return Selection(kcenter_greedy_blocked(points, budget, labelled, rng, self.num_blocks))
        greedy = kcenter_greedy_jax if self.backend == "jax" else kcenter_greedy
        return Selection(greedy(points, budget, labelled, rng))


def gradient_embeddings(probabilities: np.ndarray, features: np.ndarray) -> np.ndarray:
    """BADGE's last-layer gradient embeddings: (p - onehot(argmax p)) outer features, flattened.

    Row i is the gradient of the cross-entropy with respect to the last linear layer's weights
    ([classes, d], row-major) when example i is labelled with its predicted class.
    """
    residual = np.asarray(probabilities, np.float32).copy()
    residual[np.arange(len(residual)), np.argmax(probabilities, axis=1)] -= 1.0
    outer = residual[:, :, None] * np.asarray(features, np.float32)[:, None, :]
    return outer.reshape(len(residual), -1)


def kmeans_plus_plus_seeds(points: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: the largest-norm point first, then points drawn with probability ~ D^2."""
    if budget == 0:
        return np.zeros(0, np.int64)
    state = _NearestCentreDistances(points, np.full(len(points), np.inf, np.float32))
    chosen = np.empty(budget, np.int64)
    chosen[0] = np.argmax(state.norms)
    state.add_centre(int(chosen[0]))
    for t in range(1, budget):
        weights = np.maximum(state.min_sq, 0.0).astype(np.float64)
        if weights.sum() <= 0:  # every remaining point coincides with a centre
            weights = (state.min_sq >= 0).astype(np.float64)
        chosen[t] = rng.choice(len(points), p=weights / weights.sum())
        state.add_centre(int(chosen[t]))
    return chosen


@dataclasses.dataclass(frozen=True)
class BadgeSelector:
    """BADGE (Ash et al. 2020): k-means++ seeding on gradient embeddings.

    Reads `Pool.gradient_embeddings`, or computes them from `probabilities` and `embeddings`.
    """

    name: str = "badge"

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        check_pool(pool, budget)
        grads = pool.gradient_embeddings
        if grads is None:
            grads = gradient_embeddings(pool.require("probabilities", self.name), pool.require("embeddings", self.name))
        return Selection(kmeans_plus_plus_seeds(np.ascontiguousarray(grads, np.float32), budget, rng))


# ----------------------------------------------------------------------------------------------
# Cluster-Margin.


def round_robin_by_cluster(
    candidates: np.ndarray, clusters: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """Takes `budget` candidates: passes over clusters smallest first, one random member per cluster per pass.

    Clusters of equal size are visited in random order. Pass r takes the r-th member of a random
    permutation of each cluster that still has one.
    """
    shuffle = rng.permutation(len(candidates))
    by_cluster = shuffle[np.argsort(clusters[shuffle], kind="stable")]
    sorted_clusters = clusters[by_cluster]
    _, starts, counts = np.unique(sorted_clusters, return_index=True, return_counts=True)
    rank_in_cluster = np.arange(len(by_cluster)) - np.repeat(starts, counts)
    visit_order = np.lexsort((rng.random(len(counts)), counts))
    visit_position = np.empty(len(counts), np.int64)
    visit_position[visit_order] = np.arange(len(counts))
    key = rank_in_cluster * len(counts) + np.repeat(visit_position, counts)
    return candidates[by_cluster[lowest(key, budget)]].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ClusterMarginSelector:
    """Cluster-Margin (Citovsky et al. 2021) over `Pool.cluster_ids`.

    Takes the `margin_multiplier * budget` lowest-margin examples and draws `budget` of them
    round-robin over their clusters (smallest first). Cluster the pool once with
    `active.clustering.cluster_margin_clusters` and pass `cluster_ids`; without them the selector
    clusters `Pool.embeddings` on every call with `num_clusters` or `distance_threshold`.
    """

    name: str = "cluster_margin"
    margin_multiplier: float = 10.0
    num_clusters: int | None = None
    distance_threshold: float | None = None

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        check_pool(pool, budget)
        probabilities = pool.require("probabilities", self.name)
        clusters = pool.cluster_ids if pool.cluster_ids is not None else self._cluster(pool)
        num_candidates = min(len(probabilities), math.ceil(self.margin_multiplier * budget))
        candidates = lowest(margins(probabilities), num_candidates)
        return Selection(round_robin_by_cluster(candidates, np.asarray(clusters)[candidates], budget, rng))

    def _cluster(self, pool: Pool) -> np.ndarray:
        from active.clustering import cluster_margin_clusters

        if self.num_clusters is None and self.distance_threshold is None:
            raise SelectionInputError(
                "cluster_margin needs Pool.cluster_ids, or num_clusters / distance_threshold to cluster Pool.embeddings"
            )
        return cluster_margin_clusters(
            pool.require("embeddings", self.name), self.num_clusters, self.distance_threshold
        )


# ----------------------------------------------------------------------------------------------
# IWeS.


def normalised_entropies(probabilities: np.ndarray) -> np.ndarray:
    """IWeS-ent's sampling probability: the model's entropy in bits over log2(classes), in [0, 1]."""
    classes = probabilities.shape[1]
    if classes < 2:
        raise SelectionInputError(f"iwes_ent needs Pool.probabilities over at least 2 classes, got {classes}")
    return np.clip(entropies(probabilities) / np.log(classes), 0.0, 1.0)


def entropy_disagreements(
    probabilities: np.ndarray, second_probabilities: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """IWeS-dis's sampling probability: `|f_y log2 f_y - g_y log2 g_y|` at each example's true label y,
    for two models' probabilities f and g (0 log 0 = 0); in [0, 1 / (e ln 2)] = [0, 0.531]."""
    rows = np.arange(len(labels))
    first = np.asarray(probabilities, np.float64)[rows, labels]
    second = np.asarray(second_probabilities, np.float64)[rows, labels]
    return np.abs(xlogy(first, first) - xlogy(second, second)) / np.log(2.0)


def bernoulli_stream(probabilities: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Visits every example once in uniformly random order and keeps each with its own probability (one
    Bernoulli draw each) until `budget` are kept; the kept indices, sorted (fewer when the pool ends first)."""
    order = rng.permutation(len(probabilities))
    kept = order[rng.random(len(order)) < probabilities[order]]
    return np.sort(kept[:budget]).astype(np.int64)


def _iwes_ent_probabilities(pool: Pool, selector: str) -> np.ndarray:
    return normalised_entropies(pool.require("probabilities", selector))


def _iwes_dis_probabilities(pool: Pool, selector: str) -> np.ndarray:
    probabilities = pool.require("probabilities", selector)
    second = pool.require("second_probabilities", selector)
    if second.shape != probabilities.shape:
        raise SelectionInputError(
            f"selector {selector!r} needs Pool.second_probabilities of shape "
            f"{probabilities.shape} (as Pool.probabilities), got {second.shape}"
        )
    labels = check_labels("Pool.labels", pool.require("labels", selector), pool.size, "the pool")
    check_label_range("Pool.labels", labels, probabilities.shape[1])
    return entropy_disagreements(probabilities, second, labels)


@dataclasses.dataclass(frozen=True)
class IWeSSelector:
    """IWeS (Citovsky et al. 2023, arXiv 2301.12052): importance sampling, one Bernoulli draw per example.

    Sampling probabilities, the paper's two (as its method section is recalled: the formulas below
    were not checked against the text, which was not at hand when they were written):

    - iwes_dis, "entropy-based disagreement" (subset selection, labels known at selection time):
      `p(x, y) = |f(x)_y log2 f(x)_y - g(x)_y log2 g(x)_y|` at the true label y, for two models f, g
      trained on the labelled data from different random initialisations (`Pool.probabilities`,
      `Pool.second_probabilities`, `Pool.labels`); in [0, 1 / (e ln 2)] = [0, 0.531].
    - iwes_ent, "entropy only" (active learning: no label needed), one model f:
      p(x) = -sum_y f(x)_y log2 f(x)_y / log2(classes), in [0, 1].

    Neither is rescaled to a budget or mixed with uniform mass.

    Batches: examples are visited one at a time in uniformly random order, each kept when its own
    Bernoulli(p(x)) draw succeeds, until `budget` are kept; weight 1/p(x), capped at `max_weight`
    (the paper's weight capping). Left open by the paper, chosen here: one pass per call, so fewer
    than `budget` come back when the pass ends first (the next round's models score the rest); the
    cap bounds the weight, not p, so a capped weight understates an example with p < 1/max_weight
    (max_weight=inf gives the unbiased estimator); the default cap of 10 is ours.
    """

    name: str
    sampling_probabilities: Callable[[Pool, str], np.ndarray]
    max_weight: float = 10.0

    def __post_init__(self):
        if not self.max_weight >= 1.0:
            raise SelectionInputError(f"{self.name} max_weight must be >= 1 (1/p is), got {self.max_weight!r}")

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        check_pool(pool, budget)
        probs = self.sampling_probabilities(pool, self.name)
        indices = bernoulli_stream(probs, budget, rng)
        return Selection(indices, np.minimum(1.0 / probs[indices], self.max_weight))


def total_variations(probabilities: np.ndarray, second_probabilities: np.ndarray) -> np.ndarray:
    """Total-variation distance between two models' predictive distributions, in [0, 1]."""
    return 0.5 * np.abs(np.asarray(probabilities, np.float64) - second_probabilities).sum(axis=1)


def inclusion_probabilities(scores: np.ndarray, budget: int, uniform_mix: float) -> np.ndarray:
    """Inclusion probabilities summing to `budget`: proportional to a score share, capped at 1.

    share_i = (1 - uniform_mix) * score_i / sum(scores) + uniform_mix / n; probabilities above 1
    are set to 1 and the rest of the budget is spread over the others by share (uniformly where
    every remaining share is 0).
    """
    n = len(scores)
    scores = np.maximum(np.asarray(scores, np.float64), 0.0)
    share = scores / scores.sum() if scores.sum() > 0 else np.full(n, 1.0 / n)
    share = (1.0 - uniform_mix) * share + uniform_mix / n
    probs = np.zeros(n)
    capped = np.zeros(n, bool)
    while True:  # cap at 1 and spread the excess over the rest, until nothing exceeds 1
        if share[~capped].sum() == 0:  # too few positive scores for the budget: the rest uniform
            share = np.where(capped, share, 1.0)
        probs[~capped] = (budget - capped.sum()) * share[~capped] / share[~capped].sum()
        probs[capped] = 1.0
        over = probs > 1.0
        if not over.any():
            return probs
        capped |= over


def systematic_sample(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(sum p) distinct indices; index i is included with probability p_i (Madow's method).

    Units are put in random order and laid end to end as intervals of length p_i; one uniform
    offset u selects the units containing u, u + 1, u + 2, ...
    """
    size = int(round(probabilities.sum()))
    order = rng.permutation(len(probabilities))
    ends = np.cumsum(probabilities[order])
    ends *= size / ends[-1]
    hits = np.searchsorted(ends, rng.random() + np.arange(size), side="right")
    return np.sort(order[hits]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class IWeSSystematicSelector:
    """A budget-exact importance sampler in IWeS's spirit; not the paper's sampler (see `IWeSSelector`).

    Scores: total variation between two models when `Pool.second_probabilities` is set, otherwise the
    current model's entropy. Scores are rescaled so the inclusion probabilities sum to `budget`, a
    `uniform_mix` share of the mass is spread uniformly so every example has p > 0, and exactly
    `budget` examples are drawn by systematic sampling; example i is included with probability p_i,
    so 1/p_i-weighted sums are unbiased (before the cap at `max_weight`).
    """

    name: str = "iwes_systematic"
    max_weight: float = 10.0
    uniform_mix: float = 0.1

    def select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        check_pool(pool, budget)
        probabilities = pool.require("probabilities", self.name)
        if pool.second_probabilities is not None:
            scores = total_variations(probabilities, pool.second_probabilities)
        else:
            scores = entropies(probabilities)
        probs = inclusion_probabilities(scores, budget, self.uniform_mix)
        indices = systematic_sample(probs, rng) if budget else np.zeros(0, np.int64)
        return Selection(indices, np.minimum(1.0 / probs[indices], self.max_weight))


# ----------------------------------------------------------------------------------------------
# Registry.

SELECTORS: dict[str, Callable[..., Selector]] = {
    "random": RandomSelector,
    "margin": functools.partial(UncertaintySelector, "margin", negative_margins),
    "entropy": functools.partial(UncertaintySelector, "entropy", entropies),
    "least_confidence": functools.partial(UncertaintySelector, "least_confidence", least_confidences),
    "coreset": CoresetSelector,
    "badge": BadgeSelector,
    "cluster_margin": ClusterMarginSelector,
    "iwes_dis": functools.partial(IWeSSelector, "iwes_dis", _iwes_dis_probabilities),
    "iwes_ent": functools.partial(IWeSSelector, "iwes_ent", _iwes_ent_probabilities),
    "iwes_systematic": IWeSSystematicSelector,
    "highest_score": HighestScoreSelector,
}


def make_selector(name: str, **kwargs) -> Selector:
    """The selector registered under `name`, built with `kwargs`."""
    check_known("selector", [name], SELECTORS)
    return SELECTORS[name](**kwargs)
