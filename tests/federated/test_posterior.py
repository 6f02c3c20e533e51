"""federated.posterior: the O(n^2 d) recursion against an explicit d x d solve in float64, and its limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from federated import fedpa_delta, shrinkage_weight


def explicit_delta(samples: np.ndarray, x: np.ndarray, rho: float) -> np.ndarray:
    """S_hat^{-1} (x - mean) with S_hat = r I + (1 - r) np.cov(samples), solved densely in float64."""
    n, d = samples.shape
    r = 1.0 / (1.0 + (n - 1) * rho)
    covariance = np.cov(samples, rowvar=False) if n > 1 else np.zeros((d, d))
    return np.linalg.solve(r * np.eye(d) + (1 - r) * covariance, x - samples.mean(axis=0))


@pytest.mark.parametrize("n", [1, 2, 7, 12])
@pytest.mark.parametrize("rho", [0.0, 0.01, 0.5, 20.0])
def test_recursion_equals_the_dense_solve_in_float64(n, rho):
    rng = np.random.default_rng(10 * n + int(rho * 100))
    d = 5  # n = 7 and 12 exceed d (S full rank), n = 2 does not
    samples = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d) + rng.normal(size=d)
    x = rng.normal(size=d)
    with jax.enable_x64(True):
        delta = fedpa_delta(jnp.asarray(samples), jnp.asarray(x), rho)
        assert delta.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(delta), explicit_delta(samples, x, rho), rtol=1e-10, atol=1e-12)


def test_recursion_is_jittable_and_vmappable_over_clients():
    rng = np.random.default_rng(0)
    samples, x = rng.normal(size=(3, 6, 4)), rng.normal(size=4)
    with jax.enable_x64(True):
        batched = jax.jit(jax.vmap(fedpa_delta, in_axes=(0, None, None)))(jnp.asarray(samples), jnp.asarray(x), 0.3)
        for client in range(3):
            np.testing.assert_allclose(np.asarray(batched[client]), explicit_delta(samples[client], x, 0.3), rtol=1e-10)


def test_identity_limits_rho_zero_or_one_sample_give_x_minus_the_mean():
    """r = 1 / (1 + (n - 1) rho) is 1 (S_hat = I) exactly when rho = 0 or n = 1."""
    rng = np.random.default_rng(1)
    samples, x = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    assert shrinkage_weight(6, 0.0) == 1.0 and shrinkage_weight(1, 5.0) == 1.0 and shrinkage_weight(6, 0.2) == 0.5
    np.testing.assert_allclose(fedpa_delta(jnp.asarray(samples), jnp.asarray(x), 0.0), x - samples.mean(0), rtol=1e-6)
    np.testing.assert_allclose(fedpa_delta(jnp.asarray(samples[:1]), jnp.asarray(x), 5.0), x - samples[0], rtol=1e-6)
