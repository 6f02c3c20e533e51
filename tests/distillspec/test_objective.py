"""DistillSpec's objective: the loss equals a float64 numpy divergence on the same tokens for every
divergence and source, averaged per sequence (the paper's) or per token with row weights and EOS
honoured, on-policy samples come from the current draft, the target is frozen (no gradient, no optimizer
state), the mixture draws its sources at the configured rates, bad knobs are refused by name, and the
gin files parse and run through the CLI."""

import dataclasses
import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distillspec.objective import DistillationObjective, averaging_weights, continuation_weights
from littlehelp import checkpoints, config, frozen, losses, main, metrics, partitioning, trainer
from littlehelp.config import ConfigError
from littlehelp.models import DecoderConfig, build_model
from littlehelp.objectives import Curriculum, DecoderObjective
from littlehelp.optimizers import Optimizer
from tests.distillspec import helpers
from tests.distillspec.helpers import numpy_average, numpy_divergence
from tests.helpers import TINY_TIED_DECODER, lm_data, random_params, save_params_only

VOCAB = 264  # the byte vocabulary of the in-memory docstrings task fits
DRAFT = build_model(TINY_TIED_DECODER)  # tied, as draft_smollm2.gin
TARGET = build_model(
    DecoderConfig(vocab_size=VOCAB, emb_dim=24, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
)
PROMPT, GENERATED = 6, 10


def objective(**knobs) -> DistillationObjective:
    return DistillationObjective(
        DRAFT, **({"target": TARGET, "prompt_length": PROMPT, "generation_length": GENERATED, "chunk_size": 4} | knobs)
    )


def synthetic_batch(length: int = PROMPT + GENERATED) -> dict[str, np.ndarray]:
    """LM features of 4 rows of random tokens: row 0 of example weight 2, row 2 all padding, and the last
    row ending in 3 padding positions."""
    targets = np.random.default_rng(0).integers(3, VOCAB, (4, length)).astype(np.int32)
    weights = np.ones((4, length), np.float32)
    targets[-1, -3:], weights[-1, -3:], weights[2] = 0, 0.0, 0.0
    example_weights = np.ones((4, length), np.float32)
    example_weights[0] = 2.0
    inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    return {
        "decoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": weights,
        "example_weights": example_weights,
    }


PARAMS = {"model": random_params(DRAFT, 0), "target": random_params(TARGET, 1)}
MODELS = {"model": DRAFT, "target": TARGET}


def reference_loss(
    params, inputs, weights, kind: str = "fkl", temperature: float = 1.0, beta: float = 0.5, average: str = "sequence"
) -> float:
    """The averaged divergence over the continuation of decoder inputs `inputs` (`helpers.reference_loss`)."""
    return helpers.reference_loss(
        MODELS, params, {"decoder_input_tokens": inputs}, weights, PROMPT, kind, temperature, beta, average
    )


def sampled_inputs(model, params, batch, key) -> tuple[np.ndarray, np.ndarray]:
    """Prompt + `decoding.generate`'s continuation as decoder inputs, and the continuation."""
    return helpers.sampled_inputs(model, params, batch, key, PROMPT, GENERATED)


def row_weights(batch) -> np.ndarray:
    """Each row's weight (its last prompt token's) on every sampled token."""
    return helpers.row_weights(batch, PROMPT, GENERATED)


@pytest.mark.parametrize(
    "kind, temperature, beta, average",
    [
        ("fkl", 1.0, 0.5, "sequence"),
        ("rkl", 2.0, 0.5, "token"),
        ("jsd", 1.5, 0.3, "sequence"),
        ("tvd", 1.0, 0.5, "token"),
    ],
)
def test_fixed_source_loss_is_the_float64_divergence_on_the_batch(kind, temperature, beta, average):
    batch, params = synthetic_batch(), PARAMS
    loss, logged = jax.jit(
        lambda p, b: objective(divergence=kind, temperature=temperature, beta=beta, average=average).loss(
            p, b, jax.random.key(0), 0
        )
    )(params, batch)
    weights = (batch["decoder_loss_weights"] * batch["example_weights"])[:, PROMPT:]
    expected = reference_loss(params, batch["decoder_input_tokens"], weights, kind, temperature, beta, average)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    # the denominator: rows 0 (weight 2), 1 and 3; or their tokens
    count = 2 + 1 + 1 if average == "sequence" else 2 * GENERATED + GENERATED + GENERATED - 3
    assert float(logged["divergence"]) == float(loss) and float(logged["weight"]) == pytest.approx(count, rel=1e-6)


@pytest.mark.parametrize("kind", ["fkl", "jsd"])
def test_stored_labels_of_every_token_give_the_live_targets_fixed_data_loss_and_gradient(kind):
    batch = synthetic_batch()
    labels = losses.top_k_labels(TARGET.logits(PARAMS["target"], batch), VOCAB)  # k = vocab
    flat = lambda x: np.asarray(x).reshape(x.shape[0], -1)  # noqa: E731  as the converters give them
    stored = batch | {
        "teacher_ids": flat(labels.ids),
        "teacher_log_probs": flat(labels.log_probs),
        "teacher_log_rest": np.asarray(labels.log_rest),
    }
    live = lambda p: objective(divergence=kind).loss(p, batch, jax.random.key(0), 0)[0]  # noqa: E731
    from_store = lambda p: objective(divergence=kind, target=None).loss(p, stored, jax.random.key(0), 0)[0]  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(live))(PARAMS)
    got, got_grads = jax.jit(jax.value_and_grad(from_store))({"model": PARAMS["model"]})
    np.testing.assert_allclose(float(got), float(value), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_grads["model"]), jax.tree.leaves(grads["model"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    shaped = {"decoder_input_tokens": batch["decoder_input_tokens"]}
    assert objective(target=None).train_flops(shaped) == 3 * DRAFT.forward_flops(shaped)
    with pytest.raises(ConfigError, match="needs data_source 'fixed'"):
        objective(target=None, data_source="draft")
    with pytest.raises(ConfigError, match="temperature=2.0 with stored labels"):
        objective(target=None, temperature=2.0)


@pytest.mark.parametrize("average", ["sequence", "token"])
def test_the_average_weights_sequences_and_tokens_as_float64_numpy(average):
    """Random logits; rows of weight 1, 2, 0, 0.5 and 1 whose sampled continuations stop at their first EOS."""
    rng = np.random.default_rng(3)
    student, teacher = (3 * rng.normal(size=(5, 7, 11)).astype(np.float32) for _ in range(2))
    tokens = rng.integers(3, 11, (5, 7))
    tokens[0, 2], tokens[3, 0], tokens[4, 5] = 2, 2, 2  # EOS (2) ends rows 0, 3 and 4 early
    rows = np.array([[1.0], [2.0], [0.0], [0.5], [1.0]], np.float32)

    @jax.jit
    def averaged(student, teacher, tokens, rows):
        averaging = averaging_weights(continuation_weights(tokens, rows, eos_id=2), average)
        return jnp.sum(losses.divergence("jsd", student, teacher, averaging)) / jnp.sum(averaging), jnp.sum(averaging)

    weights = np.where(np.cumsum(tokens == 2, axis=1) - (tokens == 2) == 0, rows, 0.0)  # up to the first EOS
    expected = numpy_average(numpy_divergence("jsd", student, teacher, 1.0, 0.5), weights, average)
    np.testing.assert_allclose(averaged(student, teacher, tokens, rows), expected, rtol=1e-5)
    np.testing.assert_array_equal(averaging_weights(jnp.zeros((2, 3)), average), np.zeros((2, 3)))  # no 0 / 0


def test_on_policy_samples_come_from_the_current_draft_and_the_target_gets_no_optimizer_state(tmp_path):
    data = lm_data(batch_size=4, length=PROMPT + GENERATED)
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    placed = next(iter(trainer.GlobalBatches(data, mesh)))
    batch = jax.device_get(placed)
    target_params = PARAMS["target"]
    save_params_only(target_params, tmp_path / "target")
    save_params_only(PARAMS["model"], tmp_path / "draft")  # the run starts from it (no compiled initialiser)
    on_policy = objective(data_source="draft")
    adam = Optimizer(optax.adam(0.05), optax.constant_schedule(0.05))
    start = checkpoints.CheckpointConfig(restore_path=str(tmp_path / "draft"))
    run = trainer.Trainer(
        str(tmp_path / "run"),
        Curriculum.single(on_policy),
        adam,
        data,
        mesh,
        partitioning.DEFAULT_RULES,
        start,
        frozen_models={"target": frozen.FrozenModel(path=str(tmp_path / "target"), model=TARGET)},
    )
    state, _ = run.restore_or_init()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert set(state.params) == {"model"} and paths and not any("target" in p for p in paths)
    step, rng = run.step_fn(on_policy), jax.random.key(7)
    drafts, logged = [], []
    for _ in range(2):
        drafts.append(jax.device_get(state.params["model"]))
        state, step_metrics = step(state, placed, rng)
        logged.append(float(step_metrics["loss"]))
    keys = [jax.random.split(jax.random.fold_in(rng, s))[1] for s in range(2)]  # the loss's sampling key per step
    samples = [sampled_inputs(DRAFT, draft, batch, key) for draft, key in zip(drafts, keys)]
    stale, _ = sampled_inputs(DRAFT, drafts[0], batch, keys[1])
    assert not np.array_equal(stale, samples[1][0])  # one step changed what the draft samples
    for (inputs, _), draft, loss in zip(samples, drafts, logged):
        np.testing.assert_allclose(
            loss, reference_loss({"model": draft, "target": target_params}, inputs, row_weights(batch)), rtol=2e-5
        )
    assert (
        abs(reference_loss({"model": drafts[0], "target": target_params}, stale, row_weights(batch)) - logged[1]) > 1e-4
    )
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.frozen.params["target"]), target_params)


