"""Encoder-decoder speculative decoding and distillation: the decoder-only checks of test_speculative.py and
test_objective.py on tiny random T5s conditioned on ragged encoder inputs. Greedy output equals the target's
own stepwise decoding, sampling follows the target's distribution (chi-square), per-position acceptance is
the float64 1 - TVD, each model's encoder runs once per decode, the objective equals the float64 numpy
divergence for every data source, and mismatched inputs are refused in one line."""

import dataclasses

import jax
import numpy as np
import pytest

from distillspec import objective as distillation
from distillspec import speculative
from littlehelp import decoding, flops
from littlehelp.config import ConfigError
from littlehelp.models import DecoderConfig, T5Config, build_model, t5
from tests.distillspec.helpers import (
    SIGNIFICANCE,
    assert_acceptance_matches,
    chi_square_p_value,
    noisy_copy,
    numpy_average,
    padded,
    reference_loss,
    row_weights,
    sampled_inputs,
    target_only,
    two_position_acceptance,
    two_token_distributions,
)
from tests.helpers import random_params

VOCAB = 32
MODEL = build_model(
    T5Config(
        vocab_size=VOCAB,
        emb_dim=16,
        num_heads=2,
        head_dim=8,
        mlp_dim=32,
        num_encoder_layers=1,
        num_decoder_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        scan_layers=False,
    )
)
SOURCES = [[3, 4, 5], [6], [7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18], [19, 20, 21, 22, 23, 24], [25, 26]]
PROMPTS = [[0], [0, 9], [0], [0], [0, 4, 5], [0], [0, 7], [0]]  # the start token 0, some with a forced prefix
NEW_TOKENS = 10
EOS = 14  # greedy decoding emits it early in some rows and not at all in others (asserted)
ROWS = 4096  # identical inputs with different randomness for the distribution tests


def encoded(rows):
    """{"encoder_input_tokens": right-padded rows}."""
    return {"encoder_input_tokens": padded(rows)[0]}


INPUTS = encoded(SOURCES)


@pytest.fixture(scope="module")
def target():
    return MODEL, random_params(MODEL, 2)


@pytest.fixture(scope="module")
def draft(target):
    """The target's params plus noise: a draft that agrees with the target part of the time."""
    return MODEL, noisy_copy(target[1])


@pytest.fixture(scope="module")
def expected(target):
    """The target's own greedy decoding (`decoding.generate`), some rows ending at EOS."""
    tokens = target_only(target, PROMPTS, EOS, NEW_TOKENS, INPUTS)
    ends = (tokens == EOS).any(axis=1)
    assert ends.any() and not ends.all()
    return tokens


def lengths_of(tokens):
    """Tokens per row, up to and including the first EOS."""
    ends = (tokens == EOS).any(axis=1)
    return np.where(ends, np.argmax(tokens == EOS, axis=1) + 1, tokens.shape[1])


@pytest.fixture(scope="module")
def small_draft():
    """A draft of other sizes (its own encoder width): nothing of the target's encoding fits it."""
    small = build_model(dataclasses.replace(MODEL.config, emb_dim=8, mlp_dim=16, num_heads=1))
    return small, random_params(small, 3)


@pytest.mark.parametrize("gamma, other_sizes", [(1, False), (3, True)])
def test_greedy_equals_target_only_decoding_and_each_encoder_runs_once(
    gamma, other_sizes, target, draft, small_draft, expected, monkeypatch
):
    """Ragged encoder inputs and decoder prompts, EOS in some rows. T5.encode is traced once per model (each
    case's decode is compiled here only): at the start of the decode, never inside its rounds."""
    drafted, traced = small_draft if other_sizes else draft, []
    encode = t5.T5.encode
    monkeypatch.setattr(
        t5.T5,
        "encode",
        lambda module, *args, **kwargs: traced.append(module.config.emb_dim) or encode(module, *args, **kwargs),
    )
    out = speculative.generate(
        target, drafted, PROMPTS, gamma=gamma, max_new_tokens=NEW_TOKENS, eos_id=EOS, inputs=INPUTS
    )
    assert sorted(traced) == sorted([MODEL.config.emb_dim, drafted[0].config.emb_dim])
    np.testing.assert_array_equal(out.tokens, expected)
    np.testing.assert_array_equal(out.lengths, lengths_of(expected))
    if not other_sizes:  # a random draft of other sizes agrees with the target on nothing
        assert 0 < out.stats.acceptance_rate < 1


