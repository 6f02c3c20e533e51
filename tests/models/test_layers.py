"""`contract_into_kernel` (every Projection's matmul): forward and gradients against float64 numpy,
with the kernel gradient's operand order chosen either way; remat policies still save its output."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp.models import T5, layers
from littlehelp.models.layers import contract_into_kernel
from tests.helpers import TINY_T5


@pytest.mark.parametrize(
    "x_shape, kernel_shape, num_in",
    [
        ((2, 3, 4), (4, 6), 1),  # in 4 <= out 6: x is the transposed operand
        ((2, 3, 6), (6, 4), 1),  # in 6 > out 4: the cotangent is, as in autodiff
        ((2, 3, 2, 5), (2, 5, 3, 4), 2),  # several input axes (heads, head_dim) into several output axes
    ],
)
def test_value_and_gradients_match_float64_numpy(x_shape, kernel_shape, num_in):
    rng = np.random.default_rng(0)
    x, kernel = rng.normal(size=x_shape), rng.normal(size=kernel_shape)
    out_shape = x_shape[:-num_in] + kernel_shape[num_in:]
    cotangent = rng.normal(size=out_shape)
    x_rows = x.reshape(-1, int(np.prod(kernel_shape[:num_in])))
    k_mat = kernel.reshape(x_rows.shape[1], -1)
    g_rows = cotangent.reshape(x_rows.shape[0], -1)
    out, vjp = jax.vjp(
        lambda a, b: contract_into_kernel(a, b, num_in), jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32)
    )
    x_grad, kernel_grad = vjp(jnp.asarray(cotangent, jnp.float32))
    np.testing.assert_allclose(out, (x_rows @ k_mat).reshape(out_shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_grad, (g_rows @ k_mat.T).reshape(x_shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel_grad, (x_rows.T @ g_rows).reshape(kernel_shape), rtol=1e-5, atol=1e-5)


def test_dot_saving_remat_keeps_projection_outputs_as_it_keeps_plain_dots(monkeypatch):
    """dots_saveable keeps every Projection's output (named inside the custom VJP): its compiled step
    computes no more than the same step with plain dot_general projections, which the policy sees as
    dots (without the name it recomputed every projection: 15% more FLOPs here); full remat does."""
    enc, dec = jnp.ones((2, 16), jnp.int32), jnp.ones((2, 8), jnp.int32)

    def train_flops(policy: str) -> float:
        model = T5(dataclasses.replace(TINY_T5, scan_layers=False, remat_policy=policy))
        params = jax.eval_shape(model.init, jax.random.key(0), enc, dec)  # the step compiles from shapes alone
        loss = lambda p: jnp.sum(model.apply(p, enc, dec) ** 2)  # noqa: E731
        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        analysis = compiled.cost_analysis()
        return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]

    dots, full = train_flops("dots_saveable"), train_flops("full")
    monkeypatch.setattr(
        layers,
        "contract_into_kernel",
        lambda x, kernel, num_in: jax.lax.dot_general(
            x, kernel, ((tuple(range(x.ndim - num_in, x.ndim)), tuple(range(num_in))), ((), ()))
        ),
    )
    assert dots <= 1.01 * train_flops("dots_saveable")
    assert full > 1.1 * dots
