"""Tests for littlehelp.checkpoints: round trips, resharding, corruption fall-back, retention, preemption."""

import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from littlehelp import checkpoints
from littlehelp.checkpoints import CheckpointConfig, Checkpointer, CheckpointError, PreemptionGuard

AUTO = jax.sharding.AxisType.Auto


@struct.dataclass
class TinyTrainState:
    step: jax.Array
    params: dict
    opt_state: dict


def make_state(seed: int) -> TinyTrainState:
    """Random (incompressible) arrays big enough that orbax stores them in data files, not inline."""
    rng = np.random.default_rng(seed)
    return TinyTrainState(
        step=jnp.asarray(seed, jnp.int32),
        params={
            "w": jnp.asarray(rng.standard_normal((16, 32)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(32), jnp.bfloat16),
        },
        opt_state={"mu": jnp.asarray(rng.standard_normal((16, 32)), jnp.float32), "count": jnp.asarray(seed)},
    )


def make_dict_state(seed: int) -> dict:
    """The same arrays as a plain dict: orbax restores a dict even without its tree metadata."""
    state = make_state(seed)
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def abstract_like(state, sharding_fn=lambda leaf: leaf.sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)), state)


def assert_bitwise_equal(actual, expected) -> None:
    a_leaves, a_def = jax.tree.flatten(actual)
    e_leaves, e_def = jax.tree.flatten(expected)
    assert a_def == e_def
    for a, e in zip(a_leaves, e_leaves):
        a, e = np.asarray(a), np.asarray(e)
        assert (a.dtype, a.shape) == (e.dtype, e.shape)
        assert a.tobytes() == e.tobytes()


def save_steps(directory, steps, state_fn=make_state) -> None:
    ckpt = Checkpointer(str(directory), CheckpointConfig(save_interval_steps=1))
    for step in steps:
        assert ckpt.save(step, state_fn(step), {"seed": 0, "batches_consumed": 10 * step})
    ckpt.close()


def largest_array_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [f for f in (step_dir / "state").glob("ocdbt.process_*/d/*") if f.is_file()]
    return max(files, key=lambda f: f.stat().st_size)


def test_save_then_restore_is_bitwise_identical(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), CheckpointConfig(save_interval_steps=5, async_save=True))
    state = make_state(7)
    assert ckpt.save(10, state, {"seed": 3, "batches_consumed": 123})
    restored, data_state, step = ckpt.restore(abstract_like(state))
    ckpt.close()
    assert step == 10
    assert data_state == {"seed": 3, "batches_consumed": 123}
    assert isinstance(restored, TinyTrainState)
    assert_bitwise_equal(restored, state)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["10"]


def test_restores_onto_a_different_mesh_and_a_single_device(tmp_path):
    mesh_222 = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), (AUTO,) * 3)
    saved_specs = {2: P("fsdp", "tensor"), 1: P("tensor"), 0: P()}
    state = make_state(1)
    sharded = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh_222, saved_specs[x.ndim])), state)
    assert sharded.params["w"].sharding.spec == P("fsdp", "tensor")
    Checkpointer(str(tmp_path), CheckpointConfig(save_interval_steps=1, async_save=False)).save(1, sharded, {})

    mesh_18 = jax.make_mesh((1, 8), ("data", "fsdp"), (AUTO,) * 2)
    target_specs = {2: P(None, "fsdp"), 1: P("fsdp"), 0: P()}
    targets = {
        "1x8": lambda x: NamedSharding(mesh_18, target_specs[x.ndim]),
        "one device": lambda x: SingleDeviceSharding(jax.devices()[3]),
    }
    for name, sharding_fn in targets.items():
        restored, _, _ = Checkpointer(str(tmp_path), CheckpointConfig()).restore(abstract_like(state, sharding_fn))
        assert_bitwise_equal(restored, state)
        for leaf, original in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            assert leaf.sharding == sharding_fn(original), name


