"""The stepwise model API and the one sampling loop, checked against full recomputation and numpy."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from littlehelp import decoding, inference
from littlehelp.models import DecoderConfig, DecoderLMModel, T5Config, build_model, rollback
from tests.helpers import TINY_DECODER

VOCAB = 40
DECODER = build_model(
    DecoderConfig(vocab_size=VOCAB, emb_dim=16, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=24)
)
ENC_DEC = build_model(
    T5Config(
        vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24, num_encoder_layers=2, num_decoder_layers=2
    )
)
PROMPTS = [[5, 6], [7, 8, 9, 10, 11], [12, 13, 14]]
NEW_TOKENS = 6
CHI2_999 = {4: 18.47, 9: 27.88}  # 99.9% quantiles of chi-square by degrees of freedom
ENCODER_INPUTS = jnp.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 14, 0, 0, 0]])


@pytest.fixture(scope="module")
def decoder_params():
    ones = jnp.ones((1, 4), jnp.int32)
    return jax.jit(DECODER.init)(jax.random.PRNGKey(0), {"decoder_input_tokens": ones})


@pytest.fixture(scope="module")
def t5_params():
    ones = jnp.ones((1, 4), jnp.int32)
    return jax.jit(ENC_DEC.init)(jax.random.PRNGKey(1), {"encoder_input_tokens": ones, "decoder_input_tokens": ones})


def _padded(rows):
    tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for row, values in enumerate(rows):
        tokens[row, : len(values)] = values
    return jnp.asarray(tokens), jnp.asarray([len(r) for r in rows], jnp.int32)


def _full_logits(model, params, tokens, inputs=None):
    """Teacher-forced logits of whole sequences [b, l] (no cache)."""
    batch = {"decoder_input_tokens": tokens} | ({"encoder_input_tokens": inputs} if inputs is not None else {})
    return model.logits(params, batch)


@pytest.mark.parametrize("kind", ["decoder", "t5"])
def test_prefill_then_extend_equals_full_recomputation(kind, decoder_params, t5_params):
    model, params, inputs = (
        (DECODER, decoder_params, None) if kind == "decoder" else (ENC_DEC, t5_params, ENCODER_INPUTS)
    )
    sequences = np.array([[3, 5, 6, 21, 22, 23, 24], [3, 7, 8, 9, 10, 25, 26], [3, 12, 13, 14, 27, 28, 29]], np.int32)
    prompts, lengths = _padded([list(row[:n]) for row, n in zip(sequences, (2, 4, 3))])
    cache = model.init_cache(params, 3, 12, None if inputs is None else {"encoder_input_tokens": inputs})
    last, cache = model.prefill(params, cache, prompts, lengths)
    full = _full_logits(model, params, jnp.asarray(sequences), inputs)
    np.testing.assert_allclose(last, full[jnp.arange(3), lengths - 1], rtol=1e-5, atol=1e-5)
    # Two more tokens per row, each row continuing after its own prompt.
    following = jnp.asarray([row[n : n + 2] for row, n in zip(sequences, (2, 4, 3))])
    step_logits, cache = model.extend(params, cache, following)
    expected = jnp.stack([full[r, n : n + 2] for r, n in enumerate((2, 4, 3))])
    np.testing.assert_allclose(step_logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache.lengths, lengths + 2)


@pytest.mark.parametrize("kind", ["decoder", "t5"])
def test_rollback_to_per_row_lengths_equals_never_extending(kind, decoder_params, t5_params):
    model, params, inputs = (
        (DECODER, decoder_params, None) if kind == "decoder" else (ENC_DEC, t5_params, ENCODER_INPUTS)
    )
    conditioning = None if inputs is None else {"encoder_input_tokens": inputs}
    prompts, lengths = _padded([[3, 5], [3, 7, 8], [3, 12, 13, 14]])
    drafted = jnp.asarray([[30, 31, 32], [33, 34, 35], [36, 37, 38]])
    kept = jnp.asarray([0, 2, 1])  # each row keeps its own number of drafted tokens
    follow = jnp.asarray([[20, 21], [22, 23], [24, 25]])

    # Each side compiled as one program (op by op, the many new shapes took most of the time).
    @jax.jit
    def rolled_back_then_followed(conditioning, follow):
        _, start = model.prefill(params, model.init_cache(params, 3, 16, conditioning), prompts, lengths)
        _, extended = model.extend(params, start, drafted)
        return model.extend(params, rollback(extended, lengths + kept), follow)

    @jax.jit
    def never_extended_then_followed(row_cond, tokens, follow):
        cache = model.init_cache(params, 1, 16, row_cond)
        _, cache = model.prefill(params, cache, tokens, jnp.asarray([tokens.shape[1]]))
        return model.extend(params, cache, follow)[0]

    got, got_cache = rolled_back_then_followed(conditioning, follow)
    # Reference: a fresh cache fed only the kept tokens, row by row, then the same follow-up.
    for row in range(3):
        row_cond = None if inputs is None else {"encoder_input_tokens": inputs[row : row + 1]}
        tokens = jnp.concatenate([prompts[row, : lengths[row]], drafted[row, : kept[row]]])[None]
        want = never_extended_then_followed(row_cond, tokens, follow[row : row + 1])
        np.testing.assert_allclose(got[row], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_cache.lengths, lengths + kept + 2)


@pytest.mark.parametrize("kind", ["decoder", "t5"])
def test_input_embeddings_of_the_tokens_give_the_same_logits(kind, decoder_params, t5_params):
    model, params = (DECODER, decoder_params) if kind == "decoder" else (ENC_DEC, t5_params)
    tokens = jnp.asarray([[3, 5, 6, 7], [3, 8, 9, 0]])
    batch = {"decoder_input_tokens": tokens, "encoder_input_tokens": ENCODER_INPUTS[:2]}
    fed = tokens if kind == "decoder" else ENCODER_INPUTS[:2]
    np.testing.assert_allclose(
        model.logits(params, batch, input_embeddings=model.embed(params, fed)),
        model.logits(params, batch),
        rtol=1e-6,
        atol=1e-6,
    )
    hidden = model.hidden_states(params, batch)
    np.testing.assert_allclose(
        model.logits_from_hidden(params, hidden), model.logits(params, batch), rtol=1e-6, atol=1e-6
    )


def test_prefill_takes_a_soft_prompt(decoder_params):
    """A decoder prompt given as embeddings decodes as the same prompt given as tokens."""
    prompts, lengths = _padded([[3, 5, 6], [3, 7, 0]])
    embeddings = DECODER.embed(decoder_params, prompts)
    cache = DECODER.init_cache(decoder_params, 2, 8)
    by_tokens, _ = DECODER.prefill(decoder_params, cache, prompts, lengths)
    by_embeddings, _ = DECODER.prefill(decoder_params, cache, prompts, lengths, input_embeddings=embeddings)
    np.testing.assert_allclose(by_embeddings, by_tokens, rtol=1e-6, atol=1e-6)


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
    logits_fn = jax.jit(lambda t: _full_logits(DECODER, params, t))
    return [_greedy_by_recomputation(logits_fn, p, NEW_TOKENS, eos_id) for p in PROMPTS]


def _generate(params, eos_id=-1, sampling=decoding.Sampling(), rng=0):
    tokens, lengths = _padded(PROMPTS)
    return decoding.generate(DECODER, params, tokens, lengths, NEW_TOKENS, jax.random.PRNGKey(rng), sampling, eos_id)


def test_greedy_decoder_matches_recomputation(decoder_params):
    np.testing.assert_array_equal(_generate(decoder_params), _decoder_reference(decoder_params, eos_id=-1))


def test_generate_after_a_soft_prompt_equals_generating_after_those_tokens(decoder_params):
    """Soft prompt = the embeddings of a hard prefix: greedy output equals recomputation after prefix + prompt."""
    prefix = jnp.asarray([[21, 22, 23]] * len(PROMPTS))
    tokens, lengths = _padded(PROMPTS)
    soft = DECODER.embed(decoder_params, prefix)
    got = decoding.generate(
        DECODER, decoder_params, tokens, lengths, NEW_TOKENS, jax.random.PRNGKey(0), eos_id=-1, prompt_embeddings=soft
    )
    logits_fn = jax.jit(lambda t: _full_logits(DECODER, decoder_params, t))
    expected = [_greedy_by_recomputation(logits_fn, [21, 22, 23] + p, NEW_TOKENS, -1) for p in PROMPTS]
    np.testing.assert_array_equal(got, expected)
    plain = decoding.generate(DECODER, decoder_params, tokens, lengths, NEW_TOKENS, jax.random.PRNGKey(0), eos_id=-1)
    assert not np.array_equal(got, plain)  # the soft prompt conditions the continuation


def test_decoder_emits_padding_after_eos(decoder_params):
    eos_id = int(_generate(decoder_params)[1, 2])  # a token the second row emits third
    got = np.asarray(_generate(decoder_params, eos_id=eos_id))
    first_eos = list(got[1]).index(eos_id)
    assert first_eos <= 2 and not got[1, first_eos + 1 :].any()
    np.testing.assert_array_equal(got, _decoder_reference(decoder_params, eos_id))


def test_top_k_one_is_greedy(decoder_params):
    top1 = _generate(decoder_params, sampling=decoding.Sampling(temperature=1.5, top_k=1), rng=5)
    np.testing.assert_array_equal(top1, _generate(decoder_params))


def test_greedy_t5_matches_recomputation(t5_params):
    size = ENCODER_INPUTS.shape[0]
    got = decoding.generate(
        ENC_DEC,
        t5_params,
        jnp.zeros((size, 1), jnp.int32),
        jnp.ones(size, jnp.int32),
        NEW_TOKENS,
        jax.random.PRNGKey(0),
        eos_id=-1,
        inputs={"encoder_input_tokens": ENCODER_INPUTS},
    )
    for row in range(size):
        logits_fn = jax.jit(lambda t, row=row: _full_logits(ENC_DEC, t5_params, t, ENCODER_INPUTS[row : row + 1]))
        np.testing.assert_array_equal(got[row], _greedy_by_recomputation(logits_fn, [0], NEW_TOKENS, eos_id=-1))


def test_filtered_distribution_is_what_sampling_draws_from():
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(1, 12)) * 2, jnp.float32)
    probs = np.asarray(decoding.filtered_distribution(logits, temperature=0.8, top_k=6, top_p=0.9))[0]
    samples = decoding.sample_logits(jnp.tile(logits, (20000, 1)), jax.random.PRNGKey(3), 0.8, 6, 0.9)
    counts = np.bincount(np.asarray(samples), minlength=12)
    support = probs > 0
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(support)) and support.sum() <= 6
    assert _chi_square(counts[support], probs[support]) < CHI2_999.get(int(support.sum()) - 1, 30.0)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)
    greedy = np.asarray(decoding.filtered_distribution(logits, temperature=0.0))[0]
    assert greedy[int(np.argmax(logits))] == 1.0 and greedy.sum() == 1.0


def test_sampling_with_top_k_one_is_argmax():
    logits = jax.random.normal(jax.random.PRNGKey(3), (64, VOCAB))
    sampled = decoding.sample_logits(logits, jax.random.PRNGKey(4), temperature=2.0, top_k=1)
    np.testing.assert_array_equal(sampled, np.argmax(logits, axis=-1))


def _chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


def test_temperature_sampling_frequencies_match_softmax():
    logits = np.array([1.0, 0.2, -0.5, 0.7, -1.2])
    samples = decoding.sample_logits(
        jnp.tile(jnp.asarray(logits, jnp.float32), (20000, 1)), jax.random.PRNGKey(7), temperature=0.7
    )
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
    samples = np.asarray(
        decoding.sample_logits(
            jnp.tile(jnp.asarray(logits, jnp.float32), (20000, 1)), jax.random.PRNGKey(9), temperature=1.0, top_p=0.75
        )
    )
    assert set(samples.tolist()) == set(nucleus.tolist())
    counts = np.bincount(samples, minlength=10)[nucleus]
    renormalised = probs[nucleus] / probs[nucleus].sum()
    assert _chi_square(counts, renormalised) < 30.0


def test_t5_embedding_table_is_what_embed_looks_up(t5_params):
    table = np.asarray(ENC_DEC.embedding_table(t5_params))
    assert table.shape == (VOCAB, 16)
    np.testing.assert_array_equal(ENC_DEC.embed(t5_params, ENCODER_INPUTS), table[np.asarray(ENCODER_INPUTS)])


# ------------------------------------------------------------------------------------------------
# The context length: a prompt plus its new tokens longer than the model's is refused before any cache.

SHORT = build_model(dataclasses.replace(DECODER.config, context_length=11))  # PROMPTS (width 5) + NEW_TOKENS fit


def test_a_request_at_the_context_length_decodes_as_without_a_limit(decoder_params):
    """`_generate` (no limit) equals recomputation (`test_greedy_decoder_matches_recomputation`)."""
    tokens, lengths = _padded(PROMPTS)
    got = decoding.generate(SHORT, decoder_params, tokens, lengths, NEW_TOKENS, jax.random.PRNGKey(0), eos_id=-1)
    np.testing.assert_array_equal(got, _generate(decoder_params))


def test_a_request_past_the_context_length_is_refused_before_any_cache(decoder_params, monkeypatch):
    monkeypatch.setattr(DecoderLMModel, "init_cache", lambda *args, **kwargs: pytest.fail("a cache was allocated"))
    tokens, lengths = _padded(PROMPTS)
    with pytest.raises(decoding.ContextLengthError) as refused:
        decoding.generate(SHORT, decoder_params, tokens, lengths, NEW_TOKENS + 1, jax.random.PRNGKey(0), eos_id=-1)
    assert str(refused.value) == (
        "prompt of 5 tokens + 7 new tokens = 12 exceeds the model's context length of 11 "
        "tokens; shorten the prompt or ask for fewer new tokens"
    )


@pytest.mark.parametrize("new_tokens", [3, 4])
def test_infer_refuses_a_prompt_past_the_context_length_before_reading_parameters(new_tokens, monkeypatch, tmp_path):
    """ "hello" is 5 byte tokens: 5 + 3 fits an 8-token context and is decoded; 5 + 4 is refused before the
    parameters are read and before anything is written."""
    model = build_model(dataclasses.replace(TINY_DECODER, context_length=8))
    calls = []
    monkeypatch.setattr(inference, "restore_run_params", lambda *args, **kwargs: calls.append("restore") or ({}, 0))
    monkeypatch.setattr(
        inference,
        "decode_examples",
        lambda model, params, batch, config, eos_id: (
            calls.append((config.prompt_length, config.max_decode_length))
            or (batch["decoder_input_tokens"], np.zeros((1, 1), int))
        ),
    )
    decode = functools.partial(
        inference.infer,
        str(tmp_path),
        model,
        prompt="hello",
        vocabulary=seqio.ByteVocabulary(),
        decoding_config=inference.DecodingConfig(max_decode_length=new_tokens),
    )
    if new_tokens == 3:
        decode()
        assert calls == ["restore", (5, 3)]
        return
    with pytest.raises(
        decoding.ContextLengthError, match=r"^prompt of 5 tokens \+ 4 new tokens = 9 exceeds the model's"
    ):
        decode()
    assert not calls and not list(tmp_path.iterdir())


def test_infer_labels_a_prompt_as_the_prompt_in_model_dir(monkeypatch, tmp_path):
    """Prompt mode records {"prompt", "prediction"} in MODEL_DIR/inference.jsonl (no "target": the prompt is
    not a reference), and logs the prompt as the prompt."""
    model = build_model(TINY_DECODER)
    monkeypatch.setattr(inference, "restore_run_params", lambda *args, **kwargs: ({}, 7))
    monkeypatch.setattr(
        inference,
        "decode_examples",
        lambda model, params, batch, config, eos_id: (
            batch["decoder_input_tokens"],
            np.asarray(seqio.ByteVocabulary().encode(" world"))[None],
        ),
    )
    logged = []
    monkeypatch.setattr(inference.logging, "info", lambda message, *args: logged.append(message % args))
    records = inference.infer(str(tmp_path), model, prompt="hello", vocabulary=seqio.ByteVocabulary())
    assert records == [{"prompt": "hello", "prediction": " world"}]
    assert [json.loads(line) for line in (tmp_path / "inference.jsonl").read_text().splitlines()] == records
    assert logged[0] == "prompt: hello\n  prediction:  world"
