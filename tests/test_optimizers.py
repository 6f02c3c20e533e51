"""Learning-rate schedules against their published formulas, and the optimizers' wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp import optimizers


def test_inverse_sqrt_matches_t5x_default():
    schedule = optimizers.inverse_sqrt_schedule(peak_learning_rate=0.01, warmup_steps=10_000)
    for step in (0, 5_000, 10_000, 40_000, 250_000):
        assert float(schedule(step)) == pytest.approx(1 / np.sqrt(max(step, 10_000)), rel=1e-6)


def test_inverse_sqrt_linear_warmup_ramps_then_decays():
    schedule = optimizers.inverse_sqrt_schedule(peak_learning_rate=1.0, warmup_steps=100, linear_warmup=True)
    assert float(schedule(49)) == pytest.approx(0.5, rel=1e-6)
    assert float(schedule(400)) == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError, match="warmup_steps must be positive"):
        optimizers.inverse_sqrt_schedule(warmup_steps=0)


def test_cosine_schedule_endpoints():
    schedule = optimizers.cosine_schedule(peak_learning_rate=2.0, warmup_steps=10, decay_steps=110, final_fraction=0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(2.0)
    assert float(schedule(60)) == pytest.approx(0.2 + 1.8 * 0.5, rel=1e-5)
    assert float(schedule(110)) == pytest.approx(0.2, rel=1e-5)


def test_adafactor_factors_large_matrices_and_steps_downhill():
    opt = optimizers.adafactor(learning_rate=optimizers.constant_schedule(0.01))
    params = {"w": jnp.ones((256, 512)), "b": jnp.ones((8,))}
    state = opt.tx.init(params)
    shapes = sorted({tuple(x.shape) for x in jax.tree.leaves(state)})
    assert (256,) in shapes and (512,) in shapes and (256, 512) not in shapes  # factored second moments

    def loss(p):
        return jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)

    updates, _ = opt.tx.update(jax.grad(loss)(params), state, params)
    assert float(loss(jax.tree.map(jnp.add, params, updates))) < float(loss(params))


def test_adamw_clips_and_decays():
    opt = optimizers.adamw(learning_rate=optimizers.constant_schedule(0.1), weight_decay=0.0, max_grad_norm=1.0)
    params = {"w": jnp.zeros(3)}
    state = opt.tx.init(params)
    updates, _ = opt.tx.update({"w": jnp.array([300.0, -400.0, 0.0])}, state, params)
    # First Adam step moves each coordinate by lr * sign(g) whatever the clipped size.
    np.testing.assert_allclose(updates["w"], [-0.1, 0.1, 0.0], atol=1e-6)