def test_mixture_draws_sources_at_their_rates_and_each_branch_scores_its_own_data():
    rates = {"fixed": 0.5, "target": 0.3, "draft": 0.2}
    mixture = objective(data_source=rates, divergence="jsd")
    count = 20_000
    drawn = np.asarray(jax.jit(jax.vmap(mixture.choose_source))(jax.random.split(jax.random.key(1), count)))
    for index, name in enumerate(mixture.sources):
        # 4.5 standard deviations: each check fails falsely with probability 7e-6.
        assert abs(np.mean(drawn == index) - rates[name]) < 4.5 * np.sqrt(rates[name] * (1 - rates[name]) / count)
    batch, params = synthetic_batch(), PARAMS
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b, r: mixture.loss(p, b, r, 0), has_aux=True))
    keys = jax.random.split(jax.random.key(2), 40)
    choices = np.asarray(jax.jit(jax.vmap(lambda k: mixture.choose_source(jax.random.split(k)[0])))(keys))
    for index, name in enumerate(mixture.sources):
        rng = keys[int(np.argmax(choices == index))]
        (loss, logged), grads = grad_fn(params, batch, rng)
        assert {n: float(logged[f"source/{n}"]) for n in rates} == {n: float(n == name) for n in rates}
        sample_key = jax.random.split(rng)[1]
        if name == "fixed":
            inputs = batch["decoder_input_tokens"]
            weights = (batch["decoder_loss_weights"] * batch["example_weights"])[:, PROMPT:]
        else:
            model, key = (TARGET, "target") if name == "target" else (DRAFT, "model")
            inputs, weights = sampled_inputs(model, params[key], batch, sample_key)[0], row_weights(batch)
        np.testing.assert_allclose(float(loss), reference_loss(params, inputs, weights, "jsd"), rtol=2e-5)
        assert all(np.all(g == 0) for g in jax.tree.leaves(grads["target"]))
        assert any(np.any(g != 0) for g in jax.tree.leaves(grads["model"]))


