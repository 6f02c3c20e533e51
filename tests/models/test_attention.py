"""Attention backends against the XLA reference: forward and gradients, causal and bidirectional,
packed segments, T5's additive relative-position bias, grouped-query heads; the structured mask
reaching the Pallas kernels as their causal flag and segment ids."""

import dataclasses

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp.data import pipeline
from littlehelp.models import attention, build_model
from littlehelp.objectives import DecoderObjective, EncoderDecoderObjective
from tests.helpers import TINY_DECODER, TINY_T5, t5_data

B, L, HEADS, KV_HEADS, D = 2, 12, 4, 2, 8
KINDS = ["bidirectional", "causal", "segments", "causal_segments"]


def _inputs(seed: int = 0, q_len: int = L, k_len: int = L):
    keys = jax.random.split(jax.random.key(seed), 4)
    query = jax.random.normal(keys[0], (B, q_len, HEADS, D)) / np.sqrt(D)
    key = jax.random.normal(keys[1], (B, k_len, KV_HEADS, D))
    value = jax.random.normal(keys[2], (B, k_len, KV_HEADS, D))
    bias = jax.random.normal(keys[3], (1, HEADS, q_len, k_len))  # T5: one bias per head and offset, shared by rows
    return query, key, value, bias


def _segments(length: int = L) -> jax.Array:
    """Two examples per row; the first row ends in two padding tokens."""
    first = [1] * 5 + [2] * 5 + [0] * (length - 10)
    return jnp.array([first, [1] * (length - 4) + [2] * 4])


def _mask(kind: str, length: int = L) -> attention.AttentionMask | None:
    """None, causal, packed segments (self-attention), or both."""
    return {
        "bidirectional": None,
        "causal": attention.AttentionMask(causal=True),
        "segments": attention.AttentionMask(query_segment_ids=_segments(length)),
        "causal_segments": attention.AttentionMask(causal=True, query_segment_ids=_segments(length)),
    }[kind]


def _attending_rows(mask, q_len: int = L) -> jax.Array:
    """[b, lq, heads]: 1 for a query that may attend to some key, 0 for a fully masked (padding) one."""
    dense = None if mask is None else mask.to_dense(q_len, L)
    if dense is None:
        return jnp.ones((B, q_len, HEADS))
    return jnp.any(jnp.broadcast_to(dense, (B, HEADS, q_len, L)), axis=-1).transpose(0, 2, 1).astype(jnp.float32)


def _loss(backend: str, mask, with_bias: bool, row_weights=None):
    def loss(query, key, value, bias):
        out = attention.dot_product_attention(query, key, value, bias if with_bias else None, mask, backend)
        terms = jnp.sin(out) if row_weights is None else jnp.sin(out) * row_weights[..., None]
        return jnp.sum(terms), out

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)


def _assert_matches_the_reference(backend: str, mask, with_bias: bool, row_weights=None, inputs=None):
    """Outputs and the gradients of a loss over them against "xla"; with ``row_weights`` [b, lq, heads]
    only on the rows weighted 1 (outputs) and for a loss weighted by them (gradients)."""
    inputs = _inputs() if inputs is None else inputs
    (_, expected), expected_grads = _loss("xla", mask, with_bias, row_weights)(*inputs)
    (_, got), grads = _loss(backend, mask, with_bias, row_weights)(*inputs)
    rows = 1.0 if row_weights is None else row_weights[..., None]
    np.testing.assert_allclose(got * rows, expected * rows, rtol=1e-5, atol=1e-5)
    for name, g, e in zip(("query", "key", "value", "bias"), grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)


def test_dense_form_of_a_structured_mask_matches_its_definition():
    """Causal order AND same non-padding segment, cross-attention included, against loops in numpy."""
    q_ids, k_ids = np.array([[1, 1, 2, 0]]), np.array([[1, 2, 2, 0, 1]])
    expected = np.array([[[[k <= q and q_ids[0, q] == k_ids[0, k] != 0 for k in range(5)] for q in range(4)]]])
    mask = attention.AttentionMask(
        causal=True, query_segment_ids=jnp.asarray(q_ids), key_segment_ids=jnp.asarray(k_ids)
    )
    np.testing.assert_array_equal(mask.to_dense(4, 5), expected)
    self_attention = attention.AttentionMask(query_segment_ids=jnp.asarray(q_ids)).to_dense(4, 4)
    np.testing.assert_array_equal(self_attention, attention.segment_mask(jnp.asarray(q_ids), jnp.asarray(q_ids)))
    assert attention.AttentionMask().to_dense(4, 4) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_jax_nn_backend_matches_the_reference(kind, with_bias):
    _assert_matches_the_reference("jax_nn", _mask(kind), with_bias)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_pallas_tpu_backend_matches_the_reference(kind, with_bias):
    """In Pallas TPU interpret mode, on the rows of real queries. The kernel takes the causal flag and
    the segment ids; its segments are plain equality, so a padding query (id 0) attends the padding keys
    where ours attends nothing. No real query shares a segment with padding, so real rows agree; losses
    weight padding zero."""
    mask = _mask(kind)
    _assert_matches_the_reference("pallas_tpu_interpret", mask, with_bias, _attending_rows(mask))


