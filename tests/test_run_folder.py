"""A run folder never loses work, through the CLI: a corrupt newest step is moved aside and
recomputed, a second trainer is refused, eval reads checkpoints without writing, a model that does
not fit its checkpoint is named, and each failure is one line with its exit code."""

import json
import os
import socket
import subprocess
import sys

import pytest

from littlehelp import checkpoints, errors, main, metrics
from tests.test_resume import TINY_RUN

EVAL = ["--gin_file=runs/eval.gin", "--gin.EVAL_BATCHES=1"]


def _cli(args: list[str]):
    return main.main(args)


def _exit_and_line(capsys, args: list[str]) -> tuple[int, list[str]]:
    """Runs the CLI expecting it to stop with an error; returns (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as stopped:
        _cli(args)
    return stopped.value.code, capsys.readouterr().err.strip().splitlines()


def _steps_on_disk(model_dir) -> list[int]:
    return sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_corrupt_newest_step_is_moved_aside_recomputed_and_saved(tmp_path, caplog):
    run = [
        *TINY_RUN,
        f"--gin.MODEL_DIR={tmp_path}",
        "--gin.TRAIN_STEPS=4",
        "--gin.checkpoints.CheckpointConfig.save_interval_steps=2",
    ]
    _cli(["train", *run])
    assert _steps_on_disk(tmp_path) == [2, 4]
    (tmp_path / "checkpoints" / "4" / "state" / "_METADATA").unlink()
    resumed = _cli(["train", *run])
    assert (resumed.first_step, resumed.last_step) == (2, 4)
    assert _steps_on_disk(tmp_path) == [2, 4]  # step 4 was recomputed and saved again
    (moved,) = (tmp_path / "checkpoints" / checkpoints.CORRUPT_FOLDER).iterdir()
    assert moved.name.startswith("4-") and (moved / "state").is_dir() and not (moved / "state" / "_METADATA").exists()
    assert f"to {moved}; its step will be recomputed" in caplog.text
    train_steps = [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4]  # steps 3 and 4 once each, although they were computed twice
    with caplog.at_level("INFO"):
        _cli(["eval", *run, *EVAL])
    assert "eval at step 4" in caplog.text


def test_second_trainer_on_one_folder_is_refused_naming_the_holder(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {
            "host": socket.gethostname(),
            "pid": holder.pid,
            "started": "2026-12-01 08:00:00",
            "process_start": checkpoints._process_start(holder.pid),
        }
        (tmp_path / checkpoints.LOCK_NAME).write_text(json.dumps(lock))
        code, lines = _exit_and_line(capsys, ["train", *TINY_RUN, f"--gin.MODEL_DIR={tmp_path}", "--gin.TRAIN_STEPS=2"])
    finally:
        holder.kill()
        holder.wait()
    assert code == errors.EXIT_ERROR and len(lines) == 1
    assert lines[0].startswith(f"littlehelp: error: {tmp_path} is in use by another trainer (pid {holder.pid} on ")
    assert sorted(os.listdir(tmp_path)) == [checkpoints.LOCK_NAME]  # refused before anything was written


def test_eval_without_checkpoints_writes_nothing_and_says_so(tmp_path, capsys):
    code, lines = _exit_and_line(
        capsys, ["eval", *TINY_RUN, *EVAL, f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.TRAIN_STEPS=1"]
    )
    assert code == errors.EXIT_ERROR
    assert lines == [
        f"littlehelp: error: no checkpoint in {tmp_path / 'run' / 'checkpoints'} yet: train this MODEL_DIR "
        "first, or read another run's with --gin.checkpoints.CheckpointConfig.restore_path='<run folder "
        "or step folder>'"
    ]
    assert not (tmp_path / "run").exists()


def test_model_that_does_not_fit_the_checkpoint_is_named_and_nothing_is_moved(tmp_path, capsys):
    run = [*TINY_RUN, f"--gin.MODEL_DIR={tmp_path}", "--gin.TRAIN_STEPS=1"]
    _cli(["train", *run])
    code, lines = _exit_and_line(capsys, ["train", *run, "--gin.TRAIN_STEPS=2", "--gin.t5.T5Config.mlp_dim=96"])
    assert code == errors.EXIT_ERROR and len(lines) == 1
    assert lines[0].startswith(f"littlehelp: error: checkpoint {tmp_path / 'checkpoints' / '1'} does not fit the model")
    assert (
        "checkpoint has params/model/decoder/layers/mlp/wo/kernel [2, 128, 64], the model expects [2, 96, 64]"
        in lines[0]
    )
    assert _steps_on_disk(tmp_path) == [1] and not (tmp_path / "checkpoints" / checkpoints.CORRUPT_FOLDER).exists()


def test_a_refused_finetune_writes_nothing_in_its_run_folder(tmp_path, capsys):
    run = tmp_path / "finetune"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code, lines = _exit_and_line(
        capsys,
        [
            "train",
            *TINY_RUN,
            "--gin_file=runs/finetune.gin",
            f"--gin.MODEL_DIR={run}",
            f"--gin.INITIAL_CHECKPOINT_PATH={tmp_path / 'nowhere'}",
            "--gin.TRAIN_STEPS=2",
            "--gin.TASK='docstrings_prefix_lm'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
        ],
    )
    assert code == errors.EXIT_ERROR
    assert lines == [f"littlehelp: error: CheckpointConfig.restore_path {tmp_path / 'nowhere'} does not exist."]
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
