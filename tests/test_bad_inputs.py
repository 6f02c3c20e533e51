"""Bad inputs end in one line naming the culprit, before anything expensive and with nothing on disk lost:
an impossible mesh or device count, span-corruption lengths too short for the noise settings, a
MODEL_DIR that cannot be written, and the run summary's hints (tensorboard only when it is installed)."""

import errno
import os

import pytest

from littlehelp import aot, checkpoints, errors, launch, partitioning, trainer
from littlehelp.config import ConfigError
from littlehelp.data import DatasetConfig, preprocessors
from tests.data.fixtures import register_generated_tasks
from tests.test_run_folder import _exit_and_line

SMOKE = ["--gin_file=runs/smoke.gin", "--gin.TRAIN_STEPS=1"]


# An impossible mesh or device count (the tests have 8 fake CPU devices).


@pytest.mark.parametrize(
    "mesh, message",
    [
        (partitioning.MeshConfig(data=16), "MeshConfig data=16 fsdp=1 tensor=1 needs 16 devices, but 8 are available"),
        (partitioning.MeshConfig(data=3, fsdp=-1), "MeshConfig data=3 fsdp=-1 tensor=1: 8 devices are not divisible"),
    ],
)
def test_a_mesh_the_devices_cannot_hold_is_a_config_error(mesh, message):
    with pytest.raises(ConfigError, match=message) as refused:
        partitioning.make_mesh(mesh)
    assert refused.value.exit_code == errors.EXIT_CONFIG


def test_a_mesh_axis_that_is_zero_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="MeshConfig.tensor must be positive or -1, got 0"):
        partitioning.MeshConfig(tensor=0)


def test_train_with_an_impossible_mesh_stops_in_one_line_before_building_anything(tmp_path, capsys):
    code, lines = _exit_and_line(
        capsys, ["train", *SMOKE, f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.partitioning.MeshConfig.data=16"]
    )
    assert code == errors.EXIT_CONFIG
    assert lines == ["littlehelp: error: MeshConfig data=16 fsdp=1 tensor=1 needs 16 devices, but 8 are available"]
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "config.gin").exists()


MESH_9_ON_8 = (
    "--mesh=3x3x1 with --num_devices=8: MeshConfig data=3 fsdp=3 tensor=1 needs 9 devices, but 8 are available"
)


@pytest.mark.parametrize(
    "num_devices, mesh, message",
    [
        (8, "3x3x1", MESH_9_ON_8),
        (
            8,
            "3x-1x1",
            "--mesh=3x-1x1 with --num_devices=8: MeshConfig data=3 fsdp=-1 tensor=1: 8 devices are not "
            "divisible by the fixed axes' product 3",
        ),
        (-2, None, "--num_devices=-2: give a positive number of devices"),
        (0, None, "--num_devices=0: give a positive number of devices"),
    ],
)
def test_compile_refuses_a_device_count_or_mesh_that_cannot_be(num_devices, mesh, message):
    with pytest.raises(aot.TargetError) as refused:
        aot.cpu_device_count(num_devices, aot.parse_mesh(mesh) if mesh else None)
    assert str(refused.value) == message and refused.value.exit_code == errors.EXIT_CONFIG


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_devices=8", "--mesh=3x3x1"], MESH_9_ON_8),
        (["--num_devices=-2"], "--num_devices=-2: give a positive number of devices"),
    ],
)
def test_compile_cli_refuses_an_impossible_device_count_before_reading_the_run(
    flags, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(launch, "configure", lambda *args: pytest.fail("the run's gin files were read"))
    code, lines = _exit_and_line(capsys, ["compile", *SMOKE, f"--gin.MODEL_DIR={tmp_path}", *flags])
    assert code == errors.EXIT_CONFIG and lines == [f"littlehelp: error: {message}"]


# Span-corruption lengths too short for the noise settings.


@pytest.mark.parametrize(
    "lengths, message",
    [
        (
            {"inputs": 4, "targets": 1},
            r"needs inputs length >= 10 \(and then targets >= 4\), got \{'inputs': 4, "
            r"'targets': 1\}",
        ),
        (
            {"inputs": 64, "targets": 10},
            r"needs targets length >= 14 for inputs length 64, got \{'inputs': 64, "
            r"'targets': 10\}",
        ),
    ],
)
def test_span_corruption_lengths_too_short_are_refused_when_the_data_is_configured(lengths, message):
    task = f"{register_generated_tasks()}_span_corruption"
    with pytest.raises(
        ConfigError,
        match=rf"DatasetConfig {task!r}: span corruption with noise_density 0\.15 and "
        rf"mean_noise_span_length 3\.0 {message}",
    ):
        DatasetConfig(task, lengths, batch_size=8)


def test_the_minimum_span_corruption_lengths_are_accepted():
    task = f"{register_generated_tasks()}_span_corruption"
    assert preprocessors.span_corruption_lengths(10) == (10, 4)
    DatasetConfig(task, {"inputs": 10, "targets": 4}, batch_size=8)


# A MODEL_DIR that cannot be written.


def test_a_model_dir_that_is_a_file_is_refused_in_one_line_and_left_alone(tmp_path, capsys):
    model_dir = tmp_path / "run"
    model_dir.write_text("my notes")
    code, lines = _exit_and_line(capsys, ["train", *SMOKE, f"--gin.MODEL_DIR={model_dir}"])
    assert code == errors.EXIT_ERROR
    assert lines == [f"littlehelp: error: MODEL_DIR {model_dir} is a file, not a folder; choose another MODEL_DIR"]
    assert model_dir.read_text() == "my notes"


def test_a_read_only_model_dir_is_refused_naming_it(tmp_path, monkeypatch):
    """A read-only MODEL_DIR (os.open refuses to create in it, as on a read-only mount: root ignores modes)."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(str(model_dir)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(errors.LittlehelpError) as refused:
        checkpoints.RunLock(model_dir).acquire()
    assert refused.value.one_line() == (
        f"MODEL_DIR {model_dir} cannot be written (Read-only file system); choose another MODEL_DIR"
    )
    assert os.listdir(model_dir) == []


# What the run summary tells the user to run.


def _summary(model_dir: str) -> str:
    return trainer.TrainSummary(model_dir, 0, 2, {"loss": 1.5}, {}, False).describe()


def test_the_summary_names_tensorboard_only_when_it_is_installed(monkeypatch):
    monkeypatch.setattr(trainer, "tensorboard_installed", lambda: True)
    assert "metrics: /runs/a/metrics.jsonl   tensorboard --logdir /runs/a/tensorboard" in _summary("/runs/a")
    monkeypatch.setattr(trainer, "tensorboard_installed", lambda: False)
    shown = _summary("/runs/a")
    assert "metrics: /runs/a/metrics.jsonl" in shown and "tensorboard --logdir" not in shown
    assert "event files: /runs/a/tensorboard (to view them: pip install tensorboard)" in shown