def test_pallas_tpu_backend_matches_the_reference_while_decoding():
    """Three new tokens per row against a 12-slot cache, rows at different decoding lengths: a dense
    mask, folded into the kernel's bias."""
    positions = attention.SelfAttentionPositions(causal=True, decode=True)
    variables = positions.init(jax.random.key(0), jnp.zeros((B, L), jnp.int32), None, None)
    mask = positions.apply(variables, jnp.zeros((B, 3), jnp.int32), None, None, jnp.array([4, 9])).mask
    assert mask.dense is not None and not mask.causal and mask.query_segment_ids is None
    _assert_matches_the_reference("pallas_tpu_interpret", mask, with_bias=True, inputs=_inputs(q_len=3))


def test_pallas_tpu_backend_matches_the_reference_in_cross_attention():
    """Decoder queries of 3 segments' ids against encoder keys of 12 (T5's packed cross-attention)."""
    mask = attention.AttentionMask(query_segment_ids=jnp.array([[1, 2, 2], [1, 1, 2]]), key_segment_ids=_segments())
    _assert_matches_the_reference(
        "pallas_tpu_interpret",
        mask,
        with_bias=False,
        row_weights=_attending_rows(mask, q_len=3),
        inputs=_inputs(q_len=3),
    )


def _float_arrays_of_shape(closed_jaxpr, shape) -> int:
    """How many float32 values of ``shape`` the program (its nested programs included) makes or reads."""

    def count(jaxpr) -> int:
        found = sum(1 for var in jaxpr.invars if var.aval.shape == shape and var.aval.dtype == jnp.float32)
        for eqn in jaxpr.eqns:
            found += sum(1 for var in eqn.outvars if var.aval.shape == shape and var.aval.dtype == jnp.float32)
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        found += count(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        found += count(sub)
        return found

    return count(closed_jaxpr.jaxpr)


@pytest.mark.parametrize("with_bias", [False, True])
def test_pallas_tpu_backend_masks_by_structure_without_a_dense_bias(with_bias):
    """Forward and backward program of a causal, packed call: no float32 [b, heads, lq, lk] (both
    lengths padded to the kernel's 256 here, so that the kernel's own [b, heads, lq, 128] softmax
    statistics do not look like one) unless a real bias is given (which shows the check can fail)."""
    length, padded = 200, 256
    inputs = _inputs(q_len=length, k_len=length)
    mask = _mask("causal_segments", length)
    jaxpr = jax.make_jaxpr(_loss("pallas_tpu_interpret", mask, with_bias))(*inputs)
    assert (_float_arrays_of_shape(jaxpr, (B, HEADS, padded, padded)) > 0) == with_bias


@pytest.mark.parametrize("kind", KINDS)
def test_pallas_gpu_backend_matches_the_reference(kind):
    """In Pallas interpret mode, causal and packed self-attention without bias, on the rows of real
    queries: its segments are plain equality (see the TPU test above)."""
    mask = _mask(kind)
    _assert_matches_the_reference("pallas_gpu_interpret", mask, False, _attending_rows(mask))


@pytest.mark.parametrize("extra", ["bias", "dense", "cross_segments"])
def test_pallas_gpu_backend_refuses_what_its_kernel_cannot_mask_in_one_line(extra):
    query, key, value, bias = _inputs()
    segments = _segments()
    kwargs = {
        "bias": {"bias": bias},
        "dense": {"mask": attention.AttentionMask(dense=attention.causal_mask(L))},
        "cross_segments": {"mask": attention.AttentionMask(query_segment_ids=segments, key_segment_ids=segments)},
    }[extra]
    with pytest.raises(
        ValueError,
        match="^attention backend 'pallas_gpu' takes no bias, dense mask or cross-attention "
        "segment ids.*'cudnn'[^\n]*$",
    ):
        attention.dot_product_attention(query, key, value, backend="pallas_gpu_interpret", **kwargs)


def test_a_dense_array_as_mask_is_refused_naming_attention_mask():
    query, key, value, _ = _inputs()
    with pytest.raises(TypeError, match="^attention mask must be an AttentionMask .*'dense' field.*ArrayImpl$"):
        attention.dot_product_attention(query, key, value, mask=attention.causal_mask(L))


def test_self_attention_segment_ids_with_other_key_lengths_are_refused_in_one_line():
    query, key, value, _ = _inputs(q_len=3)
    mask = attention.AttentionMask(query_segment_ids=jnp.ones((B, 3), jnp.int32))
    with pytest.raises(
        ValueError,
        match="^AttentionMask without key_segment_ids is self-attention, but there are 3 "
        "queries and 12 keys; give the keys' segment ids$",
    ):
        attention.dot_product_attention(query, key, value, mask=mask)


@pytest.mark.parametrize("backend,platform", [("cudnn", "GPU"), ("pallas_gpu", "GPU"), ("pallas_tpu", "TPU")])
def test_kernel_backends_refuse_another_platform_in_one_line(backend, platform):
    if jax.default_backend() == platform.lower():
        pytest.skip(f"a {platform} is present")
    query, key, value, _ = _inputs()
    with pytest.raises(ValueError, match=f"^attention backend '{backend}' needs a {platform}; [^\n]*$"):
        attention.dot_product_attention(query, key, value, backend=backend)


def _run_compiled(fn, *args):
    """``jax.jit(fn)(*args)``: one program, not op by op."""
    return jax.jit(fn)(*args)


def _trains_like_the_reference(objective_of, batch, backends) -> None:
    """The loss and gradients of one batch with each of ``backends`` against "xla"."""
    objectives = {backend: objective_of(backend) for backend in ("xla", *backends)}
    params = _run_compiled(objectives["xla"].init_params, jax.random.key(0), batch)  # one program, not op by op
    losses = {
        backend: (lambda p, o=o: o.loss(p, batch, jax.random.key(1), jnp.int32(0))[0])
        for backend, o in objectives.items()
    }
    results = {backend: _run_compiled(jax.value_and_grad(loss), params) for backend, loss in losses.items()}
    for backend in backends:
        np.testing.assert_allclose(results[backend][0], results["xla"][0], rtol=1e-6, err_msg=backend)
        for got, expected in zip(jax.tree.leaves(results[backend][1]), jax.tree.leaves(results["xla"][1])):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=backend)


