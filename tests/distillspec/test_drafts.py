"""Drafts derived from the target: layer subsets against the target and a float64 pass through the same layers,
reduced-vocabulary heads against the full head, speculative decoding with a reduced-vocabulary draft against
target-only decoding (greedy) and the target's distribution (chi-square), token counts against numpy, the
derived run folder and its gin file through the distillation objective, and one-line refusals."""

import dataclasses
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from distillspec import drafts, speculative
from distillspec.objective import DistillationObjective
from littlehelp import checkpoints, config, losses, runs
from littlehelp.models import DecoderConfig, build_model
from tests.distillspec.helpers import (
    SIGNIFICANCE,
    chi_square_p_value,
    noisy_copy,
    sampled_first_two,
    sharpened,
    target_only,
    two_token_distributions,
)
from tests.distillspec.test_speculative import MODEL, NEW_TOKENS, PROMPT, PROMPTS, ROWS, VOCAB
from tests.helpers import random_params, save_params_only

TARGET = DecoderConfig(
    vocab_size=40,
    emb_dim=16,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=24,
    tie_embeddings=True,
    scale_tied_logits=False,
)
TOKENS = np.random.default_rng(0).integers(1, 40, (2, 7)).astype(np.int32)
BATCH = {"decoder_input_tokens": TOKENS}
DOCUMENTS = [np.random.default_rng(i).integers(1, 30, n).astype(np.int32) for i, n in enumerate((5, 9, 3, 12))]
TASK = "drafts_test_documents"  # DOCUMENTS in order, ids < 30, one split


