"""Active covering (Jiang & Rostamizadeh 2021): find all positives of a pool with the fewest queries.

This is a different loop from batch selection: labels arrive one query at a time from an `oracle`
(indices -> bool array, True for a positive), only positive labels steer the search, and the cost
is the number of queries spent before every positive is found.

- `offline_covering`: label a uniform random sample, estimate the positive support as the union of
  balls of `radius` around the labelled positives, then query every unlabelled point inside it
  (nearest first).
- `explore_then_commit`: label a uniform random sample (explore), then repeatedly query the
  unlabelled point nearest to any labelled positive (commit) until `budget` queries are spent;
  while no positive is known it keeps querying uniformly.

Both return a `CoveringResult`; `CoveringResult.queries_to_find(k)` is the number of queries
made when the k-th positive was found (k = the pool's positive count gives the covering cost).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from active.selectors import min_squared_distances

Oracle = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class CoveringResult:
    """Queried pool indices in query order and the oracle's answer for each."""

    queried: np.ndarray  # [queries] int64, distinct
    labels: np.ndarray  # [queries] bool, True for a positive

    @property
    def positives(self) -> np.ndarray:
        """Indices of the positives found, in the order found."""
        return self.queried[self.labels]

    def queries_to_find(self, num_positives: int) -> int | None:
        """Queries made when the `num_positives`-th positive was found; None if it never was."""
        found_at = np.flatnonzero(self.labels)
        if num_positives == 0:
            return 0
        return int(found_at[num_positives - 1]) + 1 if len(found_at) >= num_positives else None


def _query(oracle: Oracle, indices: np.ndarray) -> np.ndarray:
    labels = np.asarray(oracle(indices), bool)
    if labels.shape != indices.shape:
        raise ValueError(f"oracle returned shape {labels.shape} for {indices.shape} queries")
    return labels


def offline_covering(
    points: np.ndarray, oracle: Oracle, sample_size: int, radius: float, rng: np.random.Generator
) -> CoveringResult:
    """Uniform sample of `sample_size`, then every other point within `radius` of a sampled positive."""
    points = np.ascontiguousarray(points, np.float32)
    sample = rng.choice(len(points), sample_size, replace=False).astype(np.int64)
    sample_labels = _query(oracle, sample)
    rest = np.setdiff1d(np.arange(len(points)), sample)
    positives = points[sample[sample_labels]]
    if len(positives) == 0:
        return CoveringResult(sample, sample_labels)
    sq = min_squared_distances(points[rest], positives)
    inside = rest[sq <= radius**2]
    inside = inside[np.argsort(sq[sq <= radius**2], kind="stable")]
    return CoveringResult(np.concatenate([sample, inside]), np.concatenate([sample_labels, _query(oracle, inside)]))


def explore_then_commit(
    points: np.ndarray, oracle: Oracle, explore_size: int, budget: int, rng: np.random.Generator
) -> CoveringResult:
    """`explore_size` uniform queries, then nearest-to-a-known-positive queries up to `budget` in all."""
    if not 0 <= explore_size <= budget <= len(points):
        raise ValueError(f"need 0 <= explore_size ({explore_size}) <= budget ({budget}) <= pool size ({len(points)})")
    points = np.ascontiguousarray(points, np.float32)
    norms = np.einsum("ij,ij->i", points, points)
    queried = list(rng.choice(len(points), explore_size, replace=False))
    labels = list(_query(oracle, np.asarray(queried, np.int64)))
    nearest_sq = np.full(len(points), np.inf, np.float32)
    for index, positive in zip(queried, labels):
        if positive:
            _lower_distances(points, norms, int(index), nearest_sq)
    unqueried = np.ones(len(points), bool)
    unqueried[queried] = False
    while len(queried) < budget:
        index = _next_query(nearest_sq, unqueried, rng)
        unqueried[index] = False
        queried.append(index)
        labels.append(bool(_query(oracle, np.array([index], np.int64))[0]))
        if labels[-1]:
            _lower_distances(points, norms, index, nearest_sq)
    return CoveringResult(np.asarray(queried, np.int64), np.asarray(labels, bool))


def _lower_distances(points: np.ndarray, norms: np.ndarray, positive: int, nearest_sq: np.ndarray) -> None:
    sq = norms - 2.0 * (points @ points[positive]) + norms[positive]
    np.minimum(nearest_sq, sq, out=nearest_sq)


def _next_query(nearest_sq: np.ndarray, unqueried: np.ndarray, rng: np.random.Generator) -> int:
    """The unqueried point nearest to a known positive, or a uniform one while none is known."""
    candidates = np.where(unqueried, nearest_sq, np.inf)
    index = int(np.argmin(candidates))
    if np.isinf(candidates[index]):
        return int(rng.choice(np.flatnonzero(unqueried)))
    return index
