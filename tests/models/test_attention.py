"""Attention backends against the XLA reference: forward and gradients, causal and bidirectional,
packed segments, T5's additive relative-position bias, grouped-query heads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp.data import pipeline
from littlehelp.models import attention, build_model
from littlehelp.objectives import EncoderDecoderObjective
from tests.helpers import TINY_T5, t5_data

B, L, HEADS, KV_HEADS, D = 2, 12, 4, 2, 8


def _inputs(seed: int = 0, q_len: int = L):
    keys = jax.random.split(jax.random.key(seed), 4)
    query = jax.random.normal(keys[0], (B, q_len, HEADS, D)) / np.sqrt(D)
    key = jax.random.normal(keys[1], (B, L, KV_HEADS, D))
    value = jax.random.normal(keys[2], (B, L, KV_HEADS, D))
    bias = jax.random.normal(keys[3], (1, HEADS, q_len, L))  # T5: one bias per head and offset, shared by rows
    return query, key, value, bias


def _mask(kind: str):
    """None, causal, packed segments (two examples per row, padding at the end), or both."""
    segments = jnp.array([[1] * 5 + [2] * 5 + [0] * 2, [1] * 8 + [2] * 4])
    return {"bidirectional": None,
            "causal": attention.causal_mask(L),
            "segments": attention.segment_mask(segments, segments),
            "causal_segments": attention.combine_masks(attention.causal_mask(L), attention.segment_mask(segments, segments)),
            }[kind]


def _attending_rows(mask) -> jax.Array:
    """[b, lq, heads]: 1 for a query that may attend to some key, 0 for a fully masked (padding) one."""
    if mask is None:
        return jnp.ones((B, L, HEADS))
    return jnp.any(jnp.broadcast_to(mask, (B, HEADS, L, L)), axis=-1).transpose(0, 2, 1).astype(jnp.float32)


def _loss(backend: str, mask, with_bias: bool, row_weights=None):
    def loss(query, key, value, bias):
        out = attention.dot_product_attention(query, key, value, bias if with_bias else None, mask, backend)
        terms = jnp.sin(out) if row_weights is None else jnp.sin(out) * row_weights[..., None]
        return jnp.sum(terms), out
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)


def _assert_matches_the_reference(backend: str, mask, with_bias: bool, row_weights=None, inputs=None):
    """Outputs and the gradients of a loss over them (weighted by query row, if given) against "xla"."""
    inputs = _inputs() if inputs is None else inputs
    (_, expected), expected_grads = _loss("xla", mask, with_bias, row_weights)(*inputs)
    (_, got), grads = _loss(backend, mask, with_bias, row_weights)(*inputs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for name, g, e in zip(("query", "key", "value", "bias"), grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", ["bidirectional", "causal", "segments", "causal_segments"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_jax_nn_backend_matches_the_reference(kind, with_bias):
    _assert_matches_the_reference("jax_nn", _mask(kind), with_bias)


@pytest.mark.parametrize("kind", ["bidirectional", "causal", "segments", "causal_segments"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_pallas_tpu_backend_matches_the_reference(kind, with_bias):
    """In Pallas TPU interpret mode. Outputs agree on every row, gradients through the queries that
    attend to something: the kernel sees the mask as a bias, so a fully masked (padding) query still
    sends gradients to the query and keys, where "xla" sends none. Real losses weight padding zero."""
    mask = _mask(kind)
    _assert_matches_the_reference("pallas_tpu_interpret", mask, with_bias, _attending_rows(mask))


def test_pallas_tpu_backend_matches_the_reference_while_decoding():
    """Three new tokens per row against a 12-slot cache, rows at different decoding lengths."""
    positions = attention.SelfAttentionPositions(causal=True, decode=True)
    variables = positions.init(jax.random.key(0), jnp.zeros((B, L), jnp.int32), None, None)
    mask = positions.apply(variables, jnp.zeros((B, 3), jnp.int32), None, None, jnp.array([4, 9])).mask
    _assert_matches_the_reference("pallas_tpu_interpret", mask, with_bias=True, inputs=_inputs(q_len=3))


def test_pallas_gpu_backend_matches_the_reference():
    """In Pallas interpret mode; bidirectional without bias, the only case its kernel takes from us."""
    _assert_matches_the_reference("pallas_gpu_interpret", None, with_bias=False)


def test_pallas_gpu_backend_refuses_a_mask_or_bias_in_one_line():
    query, key, value, bias = _inputs()
    for extra in ({"mask": attention.causal_mask(L)}, {"bias": bias}):
        with pytest.raises(ValueError, match="^attention backend 'pallas_gpu' takes no bias or mask.*'cudnn'[^\n]*$"):
            attention.dot_product_attention(query, key, value, backend="pallas_gpu_interpret", **extra)


@pytest.mark.parametrize("backend,platform", [("cudnn", "GPU"), ("pallas_gpu", "GPU"), ("pallas_tpu", "TPU")])
def test_kernel_backends_refuse_another_platform_in_one_line(backend, platform):
    if jax.default_backend() == platform.lower():
        pytest.skip(f"a {platform} is present")
    query, key, value, _ = _inputs()
    with pytest.raises(ValueError, match=f"^attention backend '{backend}' needs a {platform}; [^\n]*$"):
        attention.dot_product_attention(query, key, value, backend=backend)


def test_t5_with_other_backends_trains_like_the_reference():
    """The tiny T5's loss and gradients on a packed batch (relative bias, segments, cross-attention), with
    "jax_nn" and the Pallas TPU kernel in interpret mode against "xla"."""
    batch = {k: jnp.asarray(v) for k, v in next(pipeline.host_dataset(t5_data(batch_size=2)).as_numpy_iterator()).items()}
    objectives = {backend: EncoderDecoderObjective(build_model(dataclasses.replace(TINY_T5, attention_backend=backend)))
                  for backend in ("xla", "jax_nn", "pallas_tpu_interpret")}
    params = objectives["xla"].init_params(jax.random.key(0), batch)
    results = {backend: jax.jit(jax.value_and_grad(lambda p, o=o: o.loss(p, batch, jax.random.key(1), jnp.int32(0))[0]))(params)
               for backend, o in objectives.items()}
    for backend in ("jax_nn", "pallas_tpu_interpret"):
        np.testing.assert_allclose(results[backend][0], results["xla"][0], rtol=1e-6, err_msg=backend)
        for got, expected in zip(jax.tree.leaves(results[backend][1]), jax.tree.leaves(results["xla"][1])):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=backend)
