"""The documented FLOPs formulas against a count of every matrix product in the traced program."""

import math

import jax
import jax.numpy as jnp
import pytest
from jax.extend import core as jex_core

from littlehelp import flops
from littlehelp.models import T5, DecoderLM, Encoder, EncoderConfig
from tests.helpers import TINY_DECODER, TINY_T5


def _sub_jaxprs(value):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def matmul_flops(jaxpr) -> float:
    """2 x multiply-adds of every dot_general, scan bodies counted once per iteration."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in lhs_contract)
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                total += repeat * matmul_flops(sub)
    return total


def _counted(fn, *args):
    return matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def test_t5_forward_and_train_flops_match_traced_count():
    model, batch, inputs, targets = T5(TINY_T5), 2, 24, 10
    enc = jnp.ones((batch, inputs), jnp.int32)
    dec = jnp.ones((batch, targets), jnp.int32)
    params = model.init(jax.random.key(0), enc, dec)
    forward = _counted(lambda p: model.apply(p, enc, dec), params)
    assert forward == pytest.approx(flops.t5_forward_flops(TINY_T5, batch, inputs, targets), rel=1e-9)

    def loss(p):
        return jnp.sum(model.apply(p, enc, dec))

    train = _counted(jax.value_and_grad(loss), params)
    assert train == pytest.approx(flops.TRAIN_MULTIPLIER * forward, rel=0.02)


def test_decoder_forward_flops_match_traced_count():
    model, batch, length = DecoderLM(TINY_DECODER), 3, 20
    tokens = jnp.ones((batch, length), jnp.int32)
    params = model.init(jax.random.key(0), tokens)
    counted = _counted(lambda p: model.apply(p, tokens), params)
    assert counted == pytest.approx(flops.decoder_forward_flops(TINY_DECODER, batch, length), rel=1e-9)


def test_encoder_forward_flops_match_traced_count():
    config = EncoderConfig(vocab_size=100, emb_dim=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=48)
    model, tokens = Encoder(config), jnp.ones((2, 12), jnp.int32)
    params = model.init(jax.random.key(0), tokens)
    counted = _counted(lambda p: model.apply(p, tokens), params)
    assert counted == pytest.approx(flops.encoder_forward_flops(config, 2, 12), rel=1e-9)


def test_attention_formula_by_hand():
    # One query/key length 4, d 8, 2 heads of 4: projections 2*1*(4*8*8*2 + 2*4*8*8) and QK/AV 2*2*2*4*4*4.
    assert flops.attention_flops(1, 4, 4, 8, 2, 2, 4) == 2 * (4 * 8 * 8 * 2 + 2 * 4 * 8 * 8) + 2 * 2 * 2 * 4 * 4 * 4
