"""Decoder-only LM: partitioning metadata, packing, causality, cache, scan/remat equivalence."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp.models import DecoderConfig, DecoderLM, count_params

from .test_t5 import GIN_DIR, config_from_gin, unstack_layers

TINY = DecoderConfig(vocab_size=40, emb_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=24)


@pytest.fixture(scope="module")
def tiny():
    model = DecoderLM(TINY)
    return model, model.init(jax.random.PRNGKey(0), jnp.ones((1, 6), jnp.int32))


@pytest.mark.parametrize("scan_layers,tie", [(True, False), (False, True)])
def test_every_parameter_has_full_logical_axes(scan_layers, tie):
    model = DecoderLM(dataclasses.replace(TINY, scan_layers=scan_layers, tie_embeddings=tie))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
    specs = jax.tree_util.tree_leaves(
        nn.get_partition_spec(variables)["params"], is_leaf=lambda s: isinstance(s, jax.P)
    )
    shapes = jax.tree_util.tree_leaves(nn.unbox(variables)["params"])
    assert len(specs) == len(shapes) > 0
    for spec, shape in zip(specs, shapes):
        assert isinstance(spec, jax.P) and len(spec) == len(shape.shape), (spec, shape.shape)
    assert ("logits_dense" in variables["params"]) is not tie


def test_param_count_matches_formula():
    c = TINY
    attention = c.emb_dim * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    per_layer = attention + 3 * c.emb_dim * c.mlp_dim + 2 * c.emb_dim
    expected = 2 * c.vocab_size * c.emb_dim + c.num_layers * per_layer + c.emb_dim
    assert count_params(DecoderLM(c), jnp.ones((1, 3), jnp.int32)) == expected


def test_rejects_heads_not_multiple_of_kv_heads():
    with pytest.raises(ValueError, match="num_kv_heads.*3"):
        dataclasses.replace(TINY, num_kv_heads=3)


def test_packed_segments_match_separate_examples(tiny):
    model, variables = tiny
    apply = jax.jit(model.apply)
    seq_a, seq_b = [5, 6, 7, 8], [9, 10]
    packed = apply(
        variables,
        jnp.array([seq_a + seq_b + [0]]),
        segment_ids=jnp.array([[1, 1, 1, 1, 2, 2, 0]]),
        positions=jnp.array([[0, 1, 2, 3, 0, 1, 0]]),
    )
    np.testing.assert_allclose(packed[0, :4], apply(variables, jnp.array([seq_a]))[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[0, 4:6], apply(variables, jnp.array([seq_b]))[0], rtol=1e-5, atol=1e-5)


def test_is_causal(tiny):
    model, variables = tiny
    first = model.apply(variables, jnp.array([[5, 6, 7, 8, 9]]))
    changed = model.apply(variables, jnp.array([[5, 6, 7, 30, 9]]))
    np.testing.assert_allclose(first[:, :3], changed[:, :3], rtol=1e-6, atol=1e-6)
    assert not np.allclose(first[:, 3:], changed[:, 3:])


def test_scanned_and_unrolled_layers_agree(tiny):
    model, variables = tiny
    tokens = jnp.array([[5, 6, 7, 8]])
    unrolled = DecoderLM(dataclasses.replace(TINY, scan_layers=False))
    params = unstack_layers(nn.unbox(variables)["params"])
    np.testing.assert_allclose(
        unrolled.apply({"params": params}, tokens), model.apply(variables, tokens), rtol=1e-5, atol=1e-5
    )


def test_remat_gives_identical_gradients(tiny):
    _, variables = tiny
    params = nn.unbox(variables)["params"]
    tokens = jnp.array([[5, 6, 7, 8]])

    def grads(policy):
        model = DecoderLM(dataclasses.replace(TINY, remat_policy=policy))
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, tokens) ** 2)))(params)

    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads("full"), grads("none")
    )


@pytest.mark.parametrize("size,documented", [("tiny", 0.158e6), ("small", 125e6), ("base", 302e6)])
def test_gin_sizes_match_documented_counts(size, documented):
    config = config_from_gin(GIN_DIR / "decoder" / f"{size}.gin", DecoderConfig)
    count = count_params(DecoderLM(config), jax.ShapeDtypeStruct((1, 8), jnp.int32))
    assert abs(count / documented - 1) < 0.01
    assert f"~{documented / 1e6:.3g}M" in (GIN_DIR / "decoder" / f"{size}.gin").read_text()
