"""Sampling and KV-cache generation, checked against full recomputation and numpy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp import decoding
from littlehelp.models import DecoderConfig, DecoderLM, T5, T5Config

VOCAB = 40
DECODER = DecoderLM(DecoderConfig(vocab_size=VOCAB, emb_dim=16, num_layers=2, num_heads=4,
                                  num_kv_heads=2, head_dim=8, mlp_dim=24))
ENC_DEC = T5(T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24,
                      num_encoder_layers=2, num_decoder_layers=2))
PROMPTS = [[5, 6], [7, 8, 9, 10, 11], [12, 13, 14]]
NEW_TOKENS = 6
CHI2_999 = {4: 18.47, 9: 27.88}  # 99.9% quantiles of chi-square by degrees of freedom


@pytest.fixture(scope="module")
def decoder_params():
    """Parameters as init returns them: boxed with their logical axis names."""
    params = jax.jit(DECODER.init)(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]
    assert isinstance(params["token_embedder"]["embedding"], nn.Partitioned)
    return params


@pytest.fixture(scope="module")
def t5_params():
    ones = jnp.ones((1, 4), jnp.int32)
    return jax.jit(ENC_DEC.init)(jax.random.PRNGKey(1), ones, ones)["params"]


def _padded_prompts():
    tokens = np.zeros((len(PROMPTS), max(map(len, PROMPTS))), np.int32)
    for row, prompt in enumerate(PROMPTS):
        tokens[row, :len(prompt)] = prompt
    return jnp.asarray(tokens), jnp.asarray([len(p) for p in PROMPTS])


def _greedy_by_recomputation(logits_fn, start, length, eos_id):
    """Greedy decoding that reruns the whole sequence (fixed width, no cache) for every token."""
    sequence, out = list(start), []
    width = len(start) + length
    for _ in range(length):
        tokens = jnp.asarray([sequence + [0] * (width - len(sequence))])
        token = int(jnp.argmax(logits_fn(tokens)[0, len(sequence) - 1]))
        out.append(token)
        sequence.append(token)
        if token == eos_id:
            break
    return out + [0] * (length - len(out))


def _decoder_reference(params, eos_id):
    logits_fn = jax.jit(lambda t: DECODER.apply({"params": params}, t))
    return [_greedy_by_recomputation(logits_fn, p, NEW_TOKENS, eos_id) for p in PROMPTS]


def test_cached_greedy_decoder_matches_recomputation(decoder_params):
    tokens, lengths = _padded_prompts()
    got = decoding.generate_decoder(DECODER, decoder_params, tokens, lengths, NEW_TOKENS,
                                    jax.random.PRNGKey(0), eos_id=-1)
    np.testing.assert_array_equal(got, _decoder_reference(decoder_params, eos_id=-1))


def test_decoder_emits_padding_after_eos(decoder_params):
    tokens, lengths = _padded_prompts()
    free = decoding.generate_decoder(DECODER, decoder_params, tokens, lengths, NEW_TOKENS,
                                     jax.random.PRNGKey(0), eos_id=-1)
    eos_id = int(free[1, 2])  # a token the second row emits third
    got = np.asarray(decoding.generate_decoder(DECODER, decoder_params, tokens, lengths,
                                               NEW_TOKENS, jax.random.PRNGKey(0), eos_id=eos_id))
    first_eos = list(got[1]).index(eos_id)
    assert first_eos <= 2 and not got[1, first_eos + 1:].any()
    np.testing.assert_array_equal(got, _decoder_reference(decoder_params, eos_id))


def test_top_k_one_is_greedy(decoder_params):
    tokens, lengths = _padded_prompts()
    greedy = decoding.generate_decoder(DECODER, decoder_params, tokens, lengths, NEW_TOKENS,
                                       jax.random.PRNGKey(0), eos_id=-1)
    top1 = decoding.generate_decoder(DECODER, decoder_params, tokens, lengths, NEW_TOKENS,
                                     jax.random.PRNGKey(5), temperature=1.5, top_k=1, eos_id=-1)
    np.testing.assert_array_equal(top1, greedy)


def test_cached_greedy_t5_matches_recomputation(t5_params):
    inputs = jnp.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    got = decoding.generate_t5(ENC_DEC, t5_params, inputs, NEW_TOKENS, jax.random.PRNGKey(0),
                               eos_id=-1)
    for row in range(inputs.shape[0]):
        logits_fn = jax.jit(lambda t, row=row: ENC_DEC.apply({"params": t5_params},
                                                             inputs[row:row + 1], t))
        expected = _greedy_by_recomputation(logits_fn, [0], NEW_TOKENS, eos_id=-1)
        np.testing.assert_array_equal(got[row], expected)


def test_sampling_with_top_k_one_is_argmax():
    logits = jax.random.normal(jax.random.PRNGKey(3), (64, VOCAB))
    sampled = decoding.sample_logits(logits, jax.random.PRNGKey(4), temperature=2.0, top_k=1)
    np.testing.assert_array_equal(sampled, np.argmax(logits, axis=-1))


def _chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


def test_temperature_sampling_frequencies_match_softmax():
    logits = np.array([1.0, 0.2, -0.5, 0.7, -1.2])
    samples = decoding.sample_logits(jnp.tile(jnp.asarray(logits, jnp.float32), (20000, 1)),
                                     jax.random.PRNGKey(7), temperature=0.7)
    counts = np.bincount(np.asarray(samples), minlength=5)
    probs = np.exp(logits / 0.7) / np.exp(logits / 0.7).sum()
    assert _chi_square(counts, probs) < CHI2_999[4]
    untempered = np.exp(logits) / np.exp(logits).sum()
    assert _chi_square(counts, untempered) > CHI2_999[4]


def test_top_p_never_leaves_the_nucleus():
    logits = np.random.default_rng(0).normal(size=10) * 1.5
    probs = np.exp(logits) / np.exp(logits).sum()
    order = np.argsort(-probs)
    mass_before = np.cumsum(probs[order]) - probs[order]
    nucleus = order[mass_before < 0.75]
    assert 1 < len(nucleus) < 10
    samples = np.asarray(decoding.sample_logits(
        jnp.tile(jnp.asarray(logits, jnp.float32), (20000, 1)), jax.random.PRNGKey(9),
        temperature=1.0, top_p=0.75))
    assert set(samples.tolist()) == set(nucleus.tolist())
    counts = np.bincount(samples, minlength=10)[nucleus]
    renormalised = probs[nucleus] / probs[nucleus].sum()
    assert _chi_square(counts, renormalised) < 30.0

