"""`littlehelp compile`: a run's train step compiled for a target without running it (littlehelp.aot)."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp import aot, trainer
from littlehelp import main as cli

SMOKE = ["--gin_file=runs/smoke.gin", "--gin.TRAIN_STEPS=10"]


@pytest.mark.parametrize(
    "chips, dims, grid",
    [
        (4, 3, (2, 2, 1)),
        (8, 3, (2, 2, 2)),
        (16, 3, (2, 2, 4)),
        (32, 3, (2, 4, 4)),
        (64, 3, (4, 4, 4)),
        (128, 3, (4, 4, 8)),
        (256, 3, (4, 8, 8)),
        (512, 3, (8, 8, 8)),
        (8, 2, (2, 4)),
        (256, 2, (16, 16)),
    ],
)
def test_chip_grid_follows_the_published_slice_layouts(chips, dims, grid):
    """The layouts of Cloud TPU slices (v4/v5p 3-D tori, v5e/v6e 2-D grids)."""
    assert aot.chip_grid(chips, dims) == grid


def test_topology_names():
    assert aot.parse_topology("v5p-512")[1] == "v5:4x8x8"  # 512 TensorCores = 256 megacore chips
    assert aot.parse_topology("v5e-16")[1] == "v5e:4x4"
    assert aot.parse_topology("v5p:4x4x12")[1] == "v5:4x4x12"
    for bad in ("v9-8", "v5p", "v5e:2x2x2", "v5p-24"):
        with pytest.raises(aot.TargetError):
            aot.parse_topology(bad)


def test_count_collectives_on_an_hlo_text():
    hlo = """
  %all-gather-start.1 = (f32[2]{0}, f32[8]{0}) all-gather-start(f32[2]{0} %p), dimensions={0}
  %all-gather-done.1 = f32[8]{0} all-gather-done((f32[2]{0}, f32[8]{0}) %all-gather-start.1)
  %all-reduce.3 = f32[4]{0} all-reduce(f32[4]{0} %x), to_apply=%add
  ROOT %all-reduce.4 = f32[4]{0} all-reduce(f32[4]{0} %all-reduce.3), to_apply=%add
  %reduce-scatter.2 = f32[1]{0} reduce-scatter(f32[8]{0} %y), dimensions={0}
  %fusion.7 = f32[4]{0} fusion(f32[4]{0} %all-reduce.3), kind=kLoop, calls=%fused_all-reduce_like
"""
    assert aot.count_collectives(hlo) == {"all-reduce": 2, "all-gather": 1, "reduce-scatter": 1}


def test_memory_summary_counts_a_donated_argument_once():
    """A donated [256, 1024] float32 argument of 1 MiB: arguments, outputs and aliased are that array."""
    x = jax.ShapeDtypeStruct((256, 1024), jnp.float32)
    compiled = jax.jit(lambda a: a * 2.0, donate_argnums=0).lower(x).compile()
    memory = aot.memory_summary(compiled.memory_analysis())
    assert memory["arguments"] == memory["outputs"] == memory["aliased"] == 256 * 1024 * 4
    assert memory["total"] == memory["arguments"] + memory["temporaries"] + memory["code"]


@pytest.fixture(scope="module")
def smoke_plan(tmp_path_factory):
    """The smoke run's step compiled for a 2 x 4 (data x fsdp) mesh of the 8 fake CPU devices."""
    folder = tmp_path_factory.mktemp("compile")
    out = folder / "plan.json"
    plan = cli.main(["compile", *SMOKE, f"--gin.MODEL_DIR={folder / 'run'}", "--mesh=2x4x1", f"--out={out}"])
    return plan, json.loads(out.read_text()), folder


