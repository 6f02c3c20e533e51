"""T5 v1.1 model and its building blocks, checked against float64 numpy references."""

import dataclasses
import math
from pathlib import Path

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp.config import parse_gin
from littlehelp.models import attention, count_params, layers
from littlehelp.models.t5 import T5, T5Config

TINY = T5Config(
    vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2, num_decoder_layers=2
)


def _np_rms_norm(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _np_t5_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """Mesh TensorFlow's _relative_position_bucket, transcribed to numpy."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(np.int32) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
        / np.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(np.int32)
    val_if_large = np.minimum(val_if_large, num_buckets - 1)
    return ret + np.where(is_small, n, val_if_large)


def test_rms_norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(3, 5, 8))
    norm = layers.RMSNorm()
    params = nn.unbox(norm.init(jax.random.PRNGKey(0), x))
    scale = np.linspace(0.5, 1.5, 8)
    out = norm.apply({"params": {"scale": jnp.asarray(scale, jnp.float32)}}, x)
    assert params["params"]["scale"].shape == (8,)
    np.testing.assert_allclose(out, _np_rms_norm(x, scale), rtol=1e-5, atol=1e-6)


def test_gated_gelu_mlp_matches_numpy():
    x = np.random.default_rng(1).normal(size=(2, 3, 6))
    mlp = layers.GatedMlp(mlp_dim=10, activation="gelu")
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(mlp.init(jax.random.PRNGKey(1), x)))
    p = params["params"]
    ref = (_np_gelu_tanh(x @ p["wi_0"]["kernel"]) * (x @ p["wi_1"]["kernel"])) @ p["wo"]["kernel"]
    np.testing.assert_allclose(mlp.apply(params, x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_t5(bidirectional):
    relative = np.arange(-300, 301)
    got = layers.relative_position_bucket(jnp.asarray(relative), bidirectional, 32, 128)
    np.testing.assert_array_equal(got, _np_t5_bucket(relative, bidirectional, 32, 128))


def test_rope_is_a_complex_rotation():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3, 8))
    positions = np.array([[0, 1, 2, 3, 4], [7, 3, 0, 11, 2]])
    half = 4
    freqs = 10000.0 ** (-np.arange(half) / half)
    as_complex = x[..., :half] + 1j * x[..., half:]
    rotated = as_complex * np.exp(1j * positions[:, :, None, None] * freqs)
    ref = np.concatenate([rotated.real, rotated.imag], axis=-1)
    got = layers.apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _np_attention(q, k, v, bias, mask):
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) + bias
    logits = np.where(mask, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def test_grouped_query_attention_matches_numpy():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(2, 4, 4, 8))
    k, v = rng.normal(size=(2, 6, 2, 8)), rng.normal(size=(2, 6, 2, 8))
    bias = rng.normal(size=(1, 4, 4, 6))
    mask = rng.random(size=(2, 1, 4, 6)) < 0.6
    mask[..., 0] = True
    got = attention.dot_product_attention(
        *(jnp.asarray(a, jnp.float32) for a in (q, k, v, bias)), mask=attention.AttentionMask(dense=jnp.asarray(mask))
    )
    np.testing.assert_allclose(got, _np_attention(q, k, v, bias, mask), rtol=1e-4, atol=1e-5)


def test_unknown_attention_backend_lists_available():
    x = jnp.zeros((1, 2, 1, 4))
    with pytest.raises(
        ValueError,
        match="'flash'.*available: cudnn, jax_nn, pallas_gpu, pallas_gpu_interpret, "
        "pallas_tpu, pallas_tpu_interpret, xla$",
    ):
        attention.dot_product_attention(x, x, x, backend="flash")


@pytest.mark.parametrize(
    "field,value",
    [
        ("emb_dim", 0),
        ("dtype", "float16"),
        ("remat_policy", "sometimes"),
        ("attention_backend", "cuda"),
        ("dropout_rate", 1.5),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"{field}.*{value}"):
        dataclasses.replace(TINY, **{field: value})


def _init(config, enc_len=6, dec_len=5):
    model = T5(config)
    enc = jnp.ones((2, enc_len), jnp.int32)
    dec = jnp.ones((2, dec_len), jnp.int32)
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), enc, dec)


@pytest.fixture(scope="module")
def tiny():
    return _init(TINY)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_parameter_has_full_logical_axes(scan_layers):
    config = dataclasses.replace(TINY, scan_layers=scan_layers)
    variables = jax.eval_shape(lambda: _init(config)[1])
    specs = nn.get_partition_spec(variables)["params"]
    shapes = nn.unbox(variables)["params"]
    flat_specs = jax.tree_util.tree_leaves(specs, is_leaf=lambda s: isinstance(s, jax.P))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_specs) == len(flat_shapes) > 0
    for spec, shape in zip(flat_specs, flat_shapes):
        assert isinstance(spec, jax.P) and len(spec) == len(shape.shape), (spec, shape.shape)
    assert specs["token_embedder"]["embedding"] == jax.P("vocab", "embed")
    assert specs["decoder"]["logits_dense"]["kernel"] == jax.P("embed", "vocab")
    if scan_layers:
        wi_0 = specs["encoder"]["layers"]["mlp"]["wi_0"]["kernel"]
        assert wi_0 == jax.P("layers", "embed", "mlp")


def test_packed_segments_match_separate_examples(tiny):
    model, variables = tiny
    apply = jax.jit(model.apply)
    enc_a, dec_a, enc_b, dec_b = [3, 4, 5], [0, 8, 9], [6, 7], [0, 10]
    packed = apply(
        variables,
        jnp.array([enc_a + enc_b + [0]]),
        jnp.array([dec_a + dec_b + [0]]),
        encoder_segment_ids=jnp.array([[1, 1, 1, 2, 2, 0]]),
        decoder_segment_ids=jnp.array([[1, 1, 1, 2, 2, 0]]),
        encoder_positions=jnp.array([[0, 1, 2, 0, 1, 0]]),
        decoder_positions=jnp.array([[0, 1, 2, 0, 1, 0]]),
    )
    alone_a = apply(variables, jnp.array([enc_a]), jnp.array([dec_a]))
    alone_b = apply(variables, jnp.array([enc_b]), jnp.array([dec_b]))
    np.testing.assert_allclose(packed[0, :3], alone_a[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[0, 3:5], alone_b[0], rtol=1e-5, atol=1e-5)


def test_encoder_padding_is_ignored(tiny):
    model, variables = tiny
    short = model.apply(variables, jnp.array([[3, 4, 5]]), jnp.array([[0, 8]]))
    padded = model.apply(variables, jnp.array([[3, 4, 5, 0, 0]]), jnp.array([[0, 8]]))
    np.testing.assert_allclose(short, padded, rtol=1e-5, atol=1e-5)


def test_decoder_is_causal(tiny):
    model, variables = tiny
    enc = jnp.array([[3, 4, 5, 6]])
    first = model.apply(variables, enc, jnp.array([[0, 8, 9, 10]]))
    changed = model.apply(variables, enc, jnp.array([[0, 8, 9, 30]]))
    np.testing.assert_allclose(first[:, :3], changed[:, :3], rtol=1e-6, atol=1e-6)
    assert not np.allclose(first[:, 3], changed[:, 3])


def unstack_layers(tree):
    """Turns scanned {"layers": [L, ...]} params into {"layers_0": ..., "layers_1": ...}."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for name, sub in tree.items():
        if name == "layers":
            num = jax.tree_util.tree_leaves(sub)[0].shape[0]
            out.update({f"layers_{i}": jax.tree_util.tree_map(lambda x, i=i: x[i], sub) for i in range(num)})
        else:
            out[name] = unstack_layers(sub)
    return out


def test_scanned_and_unrolled_layers_agree(tiny):
    model, variables = tiny
    enc, dec = jnp.array([[3, 4, 5, 6, 0]]), jnp.array([[0, 8, 9]])
    unrolled = T5(dataclasses.replace(TINY, scan_layers=False))
    params = unstack_layers(nn.unbox(variables)["params"])
    expected_shapes = jax.eval_shape(lambda: nn.unbox(_init(unrolled.config)[1])["params"])
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected_shapes)
    np.testing.assert_allclose(
        unrolled.apply({"params": params}, enc, dec), model.apply(variables, enc, dec), rtol=1e-5, atol=1e-5
    )


