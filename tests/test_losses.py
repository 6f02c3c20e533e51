"""Cross-entropy with z-loss against a float64 numpy reference."""

import jax.numpy as jnp
import numpy as np

from littlehelp import losses


def test_cross_entropy_and_z_loss_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float64)
    sums = losses.cross_entropy_with_z_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(weights), z_loss=1e-2)
    log_z = np.log(np.exp(logits).sum(-1))
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(sums.cross_entropy, (nll * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums.z_loss, (1e-2 * log_z**2 * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums.correct, ((logits.argmax(-1) == targets) * weights).sum())
    np.testing.assert_allclose(sums.weight, weights.sum())


def test_zero_z_loss_is_exactly_zero():
    sums = losses.cross_entropy_with_z_loss(jnp.ones((2, 3, 4)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3)))
    assert float(sums.z_loss) == 0.0
    np.testing.assert_allclose(sums.cross_entropy, 6 * np.log(4), rtol=1e-6)