def float64_logits(cfg: DecoderConfig, params, tokens: np.ndarray, layers) -> np.ndarray:
    """The target's forward pass through `layers` only (then its final norm and head), in float64 numpy:
    RMSNorm, rotate-half RoPE, grouped-query causal attention, SwiGLU."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    norm = lambda x, scale: x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * scale  # noqa: E731
    half = cfg.head_dim // 2
    angles = np.arange(tokens.shape[1])[:, None, None] * cfg.rope_max_wavelength ** (-np.arange(half) / half)

    def rope(x):  # [b, l, heads, head_dim]
        x1, x2 = x[..., :half], x[..., half:]
        cos, sin = np.cos(angles), np.sin(angles)
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    causal = np.tril(np.ones((tokens.shape[1],) * 2, bool))
    group = cfg.num_heads // cfg.num_kv_heads
    x = p["token_embedder"]["embedding"][tokens]
    for i in layers:
        layer = jax.tree.map(lambda w, i=i: w[i], p["layers"]) if cfg.scan_layers else p[f"layers_{i}"]
        h, a = norm(x, layer["pre_attention_norm"]["scale"]), layer["attention"]
        q, k, v = (np.einsum("bld,dhk->blhk", h, a[name]["kernel"]) for name in ("query", "key", "value"))
        q, k, v = rope(q) * cfg.head_dim**-0.5, np.repeat(rope(k), group, 2), np.repeat(v, group, 2)
        scores = np.where(causal, np.einsum("bqhk,bshk->bhqs", q, k), -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        attended = np.einsum("bhqs,bshk->bqhk", weights / weights.sum(-1, keepdims=True), v)
        x = x + np.einsum("blhk,hkd->bld", attended, a["out"]["kernel"])
        h, m = norm(x, layer["pre_mlp_norm"]["scale"]), layer["mlp"]
        gate = h @ m["wi_0"]["kernel"]
        x = x + (gate / (1 + np.exp(-gate)) * (h @ m["wi_1"]["kernel"])) @ m["wo"]["kernel"]
    x = norm(x, p["final_norm"]["scale"])
    if not cfg.tie_embeddings:
        return x @ p["logits_dense"]["kernel"]
    return x @ p["token_embedder"]["embedding"].T * (cfg.emb_dim**-0.5 if cfg.scale_tied_logits else 1.0)


def target_of(seed: int, **changes):
    """A random tiny target: TARGET with `changes`, and its params."""
    changed = dataclasses.replace(TARGET, **changes)
    return changed, random_params(build_model(changed), seed)


@pytest.mark.parametrize(
    "first, every, layers, changes",
    [
        (4, None, (0, 1, 2, 3), {}),
        (2, None, (0, 1), {}),
        (None, 3, (0, 3), {"scan_layers": False, "tie_embeddings": False}),
    ],
)
def test_a_layer_subset_is_the_target_with_all_layers_and_a_float64_pass_through_its_layers(
    first, every, layers, changes
):
    target_config, params = target_of(1, **changes)
    assert drafts.layer_indices(4, first, every) == layers
    draft_config, draft_params = drafts.layer_subset(target_config, params, layers)
    assert draft_config == dataclasses.replace(target_config, num_layers=len(layers))
    got = build_model(draft_config).logits(draft_params, BATCH)
    if len(layers) == 4:  # all of them (as every=1 and neither keep): the target exactly
        assert drafts.layer_indices(4, every=1) == drafts.layer_indices(4) == layers
        np.testing.assert_array_equal(got, build_model(target_config).logits(params, BATCH))
    np.testing.assert_allclose(got, float64_logits(target_config, params, TOKENS, layers), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("changes", [{"scale_tied_logits": True}, {"tie_embeddings": False, "scan_layers": False}])
def test_a_reduced_vocabulary_scores_its_ids_as_the_full_head_and_gives_the_others_probability_0(changes):
    target_config, params = target_of(2, **changes)
    ids = (1, 2, 5, 11, 17, 30, 39)
    reduced, reduced_params = drafts.reduced_vocabulary(target_config, params, ids)
    model = build_model(reduced)
    assert isinstance(model, drafts.ReducedVocabularyModel) and model.config.vocab_size == 40
    got = np.asarray(model.logits(reduced_params, BATCH))
    full = np.asarray(build_model(target_config).logits(params, BATCH))
    np.testing.assert_allclose(got[..., ids], full[..., ids], rtol=1e-5, atol=1e-5)
    outside = np.setdiff1d(np.arange(40), ids)
    assert np.all(got[..., outside] == drafts.OUTSIDE_LOGIT)
    probs = np.asarray(jax.nn.softmax(got, axis=-1))
    assert np.all(probs[..., outside] == 0)
    np.testing.assert_allclose(probs[..., ids], jax.nn.softmax(full[..., ids], axis=-1), rtol=1e-5, atol=1e-7)
    if changes.get("scan_layers", True):
        return

    @jax.jit
    def decoded(params):  # the decode path: the first 6 tokens in one prefill, then the 7th
        _, cache = model.prefill(params, model.init_cache(params, 2, 8), TOKENS[:, :6], jnp.array([6, 6]))
        return model.extend(params, cache, TOKENS[:, 6:])[0][:, 0]

    np.testing.assert_allclose(decoded(reduced_params), got[:, 6], rtol=1e-5, atol=1e-5)


def test_the_reduced_head_is_one_matmul_by_the_n_gathered_columns():
    reduced, params = drafts.reduced_vocabulary(*target_of(3), (0, 4, 9))
    model, hidden = build_model(reduced), jnp.ones((5, 16))
    assert params["head"]["kernel"].shape == (16, 3)
    # the head alone (no embeddings passed in) gives the logits: nothing is gathered per call
    np.testing.assert_array_equal(
        model.logits_from_hidden({"head": params["head"]}, hidden), model.logits_from_hidden(params, hidden)
    )
    text = jax.jit(model.logits_from_hidden).lower({"head": params["head"]}, hidden).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert len(dots) == 1 and "tensor<16x3xf32>" in dots[0] and "-> tensor<5x3xf32>" in dots[0]


@pytest.fixture(scope="module")
def target():
    """test_speculative's target model, its random params sharpened (numpy: nothing compiled)."""
    return MODEL, sharpened(random_params(MODEL, 0))


@pytest.fixture(scope="module")
def reduced_draft(target):
    """A noisy copy of the target with a head over the 8 ids (of 32) the target's greedy continuations use most."""
    counts = drafts.token_counts(target_only(target, PROMPTS, -1, NEW_TOKENS), VOCAB)
    reduced, params = drafts.reduced_vocabulary(MODEL.config, noisy_copy(target[1]), drafts.frequent_tokens(counts, 8))
    return build_model(reduced), params


def test_greedy_decoding_with_a_reduced_vocabulary_draft_is_the_targets(target, reduced_draft):
    expected = target_only(target, PROMPTS, -1, NEW_TOKENS)
    out = speculative.generate(target, reduced_draft, PROMPTS, gamma=3, max_new_tokens=NEW_TOKENS, eos_id=-1)
    np.testing.assert_array_equal(out.tokens, expected)
    unproposable = (expected != 0) & ~np.isin(expected, reduced_draft[0].config.token_ids)
    assert unproposable.any() and 0 < out.stats.acceptance_rate < 1  # those came from the target's residual


