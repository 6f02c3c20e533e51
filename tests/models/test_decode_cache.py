"""The decoding cache: rows written at each row's slots, the layer stack reading it without rebuilding it,
scanned and unrolled stacks decoding alike."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from littlehelp.models import DecoderConfig, build_model
from littlehelp.models.attention import write_rows

from .test_t5 import unstack_layers

TINY = DecoderConfig(vocab_size=40, emb_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=24)
SLOTS = 11  # no other dimension of TINY's decoding shapes has this size


def _filled(model, params, lengths=(3, 6)):
    """A cache of SLOTS slots holding `lengths` prompt tokens per row."""
    prompts = jnp.arange(1, 7)[None].repeat(len(lengths), 0) + 5
    return model.prefill(params, model.init_cache(params, len(lengths), SLOTS), prompts, jnp.asarray(lengths))[1]


def test_write_rows_puts_each_rows_tokens_at_its_slots_and_drops_slots_past_the_end():
    cache = jnp.zeros((2, 1, 4, 1))  # [b, kv_heads, slots, d]
    rows = jnp.array([[1.0, 2.0], [3.0, 4.0]])[:, :, None, None]  # [b, l, kv_heads, d]
    written = write_rows(cache, rows, jnp.array([[1, 2], [3, 4]]))
    np.testing.assert_array_equal(written[:, 0, :, 0], [[0, 1, 2, 0], [0, 0, 0, 3]])


def test_extend_scans_the_layers_without_rebuilding_the_cache():
    """The layer scan outputs only the new tokens' keys and values [layers, b, k, kv_heads, d]; the cache
    is written once, after it (a scan that outputs the cache copies all of it at every call)."""
    model = build_model(TINY)
    params = nn.unbox(model.init(jax.random.key(0), {"decoder_input_tokens": jnp.ones((1, 4), jnp.int32)}))
    cache = _filled(model, params)
    program = jax.make_jaxpr(model.extend)(params, cache, jnp.ones((2, 3), jnp.int32))
    scans = [eqn for eqn in _equations(program.jaxpr) if eqn.primitive.name == "scan"]
    assert scans
    outputs = [var.aval.shape for eqn in scans for var in eqn.outvars]
    assert (TINY.num_layers, 2, 3, TINY.num_kv_heads, TINY.head_dim) in outputs
    assert not any(SLOTS in shape for shape in outputs), outputs


def test_scanned_and_unrolled_stacks_decode_alike():
    scanned, unrolled = build_model(TINY), build_model(dataclasses.replace(TINY, scan_layers=False))
    params = nn.unbox(scanned.init(jax.random.key(0), {"decoder_input_tokens": jnp.ones((1, 4), jnp.int32)}))
    results = []
    for model, model_params in ((scanned, params), (unrolled, unstack_layers(params))):
        logits, cache = model.extend(model_params, _filled(model, model_params), jnp.array([[7, 8], [9, 10]]))
        results.append((logits, jax.tree.leaves(cache.layers)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for want, got in zip(*(leaves for _, leaves in results)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _equations(jaxpr):
    """Every equation of `jaxpr` and of the programs nested in it."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub)
