"""Optimizers and learning-rate schedules, configured from gin.

`adafactor` follows t5x's defaults (decay 0.8, factored second moments, update clipping 1.0,
parameter-scale multiplication); `adamw` is the usual choice for decoder-only LMs.
"""

from __future__ import annotations

import dataclasses

import gin
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A gradient transformation and the schedule it follows (for logging the learning rate)."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule


@gin.configurable
def inverse_sqrt_schedule(
    peak_learning_rate: float = 0.01, warmup_steps: int = 10_000, linear_warmup: bool = False
) -> optax.Schedule:
    """peak * sqrt(warmup / max(step, warmup)); t5x's default is peak 0.01, warmup 10k, no ramp.

    With `linear_warmup` the rate also ramps linearly from 0 over the first `warmup_steps`.
    """
    if warmup_steps <= 0:
        raise ValueError(f"inverse_sqrt_schedule.warmup_steps must be positive, got {warmup_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        decay = jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
        ramp = jnp.minimum(1.0, (step + 1.0) / warmup_steps) if linear_warmup else 1.0
        return peak_learning_rate * decay * ramp

    return schedule


@gin.configurable
def constant_schedule(learning_rate: float = 1e-3) -> optax.Schedule:
    """The same rate at every step (t5x's fine-tuning default is 1e-3 with Adafactor)."""
    return optax.constant_schedule(learning_rate)


@gin.configurable
def cosine_schedule(
    peak_learning_rate: float = 3e-4,
    warmup_steps: int = 1000,
    decay_steps: int = gin.REQUIRED,
    final_fraction: float = 0.1,
) -> optax.Schedule:
    """Linear warm-up to the peak, then cosine decay to `final_fraction` of it at `decay_steps`."""
    return optax.warmup_cosine_decay_schedule(
        0.0, peak_learning_rate, warmup_steps, decay_steps, peak_learning_rate * final_fraction
    )


@gin.configurable
def adafactor(
    learning_rate: optax.Schedule = gin.REQUIRED,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
) -> Optimizer:
    """Adafactor with t5x's defaults."""
    tx = optax.adafactor(
        learning_rate,
        min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        factored=factored,
    )
    return Optimizer(tx, learning_rate)


@gin.configurable
def adamw(
    learning_rate: optax.Schedule = gin.REQUIRED,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    max_grad_norm: float | None = 1.0,
) -> Optimizer:
    """AdamW, with optional global-norm gradient clipping first."""
    steps = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    steps.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return Optimizer(optax.chain(*steps), learning_rate)