def _truncate(path: pathlib.Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _overwrite(path: pathlib.Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xff" * 16)


def _delete_array_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "state" / "_METADATA").unlink()


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: _truncate(largest_array_data_file(d)),
        lambda d: _overwrite(largest_array_data_file(d)),
        _delete_array_metadata,
    ],
    ids=["truncated data file", "overwritten data file", "deleted metadata"],
)
def test_corrupt_latest_step_falls_back_to_previous(tmp_path, caplog, corrupt):
    save_steps(tmp_path, [1, 2, 3], make_dict_state)
    corrupt(tmp_path / "3")
    files_of_3 = sorted(p.relative_to(tmp_path / "3") for p in (tmp_path / "3").rglob("*"))
    with caplog.at_level(logging.WARNING):
        ckpt = Checkpointer(str(tmp_path), CheckpointConfig(save_interval_steps=1))
        restored, data_state, step = ckpt.restore(abstract_like(make_dict_state(0)))
    assert step == 2
    assert data_state == {"seed": 0, "batches_consumed": 20}
    assert_bitwise_equal(restored, make_dict_state(2))
    # The bad step is moved aside whole (nothing deleted) and said so in one short line.
    (moved,) = (tmp_path / "corrupt").iterdir()
    assert moved.name.startswith("3-")
    assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == files_of_3
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Could not restore"))
    assert (
        str(tmp_path / "3") in warning and "\n" not in warning and len(warning) < 500 and "TensorStore({" not in warning
    )
    assert f"Moved checkpoint {tmp_path / '3'}, which cannot be restored, to {moved}" in caplog.text
    # The recomputed step can be saved again, is restored next time, and keep-last-K ignores corrupt/.
    assert ckpt.save(3, make_dict_state(3), {"seed": 0, "batches_consumed": 30})
    ckpt.close()
    assert Checkpointer(str(tmp_path), CheckpointConfig()).restore(abstract_like(make_dict_state(0)))[2] == 3
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "3", "corrupt"]


def test_all_steps_corrupt_raises_naming_each_step(tmp_path):
    save_steps(tmp_path, [1, 2])
    _truncate(largest_array_data_file(tmp_path / "1"))
    _delete_array_metadata(tmp_path / "2")
    ckpt = Checkpointer(str(tmp_path), CheckpointConfig())
    with pytest.raises(CheckpointError) as raised:
        ckpt.restore(abstract_like(make_state(0)))
    message = str(raised.value)
    assert str(tmp_path / "1") in message and str(tmp_path / "2") in message and "\n" not in message
    assert "nothing was moved or deleted" in message  # every rerun fails alike until the user decides
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_read_only_checkpointer_creates_and_moves_nothing(tmp_path):
    missing = tmp_path / "run" / "checkpoints"
    assert Checkpointer(str(missing), CheckpointConfig(), read_only=True).restore(abstract_like(make_state(0))) is None
    assert not (tmp_path / "run").exists()
    save_steps(tmp_path / "ckpt", [1, 2])
    _delete_array_metadata(tmp_path / "ckpt" / "2")
    ckpt = Checkpointer(str(tmp_path / "ckpt"), CheckpointConfig(), read_only=True)
    assert ckpt.restore(abstract_like(make_state(0)))[2] == 1
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2"]


def test_shape_mismatch_names_the_parameters_and_is_not_corruption(tmp_path):
    save_steps(tmp_path, [1, 2])
    smaller = make_state(0)
    smaller = smaller.replace(params={"w": jnp.zeros((8, 32)), "b": smaller.params["b"]})
    with pytest.raises(checkpoints.CheckpointMismatchError) as raised:
        Checkpointer(str(tmp_path), CheckpointConfig()).restore(abstract_like(smaller))
    message = str(raised.value)
    assert "checkpoint has params/w [16, 32], the model expects [8, 32]" in message
    assert "opt_state" not in message and "\n" not in message
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_unfinished_save_is_ignored_and_left_in_place(tmp_path):
    save_steps(tmp_path, [1])
    unfinished = tmp_path / "2.orbax-checkpoint-tmp-1234"
    (unfinished / "state").mkdir(parents=True)
    ckpt = Checkpointer(str(tmp_path), CheckpointConfig(save_interval_steps=1))
    assert ckpt.latest_step() == 1
    _, _, step = ckpt.restore(abstract_like(make_state(0)))
    assert step == 1
    assert ckpt.save(3, make_state(3), {})
    ckpt.close()
    assert unfinished.is_dir()


