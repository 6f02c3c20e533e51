"""Train step: sharded == unsharded, microbatching == full batch, zero-weight terms not computed,
one compiled step per objective, NaN stops the run with the last good checkpoint kept."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from littlehelp import checkpoints, frozen, metrics, optimizers, partitioning, trainer
from littlehelp.data import pipeline
from littlehelp.models import build_model
from littlehelp.objectives import Curriculum, DecoderObjective, EncoderDecoderObjective, WeightedSum
from littlehelp.optimizers import Optimizer
from tests.helpers import TINY_DECODER, TINY_T5, lm_data, t5_data

RULES = partitioning.DEFAULT_RULES
SGD = Optimizer(optax.sgd(0.1), optax.constant_schedule(0.1))


def _trainer(tmp_path, objective, data, mesh_config, optimizer=SGD, microbatches=1, **ckpt):
    mesh = partitioning.make_mesh(mesh_config, devices=jax.devices()[: _size(mesh_config)])
    config = checkpoints.CheckpointConfig(**({"save_interval_steps": 1000} | ckpt))
    return trainer.Trainer(
        str(tmp_path), Curriculum.single(objective), optimizer, data, mesh, RULES, config, microbatches=microbatches
    )


def _size(mesh_config):
    return abs(mesh_config.data * mesh_config.fsdp * mesh_config.tensor)


def _grads_and_loss(t: trainer.Trainer, objective, batch):
    state, _ = t.restore_or_init()
    host_batch = {k: np.asarray(v) for k, v in batch.items()}
    placed = {k: jax.device_put(v, partitioning.batch_sharding(t.mesh)) for k, v in host_batch.items()}
    grad_fn = jax.jit(jax.grad(lambda p, b: objective.loss(p, b, jax.random.key(0), 0)[0]))
    loss_fn = jax.jit(lambda p, b: objective.loss(p, b, jax.random.key(0), 0)[0])
    with jax.set_mesh(t.mesh), __import__("flax").linen.logical_axis_rules(t.rules):
        return jax.device_get(grad_fn(state.params, placed)), float(loss_fn(state.params, placed)), state


@pytest.mark.parametrize(
    "make_objective, data, mesh_config",
    [
        (lambda: EncoderDecoderObjective(build_model(TINY_T5)), t5_data(), partitioning.MeshConfig(2, 2, 2)),
        (lambda: DecoderObjective(build_model(TINY_DECODER)), lm_data(), partitioning.MeshConfig(1, 8, 1)),
    ],
)
def test_sharded_loss_and_grads_match_single_device(tmp_path, make_objective, data, mesh_config):
    objective = make_objective()
    single = _trainer(tmp_path / "one", objective, data, partitioning.MeshConfig(1, 1, 1))
    sharded = _trainer(tmp_path / "many", objective, data, mesh_config)
    batch = jax.device_get(next(iter(trainer.GlobalBatches(data, single.mesh))))
    ref_grads, ref_loss, _ = _grads_and_loss(single, objective, batch)
    grads, loss, state = _grads_and_loss(sharded, objective, batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), grads, ref_grads)
    # Parameters land where the rules say: e.g. the first MLP input kernel is [embed, mlp] -> (fsdp, tensor).
    expected = partitioning.param_shardings(state.params, sharded.layout.logical_specs, sharded.mesh, RULES)
    jax.tree.map(lambda leaf, want: _assert_sharding(leaf, want), state.params, expected)
    assert any(
        s.spec != jax.sharding.PartitionSpec()
        for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, state.params))
    )


def _assert_sharding(leaf, expected):
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (leaf.sharding, expected)


def test_microbatched_gradient_equals_full_batch(tmp_path):
    objective = DecoderObjective(build_model(TINY_DECODER))
    data = lm_data(batch_size=8)
    t = _trainer(tmp_path, objective, data, partitioning.MeshConfig(1, 1, 1))
    state, _ = t.restore_or_init()
    batch = next(iter(trainer.GlobalBatches(data, t.mesh)))
    # Uneven token counts per microbatch make a plain mean of microbatch means wrong.
    weights = np.asarray(batch["decoder_loss_weights"]).copy()
    weights[:2, 5:] = 0
    batch["decoder_loss_weights"] = jnp.asarray(weights)
    rng = jax.random.key(3)
    full = trainer.microbatched_value_and_grad(objective.loss, 1)
    micro = trainer.microbatched_value_and_grad(objective.loss, 4)
    full_metrics, full_grads = jax.jit(full)(state.params, batch, rng, 0)
    micro_metrics, micro_grads = jax.jit(micro)(state.params, batch, rng, 0)
    np.testing.assert_allclose(micro_metrics["loss"], full_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(micro_metrics["weight"], full_metrics["weight"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), micro_grads, full_grads)


class CountingObjective:
    """Wraps an objective and counts how often its loss is traced."""

    def __init__(self, inner, name):
        self.inner, self.name, self.traces = inner, name, 0

    def init_params(self, rng, batch):
        return self.inner.init_params(rng, batch)

    def loss(self, params, batch, rng, step):
        self.traces += 1
        return self.inner.loss(params, batch, rng, step)

    def train_flops(self, batch):
        return self.inner.train_flops(batch)


def _compiled_flops(tmp_path, objective, data):
    t = _trainer(tmp_path, objective, data, partitioning.MeshConfig(1, 1, 1))
    analysis = t.compiled_step(objective).cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_zero_weight_term_is_never_computed(tmp_path):
    data = lm_data()
    main = DecoderObjective(build_model(TINY_DECODER), model_key="main")
    big = DecoderObjective(
        build_model(TINY_DECODER.__class__(**{**TINY_DECODER.__dict__, "emb_dim": 64})), model_key="aux"
    )
    aux = CountingObjective(big, "aux")
    alone = _compiled_flops(tmp_path / "a", WeightedSum({"main": (main, 1.0)}), data)
    with_zero = _compiled_flops(tmp_path / "b", WeightedSum({"main": (main, 1.0), "aux": (aux, 0.0)}), data)
    assert aux.traces == 0
    assert with_zero == alone
    with_aux = _compiled_flops(tmp_path / "c", WeightedSum({"main": (main, 1.0), "aux": (aux, 0.5)}), data)
    assert aux.traces > 0 and with_aux > 1.5 * alone


def test_curriculum_switches_objective_at_the_boundary(tmp_path):
    data = lm_data()
    first = CountingObjective(DecoderObjective(build_model(TINY_DECODER)), "first")
    second = CountingObjective(DecoderObjective(build_model(TINY_DECODER), z_loss=0.5), "second")
    curriculum = Curriculum([(0, first), (3, second)])
    assert [curriculum.objective_at(s).name for s in range(5)] == ["first"] * 3 + ["second"] * 2
    assert curriculum.next_switch(1) == 3 and curriculum.next_switch(3) is None
    summary = _run(tmp_path, curriculum, data, steps=5)
    assert (first.traces, second.traces) == (1, 1)  # each compiled once, on its first step
    assert summary.last_step == 5
    assert summary.final_metrics["z_loss"] > 0.1  # stage two's much larger z-loss is in force


def _run(tmp_path, curriculum, data, steps, optimizer=SGD, **ckpt):
    return trainer.train(
        model_dir=str(tmp_path),
        train_data=data,
        steps=steps,
        optimizer=optimizer,
        curriculum=curriculum,
        log_every=1,
        mesh_config=partitioning.MeshConfig(1, 1, 1),
        checkpoint_config=checkpoints.CheckpointConfig(**({"save_interval_steps": 2, "async_save": False} | ckpt)),
        peak_flops_per_device=1e9,
    )


class NaNAfter:
    """A decoder objective whose loss becomes NaN from a given step on."""

    def __init__(self, step):
        self.inner, self.name, self.bad_step = DecoderObjective(build_model(TINY_DECODER)), "nan_after", step

    def init_params(self, rng, batch):
        return self.inner.init_params(rng, batch)

    def loss(self, params, batch, rng, step):
        loss, metrics = self.inner.loss(params, batch, rng, step)
        loss = jnp.where(step >= self.bad_step, jnp.nan, loss)
        return loss, dict(metrics, loss=loss)

    def train_flops(self, batch):
        return self.inner.train_flops(batch)


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(trainer.NonFiniteLossError, match=r"loss is nan at step 5.*last good checkpoint is step 4"):
        _run(tmp_path, Curriculum.single(NaNAfter(5)), lm_data(), steps=10)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 4


def test_a_stage_updates_only_the_models_it_trains(tmp_path):
    data = lm_data()
    both = WeightedSum(
        {
            "a": (DecoderObjective(build_model(TINY_DECODER), model_key="a"), 1.0),
            "b": (DecoderObjective(build_model(TINY_DECODER), model_key="b"), 1.0),
        }
    )
    only_a = DecoderObjective(build_model(TINY_DECODER), model_key="a")
    optimizer = optimizers.adamw(optimizers.constant_schedule(1e-2))
    t = _trainer(tmp_path, both, data, partitioning.MeshConfig(1, 1, 1), optimizer=optimizer)
    state, _ = t.restore_or_init()
    batch = next(iter(trainer.GlobalBatches(data, t.mesh)))
    state = t.step_fn(both)(state, batch, jax.random.key(0))[0]
    before = jax.device_get((state.params, state.opt_state))
    state = t.step_fn(only_a)(state, batch, jax.random.key(0))[0]
    after = jax.device_get((state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, after[0]["b"], before[0]["b"])
    jax.tree.map(np.testing.assert_array_equal, after[1]["b"], before[1]["b"])
    changed = jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), after[0]["a"], before[0]["a"]))
    assert all(changed)


def test_a_state_that_overflows_is_never_saved_though_its_loss_was_finite(tmp_path):
    """Step 3's loss is finite but its update (learning rate Inf) fills the parameters with Inf/NaN:
    that state (step 4) must not be written, and the named last good step must be finite."""
    blow_up = optax.sgd(lambda count: jnp.where(count >= 3, jnp.inf, 0.1))
    optimizer = Optimizer(blow_up, optax.constant_schedule(0.1))
    with pytest.raises(
        trainer.NonFiniteLossError,
        match=r"state after step 3 has NaN or Inf in \d+ of \d+ arrays .*last good checkpoint is step 3",
    ):
        _run(
            tmp_path,
            Curriculum.single(DecoderObjective(build_model(TINY_DECODER))),
            lm_data(),
            steps=8,
            optimizer=optimizer,
            save_interval_steps=1,
            max_to_keep=3,
        )
    directory = tmp_path / "checkpoints"
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    assert steps == [1, 2, 3]
    for step in steps:
        assert all(
            np.all(np.isfinite(a))
            for a in jax.tree.leaves(checkpoints.read_arrays(directory / str(step)))
            if np.issubdtype(a.dtype, np.floating)
        )


def test_nonfinite_arrays_names_each_array_with_nan_or_inf():
    state = {"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf]), "c": jnp.array([jnp.nan]), "n": jnp.arange(2)}
    assert trainer.nonfinite_arrays(state) == ["['b']", "['c']"]


class MatchTeacher:
    """Mean squared distance of the student's logits to a frozen teacher's (named 'teacher')."""

    name, trainable_keys = "match_teacher", ("model",)

    def __init__(self):
        self.model = build_model(TINY_DECODER)

    def init_params(self, rng, batch):
        return {"model": self.model.init(rng, batch)}

    def loss(self, params, batch, rng, step):
        distance = jnp.mean(
            (self.model.logits(params["model"], batch) - self.model.logits(params["teacher"], batch)) ** 2
        )
        return distance, {"loss": distance, "weight": jnp.ones((), jnp.float32)}

    def train_flops(self, batch):
        return 2 * DecoderObjective(self.model).train_flops(batch)


def test_a_frozen_teacher_is_read_never_trained_saved_or_swapped(tmp_path):
    data, teacher_dir = lm_data(), tmp_path / "teacher"
    _run(teacher_dir, Curriculum.single(DecoderObjective(build_model(TINY_DECODER))), data, steps=2)
    teacher = frozen.FrozenModel(path=str(teacher_dir), model=build_model(TINY_DECODER))
    student = MatchTeacher()

    def run(steps):
        return trainer.train(
            model_dir=str(tmp_path / "student"),
            train_data=data,
            steps=steps,
            optimizer=SGD,
            objective=student,
            log_every=1,
            mesh_config=partitioning.MeshConfig(1, 1, 1),
            peak_flops_per_device=1e9,
            checkpoint_config=checkpoints.CheckpointConfig(save_interval_steps=1, async_save=False),
            frozen_models={"teacher": teacher},
        )

    run(1)
    # The first step's loss used exactly the teacher's saved arrays, read here another way.
    saved_teacher = checkpoints.read_arrays(teacher_dir / "checkpoints" / "2")["params"]["model"]
    student_start = checkpoints.read_arrays(tmp_path / "student" / "checkpoints" / "1")
    assert set(student_start["params"]) == set(student_start["opt_state"]) == {"model"}  # no teacher state saved
    first = next(iter(trainer.GlobalBatches(data, partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1)))))
    init = Curriculum.single(student).init_params(jax.random.key(0), first)  # as the run initialised (seed 0)
    expected = student.loss({"model": nn.unbox(init)["model"], "teacher": saved_teacher}, first, None, 0)[0]
    logged = metrics.read_jsonl(tmp_path / "student" / "metrics.jsonl")[0]["train/loss"]
    np.testing.assert_allclose(logged, float(expected), rtol=1e-5)
    record = json.loads((tmp_path / "student" / frozen.RECORD_NAME).read_text())["teacher"]
    assert record["step"] == 2 and record["fingerprint"] == frozen.fingerprint(saved_teacher)
    # Training the teacher on changes it: the resumed student run refuses it by name.
    _run(teacher_dir, Curriculum.single(DecoderObjective(build_model(TINY_DECODER))), data, steps=4)
    with pytest.raises(frozen.FrozenModelChangedError, match="frozen model 'teacher' is not the one this run started"):
        run(2)


def test_example_weights_scale_each_examples_gradient_as_a_float64_combination():
    """With weights w_i, the gradient is sum_i w_i n_i g_i / sum_i w_i n_i (g_i: example i's own mean
    gradient, n_i its target tokens), combined here in float64 from per-example gradients."""
    objective = DecoderObjective(build_model(TINY_DECODER), z_loss=0.0)
    batch = {
        k: jnp.asarray(v)
        for k, v in jax.device_get(
            next(
                iter(
                    trainer.GlobalBatches(
                        lm_data(batch_size=3), partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1))
                    )
                )
            )
        ).items()
    }
    params = nn.unbox(objective.init_params(jax.random.key(0), batch))
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"].at[1, 20:].set(0)  # uneven token counts
    weights = np.array([0.5, 2.0, 0.0])
    grad_of = jax.jit(jax.grad(lambda p, b: objective.loss(p, b, jax.random.key(0), 0)[0]))
    per_token = np.broadcast_to(weights[:, None], batch["decoder_loss_weights"].shape)
    got = grad_of(params, dict(batch, example_weights=jnp.asarray(per_token, jnp.float32)))
    rows = [grad_of(params, {k: v[i : i + 1] for k, v in batch.items()}) for i in range(3)]
    tokens = np.asarray(batch["decoder_loss_weights"]).sum(axis=1).astype(np.float64)
    share = weights * tokens / np.sum(weights * tokens)
    expected = jax.tree.map(lambda *g: sum(s * np.asarray(x, np.float64) for s, x in zip(share, g)), *rows)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7), got, expected)


@pytest.mark.parametrize("make_data", [lm_data, t5_data])
@pytest.mark.parametrize("pack", [True, False])
def test_batch_spec_without_data_matches_the_batches(make_data, pack):
    """The feature converter's shapes (no data read) are those of the batches the pipeline yields."""
    data = dataclasses.replace(make_data(), pack=pack)
    batch = next(pipeline.host_dataset(data).as_numpy_iterator())
    assert {k: (v.shape, v.dtype) for k, v in trainer.batch_spec(data).items()} == {
        k: (v.shape, v.dtype) for k, v in batch.items()
    }
