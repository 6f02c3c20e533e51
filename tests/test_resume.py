"""Exact resume through the CLI: a run stopped (returned, or killed with SIGTERM) and resumed ends
with parameters bitwise identical to an uninterrupted run, data position included."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from littlehelp import checkpoints, errors, main, metrics
from tests.data.fixtures import requires_corpus

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = [
    "--gin_file=runs/smoke.gin",  # one device: exactness does not need more, compiling does
    "--gin.checkpoints.CheckpointConfig.save_interval_steps=1000",
]


def _train(model_dir: Path, steps: int):
    return main.main(["train", *TINY_RUN, f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}"])


def _final_arrays(model_dir: Path) -> list[np.ndarray]:
    """Every array of the newest checkpoint, read back without shardings on one device."""
    directory = model_dir / "checkpoints"
    step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    return jax.tree.leaves(checkpoints.read_arrays(directory / str(step)))


def _assert_bitwise_equal(a: Path, b: Path):
    left, right = _final_arrays(a), _final_arrays(b)
    assert len(left) == len(right)
    for x, y in zip(left, right):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_stop_and_resume_equals_straight_run(tmp_path):
    straight = _train(tmp_path / "straight", 6)
    _train(tmp_path / "resumed", 3)
    resumed = _train(tmp_path / "resumed", 6)
    assert (straight.last_step, resumed.first_step, resumed.last_step) == (6, 3, 6)
    _assert_bitwise_equal(tmp_path / "straight", tmp_path / "resumed")
    assert (tmp_path / "resumed" / "config.gin").read_text().count("TRAIN_STEPS") >= 1


def test_sigterm_saves_and_resumes_exactly(tmp_path):
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "littlehelp.main",
        "train",
        *TINY_RUN,
        f"--gin.MODEL_DIR={killed}",
        "--gin.TRAIN_STEPS=100000",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and len(metrics.read_jsonl(log)) >= 3):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == errors.EXIT_PREEMPTED, output[-3000:]  # a scheduler tells it from completion
    assert "SIGTERM received" in output
    reached = max(record["step"] for record in metrics.read_jsonl(log))
    assert (killed / "checkpoints" / str(reached)).is_dir()
    total = reached + 3
    resumed = _train(killed, total)
    assert resumed.first_step == reached
    _train(tmp_path / "straight", total)
    _assert_bitwise_equal(tmp_path / "straight", killed)


@requires_corpus
def test_resume_on_the_real_corpus_continues_with_the_next_batch(tmp_path):
    """The span-corruption demo task on Shakespeare: stopped at step 2 and resumed, it ends bitwise
    equal to a straight 4-step run (the data position is restored, not re-read from the start)."""
    demo = [
        "--gin_file=runs/demo.gin",
        "--gin.BATCH_SIZE=8",
        "--gin.partitioning.MeshConfig.data=1",
        "--gin.trainer.train.eval_every=0",
        "--gin.trainer.train.peak_flops_per_device=1e9",
    ]

    def run(model_dir, steps):
        return main.main(["train", *demo, f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}"])

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    assert run(tmp_path / "resumed", 4).first_step == 2
    _assert_bitwise_equal(tmp_path / "straight", tmp_path / "resumed")