def test_interval_force_and_max_to_keep(tmp_path):
    ckpt = Checkpointer(str(tmp_path), CheckpointConfig(save_interval_steps=3, max_to_keep=2, async_save=True))
    saved = [step for step in range(1, 11) if ckpt.save(step, make_state(step), {"step": step})]
    assert saved == [3, 6, 9]
    assert ckpt.save(10, make_state(10), {}, force=True)
    assert not ckpt.save(10, make_state(10), {}, force=True)
    ckpt.close()
    on_disk = sorted(int(name) for name in os.listdir(tmp_path) if name.isdigit())
    assert on_disk == [9, 10]
    assert ckpt.latest_step() == 10


def test_restore_order_uses_restore_path_only_when_directory_is_empty(tmp_path):
    save_steps(tmp_path / "previous_run", [4, 8])
    abstract = abstract_like(make_state(0))
    from_run = Checkpointer(str(tmp_path / "a"), CheckpointConfig(restore_path=str(tmp_path / "previous_run")))
    restored, data_state, step = from_run.restore(abstract)
    assert (step, data_state["batches_consumed"]) == (8, 80)
    assert_bitwise_equal(restored, make_state(8))

    from_step = Checkpointer(str(tmp_path / "b"), CheckpointConfig(restore_path=str(tmp_path / "previous_run" / "4")))
    restored, _, step = from_step.restore(abstract)
    assert step == 4
    assert_bitwise_equal(restored, make_state(4))

    (tmp_path / "run_folder").mkdir()
    os.rename(tmp_path / "previous_run", tmp_path / "run_folder" / "checkpoints")  # a run folder's layout
    from_run_folder = Checkpointer(str(tmp_path / "d"), CheckpointConfig(restore_path=str(tmp_path / "run_folder")))
    restored, _, step = from_run_folder.restore(abstract)
    assert step == 8
    assert_bitwise_equal(restored, make_state(8))
    empty = Checkpointer(str(tmp_path / "e"), CheckpointConfig(restore_path=str(tmp_path / "c_missing_steps")))
    (tmp_path / "c_missing_steps").mkdir()
    with pytest.raises(CheckpointError, match="holds no finished checkpoint"):
        empty.restore(abstract)

    own = Checkpointer(str(tmp_path / "run_folder" / "checkpoints"), CheckpointConfig(restore_path=str(tmp_path / "b")))
    assert own.restore(abstract)[2] == 8
    assert Checkpointer(str(tmp_path / "c"), CheckpointConfig()).restore(abstract) is None


def test_missing_restore_path_is_an_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "a"), CheckpointConfig(restore_path=str(tmp_path / "nowhere")))
    with pytest.raises(CheckpointError, match="nowhere"):
        ckpt.restore(abstract_like(make_state(0)))


def test_preemption_guard_sets_flag_and_restores_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested
    assert signal.getsignal(signal.SIGTERM) is previous


def test_preemption_guard_handles_sigint_only_when_asked():
    previous = signal.getsignal(signal.SIGINT)
    with PreemptionGuard(handle_sigint=True) as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested
    assert signal.getsignal(signal.SIGINT) is previous
    with PreemptionGuard():
        assert signal.getsignal(signal.SIGINT) is previous


def test_fingerprints_match_numpy_formula_and_ignore_sharding():
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), (AUTO,) * 2)
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    bits = x.view(np.uint32).ravel().astype(np.uint64)
    expected = int(np.sum(bits * (2 * np.arange(bits.size, dtype=np.uint64) + 1)) % 2**32)
    sharded = jax.device_put(x, NamedSharding(mesh, P("data", "fsdp")))
    assert checkpoints.fingerprints({"x": jnp.asarray(x)}) == {"['x']": expected}
    assert checkpoints.fingerprints({"x": sharded}) == {"['x']": expected}


@pytest.mark.parametrize(
    "field, value", [("save_interval_steps", 0), ("max_to_keep", -1), ("restore_path", " "), ("restore_model", "t5")]
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"CheckpointConfig.{field}"):
        CheckpointConfig(**{field: value})