def _first_batch(data) -> dict:
    return {k: jnp.asarray(v) for k, v in next(pipeline.host_dataset(data).as_numpy_iterator()).items()}


def test_t5_with_other_backends_trains_like_the_reference():
    """The tiny T5's loss and gradients on a packed batch (relative bias, segments, cross-attention), with
    "jax_nn" and the Pallas TPU kernel in interpret mode against "xla"."""
    _trains_like_the_reference(
        lambda backend: EncoderDecoderObjective(build_model(dataclasses.replace(TINY_T5, attention_backend=backend))),
        _first_batch(t5_data(batch_size=2)),
        ("jax_nn", "pallas_tpu_interpret"),
    )


def test_decoder_lm_with_the_pallas_gpu_kernel_trains_like_the_reference():
    """The tiny decoder LM's loss and gradients on a packed batch (causal, two examples per row, padding at
    the end, grouped-query heads) with the Pallas GPU kernel in interpret mode against "xla"."""
    segments = jnp.array([[1] * 12 + [2] * 14 + [0] * 6, [1] * 20 + [2] * 12])
    positions = jnp.array([list(range(12)) + list(range(14)) + [0] * 6, list(range(20)) + list(range(12))])
    words = jax.random.randint(jax.random.key(2), segments.shape, 1, TINY_DECODER.vocab_size)
    tokens = jnp.where(segments > 0, words, 0)
    batch = {
        "decoder_input_tokens": jnp.where(positions > 0, jnp.roll(tokens, 1, axis=1), 0),
        "decoder_target_tokens": tokens,
        "decoder_segment_ids": segments,
        "decoder_positions": positions,
        "decoder_loss_weights": (segments > 0).astype(jnp.float32),
    }
    _trains_like_the_reference(
        lambda backend: DecoderObjective(build_model(dataclasses.replace(TINY_DECODER, attention_backend=backend))),
        batch,
        ("pallas_gpu_interpret",),
    )
