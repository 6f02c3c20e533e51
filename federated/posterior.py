"""FedPA's client delta S_hat^{-1} (x - mean) from n posterior samples in O(n^2 d), without a d x d matrix.

With samples x_1..x_n (rows), running means mu_t and scatter matrices M_t = sum_i (x_i - mu_t)(x_i - mu_t)^T,
the shrinkage covariance S_hat = r I + (1 - r) M_n / (n - 1), r = 1 / (1 + (n - 1) rho), equals
r (I + rho M_n). Welford's update M_t = M_{t-1} + (t - 1) / t u_t u_t^T, u_t = x_t - mu_{t-1}, makes
A_t = I + rho M_t a chain of rank-one updates with weight g_t = rho (t - 1) / t, so Sherman-Morrison gives

    A_t^{-1} = I - sum_{k <= t} c_k v_k v_k^T,  v_k = A_{k-1}^{-1} u_k,  c_k = g_k / (1 + g_k u_k.v_k),

and the delta d_t = A_t^{-1} (x - mu_t) follows from d_{t-1} (with mu_t = mu_{t-1} + u_t / t):

    d_t = d_{t-1} - v_t / t * (1 + g_t (t u_t.d_{t-1} - u_t.v_t) / (1 + g_t u_t.v_t)),  d_1 = x - x_1.

Step t costs O(t d) (v_t from the stored v_k), n steps O(n^2 d); the delta is d_n / r.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def shrinkage_weight(num_samples: int, rho: float | jax.Array) -> float | jax.Array:
    """r = 1 / (1 + (n - 1) rho): the identity's weight in S_hat (1 when rho = 0 or n = 1)."""
    return 1.0 / (1.0 + (num_samples - 1) * rho)


def fedpa_delta(samples: jax.Array, x_server: jax.Array, rho: float | jax.Array) -> jax.Array:
    """S_hat^{-1} (x_server - mean(samples)) for samples [n, d] by the rank-one recursion (module docstring)."""
    n = samples.shape[0]
    directions = jnp.zeros_like(samples)  # row k: v_k (rows not yet reached stay zero)
    weights = jnp.zeros((n,), samples.dtype)  # c_k

    def step(carry, index):
        delta, mean, directions, weights = carry
        t = (index + 1).astype(samples.dtype)  # the sample's 1-based position
        u = samples[index] - mean
        v = u - directions.T @ (weights * (directions @ u))
        gain = rho * (t - 1) / t
        u_v, u_delta = u @ v, u @ delta
        delta = delta - v / t * (1 + gain * (t * u_delta - u_v) / (1 + gain * u_v))
        directions, weights = directions.at[index].set(v), weights.at[index].set(gain / (1 + gain * u_v))
        return (delta, mean + u / t, directions, weights), None

    start = (x_server - samples[0], samples[0], directions, weights)
    (delta, _, _, _), _ = jax.lax.scan(step, start, jnp.arange(1, n))
    return delta / shrinkage_weight(n, rho)
