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


def _inputs(seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 4)
    query = jax.random.normal(keys[0], (B, L, HEADS, D)) / np.sqrt(D)
    key = jax.random.normal(keys[1], (B, L, KV_HEADS, D))
    value = jax.random.normal(keys[2], (B, L, KV_HEADS, D))
    bias = jax.random.normal(keys[3], (1, HEADS, L, L))  # T5: one bias per head and offset, shared by rows
    return query, key, value, bias


def _mask(kind: str):
    """None, causal, packed segments (two examples per row, padding at the end), or both."""
    segments = jnp.array([[1] * 5 + [2] * 5 + [0] * 2, [1] * 8 + [2] * 4])
    return {"bidirectional": None,
            "causal": attention.causal_mask(L),
            "segments": attention.segment_mask(segments, segments),
            "causal_segments": attention.combine_masks(attention.causal_mask(L), attention.segment_mask(segments, segments)),
            }[kind]


def _loss(backend: str, mask, with_bias: bool):
    def loss(query, key, value, bias):
        out = attention.dot_product_attention(query, key, value, bias if with_bias else None, mask, backend)
        return jnp.sum(jnp.sin(out)), out
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)


@pytest.mark.parametrize("kind", ["bidirectional", "causal", "segments", "causal_segments"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_jax_nn_backend_matches_the_reference(kind, with_bias):
    inputs, mask = _inputs(), _mask(kind)
    (_, expected), expected_grads = _loss("xla", mask, with_bias)(*inputs)
    (_, got), grads = _loss("jax_nn", mask, with_bias)(*inputs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for name, g, e in zip(("query", "key", "value", "bias"), grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)


def test_cudnn_backend_refuses_a_machine_without_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    query, key, value, _ = _inputs()
    with pytest.raises(ValueError, match="attention backend 'cudnn' needs a GPU"):
        attention.dot_product_attention(query, key, value, backend="cudnn")


def test_t5_with_the_jax_nn_backend_trains_like_the_reference():
    """The tiny T5's loss and gradients on a packed batch, both backends (relative bias, segments)."""
    batch = {k: jnp.asarray(v) for k, v in next(pipeline.host_dataset(t5_data(batch_size=2)).as_numpy_iterator()).items()}
    objectives = {backend: EncoderDecoderObjective(build_model(dataclasses.replace(TINY_T5, attention_backend=backend)))
                  for backend in ("xla", "jax_nn")}
    params = objectives["xla"].init_params(jax.random.key(0), batch)
    results = {backend: jax.jit(jax.value_and_grad(lambda p, o=o: o.loss(p, batch, jax.random.key(1), jnp.int32(0))[0]))(params)
               for backend, o in objectives.items()}
    np.testing.assert_allclose(results["jax_nn"][0], results["xla"][0], rtol=1e-6)
    for got, expected in zip(jax.tree.leaves(results["jax_nn"][1]), jax.tree.leaves(results["xla"][1])):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
