"""SpacTor's compute accounting: r = hybrid step / SC step, and a run's total FLOPs against a baseline."""

from __future__ import annotations

from collections.abc import Mapping

import jax

from spactor.objective import HybridObjective


def flops_ratio(hybrid: HybridObjective, batch: Mapping[str, jax.ShapeDtypeStruct]) -> float:
    """r: the train FLOPs of a hybrid step over those of a plain span-corruption step (core counter)."""
    return hybrid.train_flops(batch) / hybrid.span_corruption.train_flops(batch)


def total_flops_ratio(tau: int | None, steps: int, baseline_steps: int, r: float) -> float:
    """Total FLOPs of SpacTor(tau) run for `steps` over an SC run of `baseline_steps` on the same batches:
    (tau * r + steps - tau) / baseline_steps, with tau capped at `steps` (None: hybrid throughout)."""
    hybrid_steps = steps if tau is None else min(tau, steps)
    return (hybrid_steps * r + steps - hybrid_steps) / baseline_steps