def test_a_sampled_continuation_counts_up_to_and_including_its_first_eos():
    tokens = jnp.asarray([[5, 2, 7, 2], [2, 0, 0, 0], [4, 4, 4, 4]])
    rows = jnp.asarray([[1.0], [2.0], [0.5]])
    expected = [[1, 1, 0, 0], [2, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]]
    np.testing.assert_array_equal(continuation_weights(tokens, rows, eos_id=2), expected)
    np.testing.assert_array_equal(continuation_weights(tokens, rows, eos_id=None), np.broadcast_to(rows, (3, 4)))


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"divergence": "kl"}, "divergence 'kl' is not one of fkl, rkl, jsd, tvd"),
        ({"divergence": "jsd", "beta": 1.0}, "beta must be in (0, 1) for jsd, got 1.0"),
        ({"data_source": "teacher"}, "data_source 'teacher' is not one of fixed, target, draft"),
        (
            {"data_source": {"fixed": 1.5, "draft": -0.5}},
            "data_source probability of 'fixed' must be in [0, 1], got 1.5",
        ),
        (
            {"data_source": {"fixed": 0.5, "draft": 0.4}},
            "data_source probabilities must sum to 1, got 0.9 ({'fixed': 0.5, 'draft': 0.4})",
        ),
        ({"generation_length": 0}, "generation_length must be an integer >= 1, got 0"),
        ({"prompt_length": 0}, "prompt_length must be an integer >= 1, got 0"),
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"average": "row"}, "average 'row' is not one of sequence, token"),
    ],
)
def test_bad_knobs_are_refused_in_one_line_naming_them(knobs, message):
    with pytest.raises(ConfigError) as refused:
        objective(**knobs)
    assert str(refused.value).splitlines()[0] == f"DistillationObjective.{message}"  # what the CLI prints