def test_config_is_gin_configurable_as_checkpoints_name():
    with gin.unlock_config():
        gin.parse_config("checkpoints.CheckpointConfig.max_to_keep = 5")
    try:
        assert CheckpointConfig().max_to_keep == 5
    finally:
        gin.clear_config()


@pytest.fixture
def mount_point(tmp_path):
    """A folder the test may mount over (root with mount rights only); unmounted afterwards."""
    mounted = []

    def mount(args: list[str], target: pathlib.Path) -> None:
        result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here: {result.stderr.strip()}")
        mounted.append(target)

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], capture_output=True)  # a remount is undone with its mount


def _read_only(mount, directory: pathlib.Path) -> None:
    mount(["--bind", str(directory)], directory)
    mount(["-o", "remount,bind,ro"], directory)


@pytest.mark.parametrize("async_save", [True, False])
def test_save_to_a_read_only_folder_fails_at_once_in_one_line(tmp_path, mount_point, async_save):
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(str(directory), CheckpointConfig(save_interval_steps=1, async_save=async_save))
    assert ckpt.save(1, make_state(1), {})
    ckpt.wait_until_finished()
    _read_only(mount_point, directory)
    start = time.monotonic()
    with pytest.raises(checkpoints.CheckpointSaveError) as raised:
        ckpt.save(2, make_state(2), {})
    assert time.monotonic() - start < 10
    assert str(raised.value) == (
        f"cannot save checkpoint step 2 to {directory}: Read-only file system [Errno 30]; "
        "the steps already there are untouched"
    )
    assert (
        Checkpointer(str(directory), CheckpointConfig(), read_only=True).restore(abstract_like(make_state(0)))[2] == 1
    )


def test_save_that_does_not_fit_says_how_much_is_needed(tmp_path, mount_point):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    mount_point(["-t", "tmpfs", "-o", "size=16k", "tmpfs"], directory)
    state = make_state(1).replace(params={"w": jnp.ones((256, 256)), "b": jnp.ones(4)})
    needed = sum(x.nbytes for x in jax.tree.leaves(state)) * checkpoints.FREE_SPACE_MARGIN / 1e6
    with pytest.raises(checkpoints.CheckpointSaveError, match=rf"needs about {needed:.1f} MB and 0.0 MB are free"):
        Checkpointer(str(directory), CheckpointConfig(save_interval_steps=1)).save(1, state, {})


def test_disk_filling_up_during_a_save_is_one_line_and_keeps_earlier_steps(tmp_path, mount_point, monkeypatch):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    mount_point(["-t", "tmpfs", "-o", "size=512k", "tmpfs"], directory)
    ckpt = Checkpointer(str(directory), CheckpointConfig(save_interval_steps=1, max_to_keep=1))
    assert ckpt.save(1, make_state(1), {})
    ckpt.wait_until_finished()
    noise = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)  # incompressible 1 MB
    big = make_state(2).replace(params={"w": jnp.asarray(noise), "b": jnp.ones(4)})
    # The free-space estimate is fooled, so the write itself runs out of space.
    plenty = shutil.disk_usage("/")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: plenty)
    with pytest.raises(checkpoints.CheckpointSaveError, match=r"^cannot save checkpoint step 2 to .*: No space left"):
        ckpt.save(2, big, {})
        ckpt.wait_until_finished()
    restored = Checkpointer(str(directory), CheckpointConfig(), read_only=True).restore(abstract_like(make_state(0)))
    assert restored[2] == 1
    assert_bitwise_equal(restored[0], make_state(1))


def _lock_holder_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, caplog):
    live = _lock_holder_process()
    try:
        holder = {
            "host": socket.gethostname(),
            "pid": live.pid,
            "started": "2026-12-01 08:00:00",
            "process_start": checkpoints._process_start(live.pid),
        }
        (tmp_path / checkpoints.LOCK_NAME).write_text(json.dumps(holder))
        with pytest.raises(checkpoints.RunLockedError, match=rf"in use by another trainer \(pid {live.pid} on "):
            checkpoints.RunLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()
    with caplog.at_level(logging.WARNING):
        with checkpoints.RunLock(tmp_path) as lock:
            assert json.loads(pathlib.Path(lock.path).read_text())["pid"] == os.getpid()
            with pytest.raises(checkpoints.RunLockedError, match=f"pid {os.getpid()}"):
                checkpoints.RunLock(tmp_path).acquire()
    assert f"process that is gone (pid {live.pid}" in caplog.text
    assert not (tmp_path / checkpoints.LOCK_NAME).exists()