def test_remat_gives_identical_gradients(tiny):
    _, variables = tiny
    params = nn.unbox(variables)["params"]
    enc, dec = jnp.array([[3, 4, 5, 6]]), jnp.array([[0, 8, 9]])

    def grads(policy):
        model = T5(dataclasses.replace(TINY, remat_policy=policy))

        def loss(p):
            return jnp.sum(model.apply({"params": p}, enc, dec) ** 2)

        return jax.jit(jax.grad(loss))(params)

    reference = grads("none")
    for policy in ("full", "dots_saveable"):  # float32: recomputation may reassociate sums (1.9e-5 seen on AVX-512)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads(policy), reference
        )


def test_bfloat16_compute_keeps_float32_params():
    config = dataclasses.replace(TINY, dtype="bfloat16")
    model, variables = _init(config, enc_len=3, dec_len=2)
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves(nn.unbox(variables))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    logits = model.apply(variables, jnp.array([[3, 4, 5]]), jnp.array([[0, 8]]))
    assert logits.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(logits)))


GIN_DIR = Path(__file__).resolve().parents[2] / "littlehelp" / "gin" / "models"


def config_from_gin(path, config_cls):
    """Parses one model gin file (as the CLI does) and builds its config class."""
    try:
        parse_gin([str(path)], [])
        return config_cls()
    finally:
        gin.clear_config()


@pytest.mark.parametrize(
    "size,published", [("small", 77e6), ("base", 248e6), ("large", 783e6), ("xl", 2.85e9), ("xxl", 11.1e9)]
)
def test_gin_sizes_match_published_t5_1_1_counts(size, published):
    config = config_from_gin(GIN_DIR / "t5_1_1" / f"{size}.gin", T5Config)
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    assert config.vocab_size == 32128
    assert abs(count_params(T5(config), tokens, tokens) / published - 1) < 0.02


def test_tiny_gin_builds_a_small_model():
    config = config_from_gin(GIN_DIR / "t5_1_1" / "tiny.gin", T5Config)
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    assert (config.emb_dim, config.num_encoder_layers, config.vocab_size) == (64, 2, 512)
    assert count_params(T5(config), tokens, tokens) < 1e6


SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("kv", None),
    ("layers", None),
)


def test_sharded_forward_matches_single_device(tiny):
    model, variables = tiny
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    enc, dec = jnp.tile(jnp.array([[3, 4, 5, 6, 0, 0]]), (4, 1)), jnp.ones((4, 5), jnp.int32)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, SHARDING_RULES)
    placed = jax.device_put(nn.unbox(variables), shardings)
    kernel = placed["params"]["encoder"]["layers"]["mlp"]["wi_0"]["kernel"]
    assert kernel.sharding.spec == jax.P(None, "fsdp", "tensor")
    with jax.set_mesh(mesh), nn.logical_axis_rules(SHARDING_RULES):
        sharded = jax.jit(lambda v: model.apply(v, enc, dec))(placed)
    assert sharded.sharding.spec == jax.P(("data", "fsdp"), None, "tensor")
    np.testing.assert_allclose(sharded, model.apply(variables, enc, dec), rtol=1e-5, atol=1e-5)