def test_a_batch_too_short_for_the_fixed_continuation_is_refused():
    with pytest.raises(ValueError, match=r"batch's length 12 is shorter than prompt_length \+ generation_length = 16"):
        objective().loss(PARAMS, synthetic_batch(length=12), jax.random.key(0), 0)


def test_gin_files_parse_with_the_documented_models_and_knobs():
    config.import_configurable_modules()
    config.parse_gin(["models/pretrained/smollm2_135m.gin"], [], [])
    smollm2 = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    gin.clear_config()
    config.parse_gin(["distillspec/draft_smollm2.gin"], ["MODEL_DIR=/tmp/unused"], [])
    assert gin.query_parameter("%TASK").selector == "tasks.text_mixture"
    assert gin.query_parameter("tasks.text_mixture.objective") == "lm"
    assert isinstance(gin.query_parameter("%OBJECTIVE").scoped_configurable_fn(), DecoderObjective)
    gin.clear_config()
    config.parse_gin(
        ["distillspec/distill_smollm2.gin"], ["MODEL_DIR=/tmp/unused", "INITIAL_CHECKPOINT_PATH=/tmp/d"], []
    )
    draft = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    built = gin.query_parameter("%OBJECTIVE").scoped_configurable_fn()
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert built.target.config == smollm2 and built.model.config == draft
    assert (draft.vocab_size, draft.num_layers, draft.emb_dim, draft.mlp_dim, draft.tie_embeddings) == (
        smollm2.vocab_size,
        4,
        256,
        704,
        True,
    )
    assert (built.divergence, built.sources, built.trainable_keys, built.average) == (
        "fkl",
        ("draft",),
        ("model",),
        "sequence",
    )
    assert built.prompt_length + built.generation_length == lengths["targets"] == 128


TINY = [
    "--gin.TASK='docstrings_lm'",
    f"--gin.TASK_FEATURE_LENGTHS={{'targets': {PROMPT + GENERATED}}}",
    "--gin.BATCH_SIZE=4",
    *(
        f"--gin.decoder.DecoderConfig.{k}={v}"
        for k, v in dict(
            vocab_size=VOCAB, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32
        ).items()
    ),
    "--gin.partitioning.MeshConfig.data=1",
    "--gin.trainer.train.eval_every=0",
    "--gin.trainer.train.log_every=1",
    "--gin.trainer.train.peak_flops_per_device=1e9",
]


def test_distillation_runs_through_the_cli_from_a_draft_towards_a_frozen_target(tmp_path):
    draft, target, run = tmp_path / "draft", tmp_path / "target", tmp_path / "distill"
    save_params_only(PARAMS["model"], draft)
    save_params_only(random_params(DRAFT, 2), target)  # the target: another model of the tiny draft's shapes
    main.main(
        [
            "train",
            "--gin_file=distillspec/distill_smollm2.gin",
            *TINY,
            f"--gin.MODEL_DIR={run}",
            "--gin.TARGET_CONFIG=@decoder.DecoderConfig()",
            f"--gin.TARGET_DIR={target}",
            f"--gin.INITIAL_CHECKPOINT_PATH={draft}",
            "--gin.TRAIN_STEPS=2",
            f"--gin.PROMPT_LENGTH={PROMPT}",
            f"--gin.GENERATION_LENGTH={GENERATED}",
        ]
    )
    records = metrics.read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["train/divergence"] > 0 and r["train/source/draft"] == 1.0 for r in records)
    saved = checkpoints.read_arrays(run / "checkpoints" / "2")
    assert set(saved["params"]) == set(saved["opt_state"]) == {"model"}
    assert json.loads((run / frozen.RECORD_NAME).read_text())["target"]["path"] == str(target)
    from littlehelp import runs  # the distilled run folder is a draft for speculative decoding as it is

    source = runs.open_run(run)
    # the tiny sizes from the command line, RoPE base and RMSNorm eps as draft_smollm2.gin sets them (SmolLM2's)
    expected = dataclasses.replace(DRAFT.config, rope_max_wavelength=100000.0, norm_eps=1e-05)
    assert source.model.config == expected and source.key == "model"
    restored = source.load()
    assert restored.step == 2 and restored.config == (run / "config.gin").read_text()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params), saved["params"]["model"])
