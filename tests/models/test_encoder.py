"""Encoder-only model: a float64 numpy forward pass, packing, shared embeddings, MLM head."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp.models import Encoder, EncoderConfig
from littlehelp.models.layers import Embed

from .test_t5 import _np_gelu_tanh, _np_rms_norm, _np_t5_bucket

TINY = EncoderConfig(vocab_size=30, emb_dim=16, num_layers=2, num_heads=2, head_dim=8, mlp_dim=24)


@pytest.fixture(scope="module")
def tiny():
    model = Encoder(TINY)
    return model, model.init(jax.random.PRNGKey(0), jnp.ones((1, 5), jnp.int32))


def _np_encoder(p, tokens, config):
    """One T5 v1.1 encoder stack in float64 numpy for a single unpadded sequence."""
    x = p["token_embedder"]["embedding"][tokens]
    enc = p["encoder"]
    length = len(tokens)
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]
    buckets = _np_t5_bucket(
        relative, True, config.relative_attention_num_buckets, config.relative_attention_max_distance
    )
    bias = enc["relative_position_bias"]["rel_embedding"][:, buckets]  # [h, q, k]
    for i in range(config.num_layers):
        layer = jax.tree_util.tree_map(lambda a, i=i: a[i], enc["layers"])
        att = layer["attention"]
        h = _np_rms_norm(x, layer["pre_attention_norm"]["scale"])
        q, k, v = (np.einsum("ld,dhk->lhk", h, att[n]["kernel"]) for n in ("query", "key", "value"))
        logits = np.einsum("qhk,lhk->hql", q, k) + bias
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + np.einsum("hql,lhk,hkd->qd", probs, v, att["out"]["kernel"])
        h = _np_rms_norm(x, layer["pre_mlp_norm"]["scale"])
        mlp = layer["mlp"]
        x = x + (_np_gelu_tanh(h @ mlp["wi_0"]["kernel"]) * (h @ mlp["wi_1"]["kernel"])) @ mlp["wo"]["kernel"]
    return _np_rms_norm(x, enc["final_norm"]["scale"])


def test_matches_float64_numpy_forward(tiny):
    model, variables = tiny
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), nn.unbox(variables)["params"])
    tokens = np.array([3, 9, 4, 17, 5])
    got = model.apply(variables, jnp.asarray(tokens[None]))[0]
    np.testing.assert_allclose(got, _np_encoder(params, tokens, TINY), rtol=2e-4, atol=2e-4)


def test_every_parameter_has_full_logical_axes(tiny):
    _, variables = tiny
    specs = jax.tree_util.tree_leaves(
        nn.get_partition_spec(variables)["params"], is_leaf=lambda s: isinstance(s, jax.P)
    )
    shapes = jax.tree_util.tree_leaves(nn.unbox(variables)["params"])
    assert len(specs) == len(shapes) > 0
    assert all(len(s) == a.ndim for s, a in zip(specs, shapes))
    assert nn.get_partition_spec(variables)["params"]["mlm_head"]["kernel"] == jax.P("embed", "vocab")


def test_packed_segments_match_separate_examples(tiny):
    model, variables = tiny
    apply = jax.jit(model.apply)
    seq_a, seq_b = [3, 4, 5], [6, 7, 8, 9]
    packed = apply(variables, jnp.array([seq_a + seq_b + [0]]), jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]]))
    np.testing.assert_allclose(packed[0, :3], apply(variables, jnp.array([seq_a]))[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[0, 3:7], apply(variables, jnp.array([seq_b]))[0], rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_real_positions(tiny):
    model, variables = tiny
    short = model.apply(variables, jnp.array([[3, 4, 5]]))
    padded = model.apply(variables, jnp.array([[3, 4, 5, 0, 0]]))
    np.testing.assert_allclose(padded[:, :3], short, rtol=1e-5, atol=1e-5)


class _SharedEmbedding(nn.Module):
    """An owner of the embedding table that lends it to the encoder."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, tokens):
        embedder = Embed(self.config.vocab_size, self.config.emb_dim, name="shared")
        return Encoder(self.config, name="encoder_only")(tokens, token_embedder=embedder)


def test_external_token_embedder_is_used_and_owned_outside(tiny):
    model, variables = tiny
    tokens = jnp.array([[3, 4, 5, 6]])
    params = nn.unbox(variables)["params"]
    owner = _SharedEmbedding(TINY)
    owner_params = nn.unbox(owner.init(jax.random.PRNGKey(1), tokens))["params"]
    assert "token_embedder" not in owner_params["encoder_only"]
    own_table = {k: v for k, v in params.items() if k != "token_embedder"}
    shared = {"shared": params["token_embedder"], "encoder_only": own_table}
    np.testing.assert_allclose(
        owner.apply({"params": shared}, tokens), model.apply(variables, tokens), rtol=1e-6, atol=1e-6
    )


def test_mlm_logits_project_hidden_states(tiny):
    model, variables = tiny
    hidden = model.apply(variables, jnp.array([[3, 4, 5]]))
    logits = model.apply(variables, hidden, method=Encoder.mlm_logits)
    kernel = nn.unbox(variables)["params"]["mlm_head"]["kernel"]
    assert logits.shape == (1, 3, TINY.vocab_size)
    np.testing.assert_allclose(logits, np.asarray(hidden) @ np.asarray(kernel), rtol=1e-5, atol=1e-5)


def test_config_names_bad_field():
    with pytest.raises(ValueError, match="num_layers.*-1"):
        dataclasses.replace(TINY, num_layers=-1)
