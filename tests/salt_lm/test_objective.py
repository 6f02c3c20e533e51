"""SALT's distillation stage: the loss and its gradient equal a float64 / unchunked reference, omega
decays as configured, after n_KD the compiled step is the plain LM step (no teacher FLOPs, no teacher
arguments), the teacher stays bitwise unchanged with no optimizer state, data switches at a step and
a run resumed at the data switch equals the straight run, and bad knobs are refused by name."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from littlehelp import checkpoints, frozen, losses, partitioning, trainer
from littlehelp.config import ConfigError
from littlehelp.data import pipeline
from littlehelp.models import DecoderConfig, build_model
from littlehelp.objectives import Curriculum, DecoderObjective
from littlehelp.optimizers import Optimizer
from salt_lm import DistillationObjective, salt_curriculum
from tests.helpers import TINY_TIED_DECODER, lm_data, random_params, save_params_only

VOCAB = 264  # the byte vocabulary of the in-memory docstrings task fits
STUDENT = build_model(
    DecoderConfig(vocab_size=VOCAB, emb_dim=24, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=48)
)
TEACHER = build_model(TINY_TIED_DECODER)
PARAMS = {"model": random_params(STUDENT, 0), "teacher": random_params(TEACHER, 1)}
LM = DecoderObjective(STUDENT, z_loss=0.0)


def kd(**knobs) -> DistillationObjective:
    return DistillationObjective(STUDENT, **({"teacher": TEACHER, "z_loss": 0.0, "chunk_size": 5} | knobs))


def synthetic_batch(rows: int = 3, length: int = 12) -> dict[str, np.ndarray]:
    """LM features of random tokens; the last row ends in 3 padding positions."""
    targets = np.random.default_rng(0).integers(3, VOCAB, (rows, length)).astype(np.int32)
    weights = np.ones((rows, length), np.float32)
    targets[-1, -3:], weights[-1, -3:] = 0, 0.0
    inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets, "decoder_loss_weights": weights}


def log_softmax64(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def reference(params, batch, omega: float, temperature: float) -> tuple[float, float, float]:
    """(mixed loss, cross-entropy, FKL) means over weighted tokens, in float64 numpy."""
    log_q = log_softmax64(STUDENT.logits(params["model"], batch))
    log_p = log_softmax64(TEACHER.logits(params["teacher"], batch))
    log_qt, log_pt = (log_softmax64(x / temperature) for x in (log_q, log_p))
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    ce = -np.take_along_axis(log_q, targets[..., None], -1)[..., 0]
    fkl = (np.exp(log_pt) * (log_pt - log_qt)).sum(-1)
    mean = lambda x: float((x * weights).sum() / weights.sum())  # noqa: E731
    return mean((1 - omega) * ce + omega * fkl), mean(ce), mean(fkl)


@pytest.mark.parametrize("omega, temperature", [(0.5, 1.0), (0.8, 2.0), (0.0, 1.0)])
def test_loss_is_the_float64_mixture_of_cross_entropy_and_forward_kl(omega, temperature):
    batch = synthetic_batch()
    loss, logged = jax.jit(lambda p, b: kd(omega=omega, temperature=temperature).loss(p, b, None, 0))(PARAMS, batch)
    expected, ce, fkl = reference(PARAMS, batch, omega, temperature)
    np.testing.assert_allclose(
        [float(loss), float(logged["cross_entropy"]), float(logged["fkl"])], [expected, ce, fkl], rtol=2e-5
    )
    assert float(logged["weight"]) == batch["decoder_loss_weights"].sum() and float(logged["omega"]) == np.float32(
        omega
    )


def test_gradient_equals_the_unchunked_loss_gradient_and_the_teacher_gets_none():
    batch, omega = synthetic_batch(), 0.3

    def unchunked(params):
        student, teacher = STUDENT.logits(params["model"], batch), TEACHER.logits(params["teacher"], batch)
        weights = jnp.asarray(batch["decoder_loss_weights"])
        ce = losses.token_cross_entropy(student, batch["decoder_target_tokens"], weights).cross_entropy
        fkl = losses.forward_kl(student, teacher, weights)
        return jnp.sum((1 - omega) * ce + omega * fkl) / jnp.sum(weights)

    grads = jax.jit(jax.grad(lambda p: kd(omega=omega).loss(p, batch, None, 0)[0]))(PARAMS)
    expected = jax.jit(jax.grad(unchunked))(PARAMS)
    for got, want in zip(jax.tree.leaves(grads["model"]), jax.tree.leaves(expected["model"])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["teacher"]))


def stored_label_batch(batch, k: int) -> dict[str, np.ndarray]:
    """`batch` with the teacher's top-k labels as a labelled Task's batch carries them ([b, l * k] flat)."""
    labels = losses.top_k_labels(TEACHER.logits(PARAMS["teacher"], batch), k)
    flat = lambda x: np.asarray(x).reshape(x.shape[0], -1)  # noqa: E731
    return batch | {
        "teacher_ids": flat(labels.ids),
        "teacher_log_probs": flat(labels.log_probs),
        "teacher_log_rest": np.asarray(labels.log_rest),
    }


def test_with_every_token_stored_the_loss_and_gradient_equal_the_live_teachers_and_no_teacher_runs():
    batch = synthetic_batch()
    stored, student_only = stored_label_batch(batch, VOCAB), {"model": PARAMS["model"]}
    live_loss = lambda p: kd(omega=0.4).loss(p, batch, None, 0)  # noqa: E731
    stored_loss = lambda p: kd(omega=0.4, teacher=None).loss(p, stored, None, 0)  # noqa: E731
    (loss, logged), grads = jax.jit(jax.value_and_grad(live_loss, has_aux=True))(PARAMS)
    (got, got_logged), got_grads = jax.jit(jax.value_and_grad(stored_loss, has_aux=True))(student_only)
    np.testing.assert_allclose([float(got), float(got_logged["fkl"])], [float(loss), float(logged["fkl"])], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_grads["model"]), jax.tree.leaves(grads["model"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert kd(teacher=None).train_flops(batch) == 3 * STUDENT.forward_flops(batch) < kd().train_flops(batch)


def test_stored_labels_need_temperature_1_and_a_batch_that_carries_them():
    with pytest.raises(ConfigError, match="temperature=2.0 with stored labels"):
        kd(teacher=None, temperature=2.0)
    with pytest.raises(ConfigError, match="no stored teacher labels"):
        kd(teacher=None).loss({"model": PARAMS["model"]}, synthetic_batch(), None, 0)


def test_omega_is_constant_or_decays_linearly_to_zero_at_n_kd():
    abrupt, linear = (salt_curriculum(kd(omega=0.6), LM, n_kd=10, transition=t) for t in ("abrupt", "linear"))
    steps = [0, 5, 9, 10, 30]
    assert [abrupt.objective_at(s) is LM for s in steps] == [False, False, False, True, True]
    np.testing.assert_allclose([float(abrupt.objective_at(0).omega_at(s)) for s in steps], [0.6] * 5)
    np.testing.assert_allclose(
        [float(linear.objective_at(0).omega_at(s)) for s in steps], [0.6, 0.3, 0.06, 0, 0], atol=1e-7
    )
    assert kd().decay_steps is None  # the curriculum decays a copy
    assert salt_curriculum(kd(), LM, n_kd=0).objectives == [LM]
    assert [type(o) for o in salt_curriculum(kd(), LM, n_kd=None).objectives] == [DistillationObjective]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: kd(omega=1.5), "DistillationObjective.omega must be in [0, 1], got 1.5"),
        (lambda: kd(temperature=0.0), "DistillationObjective.temperature must be > 0, got 0.0"),
        (
            lambda: DistillationObjective(STUDENT, build_model(DecoderConfig(vocab_size=512))),
            "the teacher's vocabulary (512 ids) differs from the student's (264 ids)",
        ),
        (
            lambda: salt_curriculum(kd(), LM, n_kd=4, transition="cosine"),
            "transition='cosine' is not one of abrupt, linear",
        ),
        (lambda: salt_curriculum(kd(), LM, n_kd=None, transition="linear"), "'linear' needs n_kd"),
        (lambda: salt_curriculum(kd(), LM, n_kd=-1), "n_kd must be None or an integer >= 0, got -1"),
        (
            lambda: salt_curriculum(kd(), DecoderObjective(STUDENT, model_key="other"), n_kd=2),
            "the distillation trains 'model' but the LM objective trains 'other'",
        ),
    ],
)
def test_bad_knobs_are_refused_by_name(build, message):
    with pytest.raises(ConfigError, match=f"^salt: .*{re.escape(message)}"):
        build()


DATA = lm_data(batch_size=4, length=12)
OTHER_DATA = lm_data(batch_size=4, length=12, seed=5)
ADAM = Optimizer(optax.adam(0.02), optax.constant_schedule(0.02))


def _mesh():
    return partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    save_params_only(PARAMS["teacher"], folder)
    return folder


def _teacher(folder) -> dict[str, frozen.FrozenModel]:
    return {"teacher": frozen.FrozenModel(path=str(folder), model=TEACHER)}


def _flops_and_argument_bytes(compiled) -> tuple[float, int]:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return analysis["flops"], compiled.memory_analysis().argument_size_in_bytes


def test_after_n_kd_the_step_is_the_plain_lm_step(tmp_path, teacher_folder):
    curriculum = salt_curriculum(kd(), LM, n_kd=2)
    config = checkpoints.CheckpointConfig(save_interval_steps=1000)
    salt = trainer.Trainer(
        str(tmp_path / "salt"),
        curriculum,
        ADAM,
        DATA,
        _mesh(),
        partitioning.DEFAULT_RULES,
        config,
        frozen_models=_teacher(teacher_folder),
    )
    plain = trainer.Trainer(
        str(tmp_path / "plain"), Curriculum.single(LM), ADAM, DATA, _mesh(), partitioning.DEFAULT_RULES, config
    )
    after = _flops_and_argument_bytes(salt.compiled_step(LM))
    assert after == _flops_and_argument_bytes(plain.compiled_step(LM))
    during = _flops_and_argument_bytes(salt.compiled_step(curriculum.objective_at(0)))
    teacher_bytes = sum(x.nbytes for x in jax.tree.leaves(PARAMS["teacher"]))
    assert during[1] >= after[1] + teacher_bytes  # (XLA counts a scanned chunk loop's FLOPs once: bytes only)
    state, _ = salt.restore_or_init()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert set(state.params) == {"model"} and paths and not any("teacher" in p for p in paths)
    state, _ = salt.step_fn(curriculum.objective_at(0))(
        state, next(trainer.GlobalBatches(DATA, salt.mesh)), jax.random.key(0)
    )
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(salt.frozen.params["teacher"]), PARAMS["teacher"])


def _run(model_dir, teacher_folder, steps: int):
    return trainer.train(
        model_dir=str(model_dir),
        train_data=DATA,
        steps=steps,
        optimizer=ADAM,
        curriculum=salt_curriculum(kd(), LM, n_kd=2),
        log_every=1,
        mesh_config=partitioning.MeshConfig(1, 1, 1),
        peak_flops_per_device=1e9,
        frozen_models=_teacher(teacher_folder),
        data_switches=[(3, OTHER_DATA)],
        checkpoint_config=checkpoints.CheckpointConfig(save_interval_steps=1, async_save=False),
    )


def test_data_switches_and_a_run_resumed_at_the_switch_equals_the_straight_run(tmp_path, teacher_folder):
    stages = [(0, DATA), (3, OTHER_DATA)]
    staged = pipeline.StagedBatches(stages, _mesh(), step=0)
    got = [jax.device_get(staged.batch_for(step))["decoder_target_tokens"] for step in range(5)]
    first, second = (trainer.GlobalBatches(config, _mesh()) for config in (DATA, OTHER_DATA))
    want = [jax.device_get(next(first))["decoder_target_tokens"] for _ in range(3)]
    want += [jax.device_get(next(second))["decoder_target_tokens"] for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and not np.array_equal(want[0], want[3])
    assert pipeline.resume_position(stages, 3, {"batches_consumed": 3, "data_stage": 0}) == (0, None)
    assert pipeline.resume_position(stages, 4, {"batches_consumed": 1, "data_stage": 3}) == (1, None)
    assert pipeline.resume_position(stages, 2, {"batches_consumed": 2}) == (2, None)
    _run(tmp_path / "straight", teacher_folder, 5)
    _run(tmp_path / "resumed", teacher_folder, 3)  # stopped at the data switch (tests/spactor: at an objective switch)
    _run(tmp_path / "resumed", teacher_folder, 5)
    left, right = (checkpoints.read_arrays(tmp_path / run / "checkpoints" / "5") for run in ("straight", "resumed"))
    assert set(left["params"]) == {"model"}  # the teacher is never saved
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(left), jax.tree.leaves(right)))


def test_a_data_switch_shaped_unlike_the_training_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"data from step 2 \(docstrings_lm\) has batches .* unlike train_data's"):
        trainer.Trainer(
            str(tmp_path),
            Curriculum.single(LM),
            ADAM,
            DATA,
            _mesh(),
            partitioning.DEFAULT_RULES,
            checkpoints.CheckpointConfig(),
            data_switches=[(2, lm_data(batch_size=4, length=16))],
        )
