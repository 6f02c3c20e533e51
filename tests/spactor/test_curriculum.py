"""The two-stage curriculum through the trainer: stage 2 compiles to exactly a plain SC step, leaves the
generator and RTD head untouched, and continues the T5 model's optimizer state; the FLOPs ratios."""

import jax
import numpy as np
import optax
import pytest

from littlehelp import checkpoints, optimizers, partitioning, trainer
from littlehelp.data import pipeline
from littlehelp.objectives import Curriculum
from spactor import flops_ratio, spactor_curriculum, total_flops_ratio
from tests.helpers import t5_data
from tests.spactor.helpers import tiny_hybrid

# The in-memory byte-vocabulary task (259 ids, no sentinels): only shapes and plumbing matter here.
DATA = t5_data(batch_size=4, length=16)
ADAM = optimizers.adamw(optimizers.constant_schedule(1e-2), weight_decay=0.0, max_grad_norm=None)


def _hybrid():
    return tiny_hybrid(data_vocab_size=259, num_sentinels=0)


def _trainer(tmp_path, curriculum):
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    return trainer.Trainer(
        str(tmp_path),
        curriculum,
        ADAM,
        DATA,
        mesh,
        partitioning.DEFAULT_RULES,
        checkpoints.CheckpointConfig(save_interval_steps=1000),
    )


def _flops(compiled):
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_stage_two_compiles_to_a_plain_span_corruption_step(tmp_path):
    hybrid = _hybrid()
    curriculum = spactor_curriculum(hybrid, tau=2)
    assert [curriculum.objective_at(s) for s in (0, 1, 2, 9)] == [hybrid] * 2 + [hybrid.span_corruption] * 2
    spactor = _trainer(tmp_path / "spactor", curriculum)
    plain = _trainer(tmp_path / "plain", Curriculum.single(hybrid.span_corruption))
    assert set(plain.layout.abstract_state.params) == {"t5"}
    stage_two = _flops(spactor.compiled_step(hybrid.span_corruption))
    assert stage_two == _flops(plain.compiled_step(hybrid.span_corruption))
    assert _flops(spactor.compiled_step(hybrid)) > 1.1 * stage_two


def _run(model_dir, curriculum, steps):
    return trainer.train(
        model_dir=str(model_dir),
        train_data=DATA,
        steps=steps,
        optimizer=ADAM,
        curriculum=curriculum,
        log_every=1,
        mesh_config=partitioning.MeshConfig(1, 1, 1),
        peak_flops_per_device=1e9,
        checkpoint_config=checkpoints.CheckpointConfig(save_interval_steps=2, async_save=False),
    )


def _sc_step(objective):
    """One plain optax Adam update of the T5 model alone, as one program."""

    @jax.jit
    def step(params, opt_state, batch):
        grads = jax.grad(lambda p: objective.loss({"t5": p}, batch, jax.random.key(0), 0)[0])(params)
        updates, opt_state = ADAM.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def _sc_updates(step, params, opt_state, batches):
    """`step`'s updates over `batches`, from a given optimizer state."""
    for batch in batches:
        params, opt_state = step(params, opt_state, batch)
    return params


def test_after_tau_only_t5_trains_and_its_optimizer_state_carries_over(tmp_path):
    hybrid = _hybrid()
    _run(tmp_path, spactor_curriculum(hybrid, tau=2), steps=4)
    at_tau, final = (checkpoints.read_arrays(tmp_path / "checkpoints" / str(s)) for s in (2, 4))
    for model in ("generator", "rtd_head"):
        jax.tree.map(np.testing.assert_array_equal, final["params"][model], at_tau["params"][model])
        jax.tree.map(np.testing.assert_array_equal, final["opt_state"][model], at_tau["opt_state"][model])
    batches = [
        jax.device_get(b)
        for _, b in zip(
            range(2),
            trainer.GlobalBatches(
                DATA,
                partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1]),
                pipeline.ResumePoint(2),
            ),
        )
    ]
    t5_at_tau = jax.tree.map(np.asarray, at_tau["params"]["t5"])
    template = ADAM.tx.init(t5_at_tau)
    carried = jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(at_tau["opt_state"]["t5"]))
    step = _sc_step(hybrid.span_corruption)  # compiled once for both starting states
    expected = _sc_updates(step, t5_at_tau, carried, batches)
    fresh = _sc_updates(step, t5_at_tau, template, batches)

    def close(a, b):
        return all(np.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    assert close(final["params"]["t5"], expected)
    assert not close(final["params"]["t5"], fresh)


def test_flops_ratios():
    hybrid = _hybrid()
    spec = trainer.batch_spec(DATA)
    r = flops_ratio(hybrid, spec)
    assert r == hybrid.train_flops(spec) / hybrid.span_corruption.train_flops(spec) and r > 1
    # (tau * r + S - tau) / S_baseline: the FLOPs formula of docs/methods/spactor.md,
    # e.g. tau = S / 4 against 2S baseline steps.
    assert total_flops_ratio(120, 500, 1000, 1.5) == pytest.approx((120 * 1.5 + 380) / 1000)
    assert total_flops_ratio(None, 500, 1000, 1.5) == pytest.approx(0.75)
    assert total_flops_ratio(900, 500, 1000, 1.5) == pytest.approx(0.75)
    assert total_flops_ratio(0, 500, 1000, 1.5) == pytest.approx(0.5)


def test_curriculum_edge_cases():
    hybrid = _hybrid()
    assert spactor_curriculum(hybrid, tau=None).objectives == [hybrid]
    assert spactor_curriculum(hybrid, tau=0).objectives == [hybrid.span_corruption]
    with pytest.raises(ValueError, match="tau"):
        spactor_curriculum(hybrid, tau=-1)
