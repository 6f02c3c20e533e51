"""The hybrid objective: masking statistics, RTD label rules, sampling, gradient paths, the loss sum
(each term against an independent computation), the generator's shared embeddings and FLOPs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from scipy import special

from littlehelp.data import tasks, vocab
from littlehelp.models import T5, T5Config, build_model
from littlehelp.objectives import EncoderDecoderObjective
from spactor import HybridObjective, generator_config
from spactor.objective import choose_masked, ordinary_tokens, task_vocabulary_size
from tests.data.fixtures import generated_documents
from tests.helpers import TINY_T5
from tests.spactor.helpers import DATA_VOCAB, SENTINELS, init, span_corrupted_batch, tiny_hybrid

FIRST_SENTINEL = DATA_VOCAB - SENTINELS


@pytest.fixture(scope="module")
def tiny():
    """(objective, batch, params) shared by the tests that only read them."""
    objective = tiny_hybrid(mlm_weight=2.0, rtd_weight=7.0, mask_rate=0.3)
    batch = span_corrupted_batch()
    return objective, batch, init(objective, batch)


def test_ordinary_tokens_exclude_padding_eos_sentinels_and_unused_ids():
    ids = jnp.array([0, 1, 2, 100, FIRST_SENTINEL - 1, FIRST_SENTINEL, DATA_VOCAB - 1, DATA_VOCAB, 263])
    expected = [False, False, True, True, True, False, False, False, False]
    assert ordinary_tokens(ids, FIRST_SENTINEL).tolist() == expected


@pytest.mark.parametrize("mask_rate", [0.15, 0.4])
def test_masking_fraction_is_binomial_and_never_touches_special_tokens(mask_rate):
    tokens = np.asarray(span_corrupted_batch(batch=64, length=128)["encoder_input_tokens"])
    eligible = (tokens >= 2) & (tokens < FIRST_SENTINEL)
    masked = np.asarray(choose_masked(jax.random.key(7), jnp.asarray(tokens), mask_rate, FIRST_SENTINEL))
    n = eligible.sum()
    assert not masked[~eligible].any()
    assert abs(masked.sum() - n * mask_rate) <= 5 * np.sqrt(n * mask_rate * (1 - mask_rate))
    other = np.asarray(choose_masked(jax.random.key(8), jnp.asarray(tokens), mask_rate, FIRST_SENTINEL))
    assert (other != masked).any()


def _uniform_generator(objective, batch):
    """Parameters whose generator predicts a uniform distribution (zero MLM head)."""
    params = init(objective, batch)
    head = params["generator"]["encoder"]["mlm_head"]
    head["kernel"] = jnp.zeros_like(head["kernel"])
    return params


def test_rtd_labels_and_replacements_follow_the_rules():
    # Four ordinary ids (2..5), so a uniform generator often samples the original token back.
    first_sentinel, data_vocab = 6, 12
    objective = tiny_hybrid(data_vocab_size=data_vocab, num_sentinels=6, mask_rate=0.5)
    batch = span_corrupted_batch(batch=16, length=64, first_sentinel=first_sentinel, data_vocab=data_vocab)
    params = _uniform_generator(objective, batch)
    out = jax.jit(objective.hybrid_inputs)(params, batch, jax.random.key(3))
    tokens, masked = np.asarray(batch["encoder_input_tokens"]), np.asarray(out.masked)
    corrupted, labels = np.asarray(out.corrupted), np.asarray(out.rtd_labels)
    ordinary = (tokens >= 2) & (tokens < first_sentinel)
    assert np.array_equal(corrupted[~masked], tokens[~masked])
    assert set(np.unique(corrupted[masked])) <= {2, 3, 4, 5}
    assert np.array_equal(labels, (masked & (corrupted != tokens)).astype(np.float32))
    assert np.array_equal(np.asarray(out.rtd_weights), ordinary.astype(np.float32))
    # A sample equal to the original is labelled original: with 4 equally likely ids, 1/4 of the masked.
    same = (masked & (corrupted == tokens)).sum()
    n = masked.sum()
    assert abs(same - n / 4) <= 5 * np.sqrt(n * 0.25 * 0.75) and labels[masked & (corrupted == tokens)].max() == 0


def test_low_temperature_samples_the_generator_argmax(tiny):
    _, batch, params = tiny
    objective = tiny_hybrid(temperature=1e-5, mask_rate=0.5)
    out = jax.jit(objective.hybrid_inputs)(params, batch, jax.random.key(0))
    masked = np.asarray(out.masked)
    argmax = np.asarray(jnp.argmax(out.generator_logits, axis=-1))
    assert masked.sum() > 0 and np.array_equal(np.asarray(out.corrupted)[masked], argmax[masked])
    assert np.all(argmax[masked] < FIRST_SENTINEL) and np.all(argmax[masked] >= 2)


TERMS = ("sc/loss", "rtd/loss", "mlm/loss", "loss")


def _term_grads(objective, batch, params):
    """Gradients of each loss term, from one compiled reverse pass over the vector of terms."""

    def terms(p):
        return jnp.stack([objective.loss(p, batch, jax.random.key(5), 0)[1][t] for t in TERMS])

    jacobian = jax.jit(jax.jacrev(terms))(params)
    return {t: jax.tree.map(lambda g, i=i: g[i], jacobian) for i, t in enumerate(TERMS)}


def _all_zero(tree):
    return all(bool(np.all(np.asarray(x) == 0)) for x in jax.tree.leaves(tree))


def _all_nonzero(tree):
    return all(bool(np.any(np.asarray(x) != 0)) for x in jax.tree.leaves(tree))


def test_gradients_reach_the_generator_only_through_the_mlm_loss(tiny):
    grads = _term_grads(*tiny)
    for metric in ("sc/loss", "rtd/loss"):
        assert _all_zero(grads[metric]["generator"]), metric
    mlm = grads["mlm/loss"]
    assert _all_nonzero(mlm["generator"])
    assert _all_zero(mlm["rtd_head"])
    # The MLM loss reaches the T5 model only through the shared token embeddings.
    assert _all_nonzero(mlm["t5"]["token_embedder"])
    assert _all_zero({k: v for k, v in mlm["t5"].items() if k != "token_embedder"})
    assert _all_nonzero(grads["loss"]["rtd_head"]) and _all_nonzero(grads["loss"]["t5"]["encoder"])


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - special.logsumexp(x, axis=-1, keepdims=True)


def test_loss_is_sc_plus_weighted_mlm_and_rtd_each_checked_independently(tiny):
    objective, batch, params = tiny
    rng = jax.random.key(11)
    total, metrics = jax.jit(objective.loss)(params, batch, rng, 0)
    inputs = jax.jit(objective.hybrid_inputs)(params, batch, jax.random.split(rng)[0])
    tokens, masked = np.asarray(batch["encoder_input_tokens"]), np.asarray(inputs.masked)
    # MLM: float64 cross-entropy of the generator's logits over the masked tokens.
    log_probs = _log_softmax(inputs.generator_logits)
    mlm = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0][masked].mean()
    # SC: the plain objective on the batch whose encoder input carries the replacements.
    sc_objective = EncoderDecoderObjective(build_model(TINY_T5), z_loss=1e-4, model_key="t5")
    sc, _ = jax.jit(sc_objective.loss)(params, dict(batch, encoder_input_tokens=inputs.corrupted), rng, 0)
    # RTD: float64 sigmoid cross-entropy of the head on the T5 encoder's states, over ordinary tokens.
    encoded = np.asarray(T5(TINY_T5).apply({"params": params["t5"]}, inputs.corrupted, method=T5.encode), np.float64)
    logits = encoded @ np.asarray(params["rtd_head"]["kernel"], np.float64) + float(params["rtd_head"]["bias"])
    labels, ordinary = np.asarray(inputs.rtd_labels), np.asarray(inputs.rtd_weights) > 0
    bce = np.logaddexp(0, logits) - labels * logits
    rtd = bce[ordinary].mean()
    np.testing.assert_allclose(float(metrics["mlm/loss"]), mlm, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["sc/loss"]), float(sc), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rtd/loss"]), rtd, rtol=1e-5)
    np.testing.assert_allclose(float(total), float(sc) + 2.0 * mlm + 7.0 * rtd, rtol=1e-5)
    assert float(metrics["weight"]) == float(batch["decoder_loss_weights"].sum())


def test_generator_reads_the_t5_token_embeddings(tiny):
    objective, batch, params = tiny
    shapes = jax.tree.map(lambda x: x.shape, params["generator"])
    assert shapes["embedding_projection"]["kernel"] == (TINY_T5.emb_dim, objective.generator_config.emb_dim)
    assert not any(s[0] == TINY_T5.vocab_size for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))
    table = params["t5"]["token_embedder"]["embedding"]
    tokens = batch["encoder_input_tokens"]
    apply = jax.jit(objective.generator.apply)
    logits = apply({"params": params["generator"]}, tokens, table)
    changed = apply({"params": params["generator"]}, tokens, table.at[int(tokens[0, 0])].add(1.0))
    assert not np.allclose(changed, logits)


def test_a_generator_as_wide_as_the_encoder_reads_the_table_without_a_projection():
    objective = HybridObjective(
        build_model(TINY_T5), generator_config(TINY_T5), data_vocab_size=DATA_VOCAB, num_sentinels=SENTINELS
    )
    params = init(objective, span_corrupted_batch())
    assert objective.generator_config.emb_dim == TINY_T5.emb_dim and "embedding_projection" not in params["generator"]


def test_generator_config_is_as_wide_and_a_third_as_deep_as_the_encoder():
    base = T5Config(
        vocab_size=32128,
        emb_dim=768,
        num_heads=12,
        head_dim=64,
        mlp_dim=2048,
        num_encoder_layers=12,
        num_decoder_layers=12,
    )
    config = generator_config(base)
    assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim, config.num_layers) == (
        768,
        12,
        64,
        2048,
        4,
    )
    quarter = generator_config(base, width_fraction=0.25, depth_fraction=1.0)
    assert (quarter.emb_dim, quarter.num_heads, quarter.mlp_dim, quarter.num_layers) == (192, 3, 512, 12)
    assert generator_config(dataclasses.replace(base, num_encoder_layers=2)).num_layers == 1  # at least 1
    for name in ("width_fraction", "depth_fraction"):
        with pytest.raises(ValueError, match=name):
            generator_config(base, **{name: 0.0})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"mask_id": 100}, "mask_id=100"),
        ({"data_vocab_size": 264}, "mask_id=264"),
        ({"data_vocab_size": 300}, "exceeds"),
        ({"mask_rate": 1.0}, "mask_rate"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=f"HybridObjective.*{message}"):
        tiny_hybrid(**settings)


def test_train_flops_add_the_generator_projection_and_rtd_head():
    objective = tiny_hybrid()
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in span_corrupted_batch().items()}
    b, length = spec["encoder_input_tokens"].shape
    g, big = objective.generator_config, TINY_T5.emb_dim
    d, h, k, f, v = g.emb_dim, g.num_heads, g.head_dim, g.mlp_dim, g.vocab_size
    layer = 2 * b * length * 4 * d * h * k + 4 * b * h * length * length * k + 2 * b * length * 3 * d * f
    forward = g.num_layers * layer + 2 * b * length * d * v + 2 * b * length * big * d + 2 * b * length * big
    sc = objective.span_corruption.train_flops(spec)
    assert objective.train_flops(spec) == pytest.approx(sc + 3 * forward, rel=1e-12)


def test_vocabulary_size_of_a_task_with_an_unloadable_vocabulary_names_the_file(tmp_path):
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(np.random.default_rng(1).bytes(2000))
    names = tasks.register_text_tasks(
        "spactor_garbage_vocab",
        tasks.TextSource(generated_documents),
        seqio.SentencePieceVocabulary(str(garbage), extra_ids=100),
    )
    with pytest.raises(vocab.VocabularyError, match=f"^vocabulary {garbage} cannot be loaded: DecodeError"):
        task_vocabulary_size(names[0])