def test_sampling_with_a_reduced_vocabulary_draft_follows_the_target_distribution(target, reduced_draft):
    first, second = two_token_distributions(*target, PROMPT)
    joint = first[:, None] * second
    sampled = sampled_first_two(target, reduced_draft, [PROMPT] * ROWS, 1.0, 2)
    assert chi_square_p_value(sampled, joint) > SIGNIFICANCE
    proposable = np.isin(np.arange(VOCAB), reduced_draft[0].config.token_ids)
    # pairs with a token the draft never proposes: a good share of the target's mass, and of the draws
    assert joint[~(proposable[:, None] & proposable)].sum() > 0.2 and (~proposable[sampled]).any(1).mean() > 0.2


def test_token_counts_are_numpys_and_the_most_frequent_ids_break_ties_by_id():
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 50, size) for size in (7, 0, 40, 13)]
    ids, numbers = np.unique(np.concatenate(arrays), return_counts=True)
    expected = np.zeros(50, np.int64)
    expected[ids] = numbers
    np.testing.assert_array_equal(drafts.token_counts(arrays, 50), expected)
    assert drafts.frequent_tokens(np.array([3, 5, 5, 0, 3]), 3) == (0, 1, 2)  # id 4 ties with 0 and loses


def documents(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    """TASK's source: DOCUMENTS as {"targets": ids}, in order."""
    del split, shuffle_files, seed
    return tf.data.Dataset.from_generator(
        lambda: ({"targets": d} for d in DOCUMENTS), output_signature={"targets": tf.TensorSpec([None], tf.int32)}
    )


if TASK not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(documents, splits=["train"]),
        preprocessors=[],
        output_features={"targets": seqio.Feature(seqio.PassThroughVocabulary(30), add_eos=False)},
    )


@pytest.mark.parametrize("max_tokens", [20, 1000])
def test_a_tasks_token_counts_are_numpys_of_its_first_tokens(max_tokens):
    got = drafts.task_token_counts(TASK, 40, {"targets": 16}, max_tokens)
    np.testing.assert_array_equal(got, np.bincount(np.concatenate(DOCUMENTS)[:max_tokens], minlength=40))


def test_the_gin_file_distils_a_draft_derived_into_a_run_folder_from_the_target(tmp_path):
    """derived_smollm2.gin on a tiny target: the draft (its first 2 layers, a head over the 8 most frequent ids
    of the Task) is written once as a run folder that the run starts from and `runs.load_run` reads, the
    objective's draft is that folder's, and its loss (on fixed data here) is a JSD."""
    target_params = target_of(4)[1]
    save_params_only(target_params, tmp_path / "target")
    sizes = (
        "vocab_size",
        "emb_dim",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "mlp_dim",
        "rope_max_wavelength",
        "norm_eps",
        "tie_embeddings",
        "scale_tied_logits",
    )
    overrides = {
        **{f"decoder.DecoderConfig.{name}": repr(getattr(TARGET, name)) for name in sizes},
        "MODEL_DIR": str(tmp_path / "run"),
        "TARGET_CONFIG": "@decoder.DecoderConfig()",
        "TARGET_DIR": repr(str(tmp_path / "target")),
        "TASK": repr(TASK),
        "TASK_FEATURE_LENGTHS": "{'targets': 16}",
        "DRAFT_FIRST_LAYERS": "2",
        "DRAFT_VOCABULARY_SIZE": "8",
        "drafts.derived_folder.root": repr(str(tmp_path)),
        "PROMPT_LENGTH": "4",
        "GENERATION_LENGTH": "8",
        "DATA_SOURCE": "'fixed'",
    }
    config.import_configurable_modules()
    config.parse_gin(["distillspec/derived_smollm2.gin"], [f"{k}={v}" for k, v in overrides.items()])
    restore_path = config.bound_value("checkpoints.CheckpointConfig.restore_path")
    folder = restore_path.scoped_configurable_fn()
    written = (Path(folder) / drafts.RECORD).stat().st_mtime_ns
    assert restore_path.scoped_configurable_fn() == folder  # asked again: read, not written again
    assert (Path(folder) / drafts.RECORD).stat().st_mtime_ns == written
    objective = gin.query_parameter("%OBJECTIVE").scoped_configurable_fn()
    ids = drafts.frequent_tokens(np.bincount(np.concatenate(DOCUMENTS), minlength=40), 8)
    expected, params = drafts.reduced_vocabulary(*drafts.layer_subset(TARGET, target_params, (0, 1)), ids)
    assert objective.model.config == drafts.folder_config(folder) == expected and objective.target.config == TARGET
    assert objective.divergence == "jsd"
    assert checkpoints.saved_contents(folder) == (["model"], False)  # the run starts from it, fresh optimizer
    loaded = runs.load_run(folder)
    model, restored = loaded.model, loaded.params
    assert model == objective.model
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), params)
    inputs = np.random.default_rng(1).integers(1, 30, (2, 12))
    batch = {"decoder_input_tokens": inputs, "decoder_target_tokens": inputs, "decoder_loss_weights": np.ones((2, 12))}
    loss = jax.jit(lambda p: objective.loss(p, batch, jax.random.key(0), 0)[0])(
        {"model": restored, "target": target_params}
    )
    assert 0 < loss < np.log(2)  # JSD[0.5] is at most log 2


