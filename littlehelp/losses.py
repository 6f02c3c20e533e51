"""Token-level losses: softmax cross-entropy with z-loss, returned as sums so callers can normalise."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TokenLossSums:
    """Weighted sums over the tokens of a batch (divide by `weight` for means)."""

    cross_entropy: jax.Array
    z_loss: jax.Array
    correct: jax.Array
    weight: jax.Array


def cross_entropy_with_z_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0
) -> TokenLossSums:
    """Softmax cross-entropy of integer `targets` under `logits` (computed in float32).

    z-loss adds `z_loss * log(Z)^2` per token (PaLM / t5x), which keeps the softmax normaliser near 1.
    The z-loss term is only traced when `z_loss` is non-zero.

    Args:
      logits: [..., vocab] unnormalised scores.
      targets: [...] integer token ids.
      weights: [...] per-token loss weights (0 for padding).
      z_loss: coefficient of the log-normaliser penalty.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    cross_entropy = jnp.sum((log_z - target_logit) * weights)
    z_term = jnp.sum(z_loss * jnp.square(log_z) * weights) if z_loss else jnp.zeros((), jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
    return TokenLossSums(cross_entropy, z_term, correct, jnp.sum(weights))