def test_run_lock_of_another_host_is_refused_with_how_to_clear_it(tmp_path):
    (tmp_path / checkpoints.LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(
        checkpoints.RunLockedError, match="pid 1 on elsewhere since then.*delete .*run.lock if it is gone"
    ):
        checkpoints.RunLock(tmp_path).acquire()


def make_two_model_state(seed: int) -> TinyTrainState:
    """A state whose params hold two models (as a SpacTor run's t5 and generator)."""
    rng = np.random.default_rng(seed)
    params = {
        "t5": {"w": jnp.asarray(rng.standard_normal((16, 32)), jnp.float32)},
        "generator": {"v": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)},
    }
    opt_state = {"t5": {"mu": jnp.asarray(rng.standard_normal((16, 32)), jnp.float32)}}
    return TinyTrainState(step=jnp.asarray(seed, jnp.int32), params=params, opt_state=opt_state)


def test_restore_params_reads_one_model_renamed_and_resharded(tmp_path):
    save_steps(tmp_path / "checkpoints", [3, 6], make_two_model_state)
    mesh = jax.make_mesh((1, 8), ("data", "fsdp"), (AUTO,) * 2)
    sharding = NamedSharding(mesh, P(None, "fsdp"))
    abstract_t5 = {"w": jax.ShapeDtypeStruct((16, 32), jnp.float32, sharding=sharding)}
    t5, step = checkpoints.restore_params(tmp_path, abstract_t5, select="t5")  # a run folder
    assert step == 6 and t5["w"].sharding == sharding
    assert_bitwise_equal(t5, make_two_model_state(6).params["t5"])
    renamed, step = checkpoints.restore_params(
        tmp_path / "checkpoints" / "3", {"model": abstract_t5}, rename={"model": "t5"}
    )
    assert step == 3
    assert_bitwise_equal(renamed["model"], make_two_model_state(3).params["t5"])


def test_restore_params_names_a_missing_model_or_a_mismatched_shape(tmp_path):
    save_steps(tmp_path, [1], make_two_model_state)
    with pytest.raises(
        checkpoints.CheckpointMismatchError, match=r"has no model \['model'\] \(it has \['generator', 't5'\]\)"
    ):
        checkpoints.restore_params(tmp_path, {"model": {"w": jax.ShapeDtypeStruct((16, 32), jnp.float32)}})
    with pytest.raises(
        checkpoints.CheckpointMismatchError,
        match=r"checkpoint has params/t5/w \[16, 32\], the model expects \[16, 64\]",
    ):
        checkpoints.restore_params(tmp_path, {"w": jax.ShapeDtypeStruct((16, 64), jnp.float32)}, select="t5")


def test_restore_params_skips_a_corrupt_step_and_moves_nothing(tmp_path):
    save_steps(tmp_path, [1, 2], make_two_model_state)
    _delete_array_metadata(tmp_path / "2")
    abstract = {"v": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
    generator, step = checkpoints.restore_params(tmp_path, abstract, select="generator")
    assert step == 1
    assert_bitwise_equal(generator, make_two_model_state(1).params["generator"])
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_restore_params_checks_the_fingerprints_of_what_it_reads(tmp_path):
    def only_params(seed):
        return make_two_model_state(seed).replace(opt_state={})

    save_steps(tmp_path, [1, 2], only_params)
    _overwrite(largest_array_data_file(tmp_path / "2"))  # the bytes of a parameter: nothing else is large
    t5, step = checkpoints.restore_params(tmp_path, {"w": jax.ShapeDtypeStruct((16, 32), jnp.float32)}, select="t5")
    assert step == 1
    assert_bitwise_equal(t5, only_params(1).params["t5"])