# ------------------------------------------------------------------------------------------------
# One round of sampling (gamma 2, one new token, temperature 1, top-k 12) against exact float64
# distributions from full (cache-free) forward passes.

SOURCE = encoded([[7, 8, 9, 0, 0]])  # one row, padded: the padding must be masked alike in both passes
TOP_K = 12


@pytest.fixture(scope="module")
def one_round(target, draft):
    """The first tokens [ROWS, 1] and the statistics of one speculative round per row, every row conditioned on
    SOURCE."""
    tokens, lengths = padded([[0]] * ROWS)
    inputs = {name: np.repeat(value, ROWS, axis=0) for name, value in SOURCE.items()}
    plan = speculative.Plan(2, 1, decoding.Sampling(1.0, TOP_K))
    out, produced, counters = speculative.decode(*target, *draft, tokens, lengths, 3, plan, inputs)
    return np.asarray(out), speculative.summarize(counters, 2, np.asarray(produced), 0.0)


def test_speculative_sampling_follows_the_target_distribution(target, draft, one_round):
    first, _ = two_token_distributions(*target, [0], SOURCE, top_k=TOP_K)
    assert chi_square_p_value(one_round[0], first) > SIGNIFICANCE
    # The draft alone is far from the target: the test can tell the two apart.
    assert 0.5 * np.abs(two_token_distributions(*draft, [0], SOURCE, top_k=TOP_K)[0] - first).sum() > 0.1


def test_acceptance_per_position_equals_one_minus_tvd(target, draft, one_round):
    """Positions 1 and 2 accept as the float64 sums of min(p, q) say (`helpers.two_position_acceptance`)."""
    expected = two_position_acceptance(
        two_token_distributions(*target, [0], SOURCE, top_k=TOP_K),
        two_token_distributions(*draft, [0], SOURCE, top_k=TOP_K),
    )
    stats = one_round[1]
    assert stats.rounds == 1
    assert_acceptance_matches(stats, expected, ROWS)
    assert 0.1 < expected[0] < 0.95  # neither trivial nor hopeless


DECODER = build_model(
    DecoderConfig(vocab_size=VOCAB, emb_dim=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, mlp_dim=16)
)


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(inputs=None), "an encoder-decoder target and draft need inputs={'encoder_input_tokens': [b, l]}"),
        (dict(inputs=encoded([[3], [4]])), "encoder_input_tokens (2, 1) do not fit 1 prompts (need [1, l])"),
        (dict(draft="decoder"), "the target is encoder-decoder and the draft decoder-only; both must be of one kind"),
        (
            dict(target="decoder", draft="decoder"),
            "a decoder-only target and draft take no encoder inputs, got encoder_input_tokens",
        ),
    ],
)
def test_mismatched_inputs_are_refused_in_one_line(call, message, target):
    decoder = (DECODER, {})  # refused before its parameters are read
    arguments = dict(target=target, draft=target, prompts=[[0]], gamma=2, max_new_tokens=2, inputs=encoded([[3]]))
    arguments |= {name: decoder if value == "decoder" else value for name, value in call.items()}
    with pytest.raises(speculative.SpeculativeError) as refused:
        speculative.generate(**arguments)
    assert str(refused.value) == message


# ------------------------------------------------------------------------------------------------
# The distillation objective on encoder-decoder features.

PARAMS = {"model": random_params(MODEL, 0), "target": random_params(MODEL, 1)}
MODELS = {"model": MODEL, "target": MODEL}
GENERATED = 6
RATES = {"fixed": 0.4, "target": 0.3, "draft": 0.3}


def objective(**knobs) -> distillation.DistillationObjective:
    """The distillation of one tiny T5 into another, with no decoder prompt: the continuation is the target."""
    return distillation.DistillationObjective(
        MODEL, MODEL, **({"prompt_length": 0, "generation_length": GENERATED, "chunk_size": 4} | knobs)
    )


def encoder_decoder_batch() -> dict[str, np.ndarray]:
    """Unpacked encoder-decoder features of 4 rows: ragged encoder inputs, row 0 of example weight 2, row 2
    all padding, and the last row's target ending in 3 padding positions."""
    rng = np.random.default_rng(0)
    targets = rng.integers(3, VOCAB, (4, GENERATED)).astype(np.int32)
    weights = np.ones((4, GENERATED), np.float32)
    targets[-1, -3:], weights[-1, -3:], targets[2], weights[2] = 0, 0.0, 0, 0.0
    example_weights = np.ones((4, GENERATED), np.float32)
    example_weights[0] = 2.0
    sources = padded([rng.integers(3, VOCAB, n) for n in (5, 2, 1, 3)])[0]
    sources[2] = 0  # the padding row has no input either
    return {
        "encoder_input_tokens": sources,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": weights,
        "example_weights": example_weights,
    }