def test_compile_reports_the_state_and_batch_shards_as_arguments(smoke_plan):
    """The per-device argument bytes are the state's shards plus the batch's rows plus the rng key,
    counted from the trainer's own state layout (within 1%: XLA drops the few inputs the step does not
    read, such as unused position features), far from the unsharded state's bytes."""
    plan, written, folder = smoke_plan
    settings = cli.configure("train", ["runs/smoke.gin"], ["TRAIN_STEPS=10", f"MODEL_DIR={folder / 'run'}"], [])(
        settings_only=True
    )
    mesh = aot.partitioning.make_mesh(aot.partitioning.MeshConfig(2, 4, 1), devices=jax.devices()[:8])
    example = trainer.example_batch(settings.train_data)
    layout = aot.state_layout(
        lambda rng: settings.curriculum.init_params(rng, example),
        settings.optimizer.tx,
        mesh,
        aot.partitioning.logical_axis_rules(),
    )
    state_bytes = sum(
        np.dtype(leaf.dtype).itemsize * math.prod(leaf.sharding.shard_shape(leaf.shape))
        for leaf in jax.tree.leaves(layout.abstract_state)
    )
    batch_bytes = sum(
        4 * spec.shape[1] * spec.shape[0] // 8 for spec in trainer.batch_spec(settings.train_data).values()
    )
    key_bytes = 8  # a threefry key: two uint32
    unsharded = sum(
        np.dtype(leaf.dtype).itemsize * math.prod(leaf.shape) for leaf in jax.tree.leaves(layout.abstract_state)
    )
    (step,) = plan.steps
    assert step.memory["arguments"] == pytest.approx(state_bytes + batch_bytes + key_bytes, rel=0.01)
    assert unsharded > 2 * state_bytes
    assert step.memory["aliased"] == pytest.approx(state_bytes, rel=0.01)  # the donated state comes back in place
    assert step.collectives.get("all-gather", 0) > 0  # fsdp=4 gathers the sharded parameters
    assert plan.mesh == {"data": 2, "fsdp": 4, "tensor": 1} and plan.fits and written["fits"]
    assert written["steps"][0]["memory"] == step.memory
    assert not (folder / "run").exists()  # nothing is written to the run folder


def test_a_plan_over_the_limit_exits_1_naming_the_largest_buffers(smoke_plan):
    plan, _, _ = smoke_plan
    over = dataclasses.replace(plan, memory_limit_bytes=plan.steps[0].memory["total"] - 1)
    assert plan.exit_code == 0 and over.exit_code == 1 and not over.to_json()["fits"]
    shown = aot.describe(over)
    assert "DOES NOT FIT" in shown
    biggest = max(plan.steps[0].largest_state_arrays, key=lambda a: a["bytes"])
    assert f"largest state: {biggest['name']}" in shown and "largest value:" in shown


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--topology=v9-8"], "--topology='v9-8'"),
        (["--num_devices=64"], "--num_devices=64, but JAX has 8 CPU devices"),
        (["--mesh=2x4"], "expected DATAxFSDPxTENSOR"),
    ],
)
def test_compile_refuses_a_bad_target_in_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["compile", *SMOKE, f"--gin.MODEL_DIR={tmp_path}", *flags])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_compile_for_a_tpu_topology(tmp_path):
    """With libtpu installed (the tpu_aot extra), the TPU compiler plans the step for a v5e-4 slice."""
    pytest.importorskip("libtpu")
    plan = cli.main(["compile", *SMOKE, f"--gin.MODEL_DIR={tmp_path}", "--topology=v5e-4", "--mesh=1x4x1"])
    assert plan.num_devices == 4 and "TPU compiler" in plan.target
    assert plan.memory_limit_bytes == aot.TPU_GENERATIONS["v5e"].hbm_gb * aot.GB and plan.fits


def test_a_mesh_that_does_not_fit_the_torus_is_refused_in_one_line(tmp_path, capsys):
    """A 1x32x2 mesh cannot be laid onto a v5p-128 slice's 4x4x4 chips: 32 is no product of its axes."""
    pytest.importorskip("libtpu")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["compile", *SMOKE, f"--gin.MODEL_DIR={tmp_path}", "--topology=v5p-128", "--mesh=1x32x2"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "does not map onto the devices' physical layout" in error and len(error.splitlines()) == 1