def test_every_divergence_to_a_reduced_vocabulary_head_has_finite_values_and_gradients():
    """q is 0 outside the N ids, yet RKL's and JSD's 0 * log 0 terms stay 0 (no NaN): the logit there is finite.
    FKL(p || q) is infinite in truth and shows it as a huge value."""
    reduced, params = drafts.reduced_vocabulary(*target_of(5), (1, 2, 5, 11, 17, 30, 39))
    model, rng = build_model(reduced), np.random.default_rng(5)
    hidden, p_logits, weights = rng.standard_normal((2, 3, 16)), 3 * rng.standard_normal((2, 3, 40)), jnp.ones((2, 3))

    @jax.jit
    def values_and_gradients(head):
        logits = lambda head: model.logits_from_hidden({"head": head}, hidden)  # noqa: E731
        return {
            kind: jax.value_and_grad(lambda h, k=kind: losses.divergence(k, logits(h), p_logits, weights).sum())(head)
            for kind in losses.DIVERGENCES
        }

    for kind, (value, grad) in values_and_gradients(params["head"]).items():
        assert np.isfinite(value) and (value > 1e6) == (kind == "fkl")
        assert np.isfinite(grad["kernel"]).all() and np.abs(grad["kernel"]).sum() > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: drafts.layer_indices(4, first=5),
            "layers first=5: must be an integer in [1, 4] (the target's layers)",
        ),
        (
            lambda: drafts.layer_indices(4, every=0),
            "layers every=0: must be an integer in [1, 4] (the target's layers)",
        ),
        (
            lambda: drafts.layer_indices(4, first=2, every=2),
            "a layer-subset draft keeps the first k layers or every m-th layer, not both (got first=2, every=2)",
        ),
        (
            lambda: drafts.layer_subset(TARGET, {}, (0, 4)),
            "layers [0, 4]: need one or more of the target's layers 0..3",
        ),
        (
            lambda: drafts.frequent_tokens(np.ones(40), 41),
            "vocabulary_size=41: must be an integer in [1, 40] (the target's vocabulary)",
        ),
        (
            lambda: drafts.reduced_vocabulary(TARGET, {}, (3, 2)),
            "reduced-vocabulary token ids must increase within [0, 40), got [3, 2]",
        ),
        (lambda: drafts.token_counts([np.array([3, 40])], 40), "token id 40 is outside the vocabulary of 40 ids"),
        (
            lambda: drafts.derived_folder(TARGET, "unused", vocabulary_size=8),
            "vocabulary_size=8: name the task (and its feature_lengths) whose tokens are counted",
        ),
        (
            lambda: drafts.folder_config("/nonexistent"),
            "/nonexistent holds no derived.json (not a folder drafts.derived_folder wrote)",
        ),
    ],
)
def test_bad_settings_are_refused_in_one_line(call, message):
    with pytest.raises(drafts.DraftError) as refused:
        call()
    assert str(refused.value).splitlines()[0] == message  # what the CLI prints (gin appends where it was called)


def test_fkl_towards_a_reduced_vocabulary_draft_is_refused_in_one_line():
    reduced, _ = drafts.reduced_vocabulary(*target_of(5), (1, 2, 5))
    with pytest.raises(config.ConfigError) as refused:
        DistillationObjective(build_model(reduced), build_model(TARGET), divergence="fkl")
    assert str(refused.value).splitlines()[0] == (
        "DistillationObjective.divergence 'fkl' is infinite for a "
        "reduced-vocabulary draft (q is 0 where p is not); use jsd, rkl or tvd"
    )