def test_each_source_is_the_float64_divergence_given_the_encoder_inputs():
    """One mixture, one compilation: each source's loss equals the float64 divergence of both models given the
    batch's encoder inputs, on the batch's targets (fixed) or on `decoding.generate`'s samples given those
    inputs (target, draft); samples given other inputs differ."""
    mixture, batch = objective(data_source=RATES, divergence="jsd"), encoder_decoder_batch()
    loss = jax.jit(lambda p, b, r: mixture.loss(p, b, r, 0))
    flipped = dict(batch, encoder_input_tokens=batch["encoder_input_tokens"][::-1])
    by_source = {}
    for seed in range(20):  # draws enough for every source to come up (asserted)
        rng = jax.random.key(seed)
        value, logged = loss(PARAMS, batch, rng)
        by_source.setdefault(next(n for n in RATES if logged[f"source/{n}"] == 1), (rng, value, logged))
    assert by_source.keys() == RATES.keys()
    for name, (rng, value, logged) in by_source.items():
        if name == "fixed":
            inputs, weights = batch["decoder_input_tokens"], batch["decoder_loss_weights"] * batch["example_weights"]
        else:
            params, sample_key = PARAMS["target" if name == "target" else "model"], jax.random.split(rng)[1]
            inputs = sampled_inputs(MODEL, params, batch, sample_key, 0, GENERATED)[0]
            weights = row_weights(batch, 0, GENERATED)
            assert not np.array_equal(sampled_inputs(MODEL, params, flipped, sample_key, 0, GENERATED)[0], inputs)
        scored = {"encoder_input_tokens": batch["encoder_input_tokens"], "decoder_input_tokens": inputs}
        expected = reference_loss(MODELS, PARAMS, scored, weights, 0, "jsd")
        np.testing.assert_allclose(float(value), expected, rtol=2e-5)
        assert float(logged["weight"]) == pytest.approx(numpy_average(np.zeros(weights.shape), weights, "sequence")[1])


def test_train_flops_count_each_encoder_once_per_sampled_batch():
    batch = encoder_decoder_batch()
    size, inputs_length = batch["encoder_input_tokens"].shape
    forward = lambda length: flops.t5_forward_flops(MODEL.config, size, inputs_length, length)  # noqa: E731
    step = forward(1) - forward(0)  # one decoder token: the encoder is not run again
    expected = (flops.TRAIN_MULTIPLIER + 1) * forward(GENERATED) + forward(1) + GENERATED * step
    assert objective(data_source="draft").train_flops(batch) == pytest.approx(expected)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: distillation.DistillationObjective(MODEL, DECODER),
            "DistillationObjective.target is decoder-only and model (the draft) encoder-decoder; "
            "both must be of one kind",
        ),
        (lambda: objective(prompt_length=-1), "DistillationObjective.prompt_length must be an integer >= 0, got -1"),
    ],
)
def test_a_target_of_another_kind_and_a_negative_prompt_are_refused_in_one_line(build, message):
    with pytest.raises(ConfigError) as refused:
        build()
    assert str(refused.value).splitlines()[0] == message


@pytest.mark.parametrize(
    "drafted, batch, message",
    [
        (
            objective,
            lambda b: {k: v for k, v in b.items() if k != "encoder_input_tokens"},
            "an encoder-decoder draft and target need the batch's encoder_input_tokens "
            "(seqio's encoder_decoder features)",
        ),
        (
            objective,
            lambda b: dict(b, encoder_segment_ids=(b["encoder_input_tokens"] > 0).astype(np.int32)),
            "encoder-decoder batches must be unpacked (one example per row, pack=False), but the batch holds "
            "encoder_segment_ids",
        ),
        (
            lambda: distillation.DistillationObjective(DECODER, DECODER, prompt_length=1, generation_length=2),
            lambda b: b,
            "a decoder-only draft and target take no encoder inputs, but the batch holds encoder_input_tokens",
        ),
    ],
)
def test_a_batch_that_does_not_fit_the_models_is_refused_in_one_line(drafted, batch, message):
    with pytest.raises(ValueError) as refused:
        drafted().sequences(PARAMS, batch(encoder_decoder_batch()), jax.random.key(0))
    assert str(refused.value) == f"DistillationObjective: {message}"
