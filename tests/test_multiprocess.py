"""Multi-process training on one machine: 2 processes x 4 fake CPU devices (gloo collectives) train
like 1 process x 8 devices, step for step, and their checkpoint restores and trains on 2 devices.

The 2-process run (tests/multiprocess_worker.py, `jax.distributed.initialize` on 127.0.0.1) and the
1-process reference train the tiny decoder 4 steps on a data=2 x fsdp=4 mesh, so the parameters are
split across the processes. Batches must not depend on the process count, so the losses and the
parameters agree to float32 round-off; process 0 alone writes metrics.jsonl, TensorBoard and
config.gin, and both processes write their checkpoint shards. The checkpoint is then restored on a
data=1 x fsdp=2 mesh and trained a fifth step, whose loss is the reference's fifth (the same batch 5).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from littlehelp import checkpoints, main, metrics, partitioning
from tests import multiprocess_worker

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "multiprocess_worker.py"
TIMEOUT_S = 240
RUN = [
    "--gin_file=models/decoder/tiny.gin",
    "--gin_file=runs/pretrain.gin",
    "--gin.TASK='docstrings_lm'",
    "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
    "--gin.BATCH_SIZE=8",
    "--gin.trainer.train.eval_every=0",
    "--gin.trainer.train.log_every=1",
    "--gin.trainer.train.peak_flops_per_device=1e9",
    "--gin.checkpoints.CheckpointConfig.save_interval_steps=4",
]
EIGHT_DEVICES = ["--gin.partitioning.MeshConfig.data=2", "--gin.partitioning.MeshConfig.fsdp=4"]
TWO_DEVICES = ["--gin.partitioning.MeshConfig.data=1", "--gin.partitioning.MeshConfig.fsdp=2"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker_env() -> dict[str, str]:
    """This environment with 4 fake CPU devices per process instead of conftest's 8."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    return {
        **os.environ,
        "XLA_FLAGS": " ".join([*flags, "--xla_force_host_platform_device_count=4"]),
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }


def _start_workers(out: Path, train_args: list[str]) -> list[tuple[subprocess.Popen, Path]]:
    port, started = _free_port(), []
    for index in range(2):
        log = out / f"worker{index}.log"
        command = [
            sys.executable,
            str(WORKER),
            f"--process_id={index}",
            "--num_processes=2",
            f"--port={port}",
            f"--report={out / f'worker{index}.json'}",
            "--",
            *train_args,
        ]
        with open(log, "w", encoding="utf-8") as stream:
            started.append(
                (subprocess.Popen(command, cwd=REPO, env=_worker_env(), stdout=stream, stderr=subprocess.STDOUT), log)
            )
    return started


def _wait(workers: list[tuple[subprocess.Popen, Path]], deadline: float) -> None:
    """Waits for every worker; on a failure or the deadline kills the rest and fails with each log's tail."""
    while any(process.poll() is None for process, _ in workers):
        failed = any(process.poll() not in (None, 0) for process, _ in workers)
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for process, _ in workers:
        if process.poll() is None:
            process.kill()
        process.wait()
    codes = [process.returncode for process, _ in workers]
    if any(codes):
        tails = "\n".join(
            f"--- worker {i} (exit {code}), last lines of {log}:\n" + log.read_text()[-3000:]
            for i, ((_, log), code) in enumerate(zip(workers, codes))
        )
        pytest.fail(f"2-process run failed or passed {TIMEOUT_S}s (exit codes {codes}):\n{tails}")


def _train(model_dir: Path, steps: int, mesh: list[str]):
    return main.main(["train", *RUN, *mesh, f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}"])


def _losses(model_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(model_dir / "metrics.jsonl")}


def _saved_params(model_dir: Path, step: int) -> dict[str, np.ndarray]:
    """The parameters saved at `step`, read back as host arrays without any mesh."""
    params = checkpoints.read_arrays(model_dir / "checkpoints" / str(step))["params"]
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs once: the 2-process run (4 steps), the 1-process reference (5 steps, meanwhile), then the
    2-process checkpoint restored and trained to step 5 on 2 devices."""
    out = tmp_path_factory.mktemp("multiprocess")
    deadline = time.monotonic() + TIMEOUT_S
    workers = _start_workers(out, [*RUN, *EIGHT_DEVICES, f"--gin.MODEL_DIR={out / 'two'}", "--gin.TRAIN_STEPS=4"])
    try:
        reference = _train(out / "one", 5, EIGHT_DEVICES)
    finally:
        _wait(workers, deadline)
    shutil.copytree(out / "two", out / "resumed")
    multiprocess_worker.configure([*RUN, *TWO_DEVICES, f"--gin.MODEL_DIR={out / 'two'}", "--gin.TRAIN_STEPS=4"])
    restored, restored_step = multiprocess_worker.restore_params(str(out / "two"), partitioning.MeshConfig(1, 2, 1))
    resumed = _train(out / "resumed", 5, TWO_DEVICES)
    reports = [json.loads((out / f"worker{i}.json").read_text()) for i in range(2)]
    return {
        "out": out,
        "reference": reference,
        "resumed": resumed,
        "reports": reports,
        "restored": restored,
        "restored_step": restored_step,
    }


def test_two_processes_feed_the_rows_of_one_global_batch(runs):
    reports = runs["reports"]
    assert [(r["process_index"], r["process_count"], r["devices"]) for r in reports] == [(0, 2, 8), (1, 2, 8)]
    assert [r["rows"]["run"] for r in reports] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # Devices that alternate between processes: each feeds every other row (checked shard by shard).
    assert [r["rows"]["alternating"] for r in reports] == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_two_processes_train_like_one(runs):
    out = runs["out"]
    assert [r["summary"] for r in runs["reports"]] == [{"first_step": 0, "last_step": 4}] * 2
    two, one = _losses(out / "two"), _losses(out / "one")
    assert sorted(two) == [1, 2, 3, 4]  # one record per step: process 0 alone writes metrics.jsonl
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=1e-5)
    assert len(set(two.values())) == 4  # the loss moves: 4 different batches and updates
    assert len(list((out / "two" / "tensorboard").iterdir())) == 1 and (out / "two" / "config.gin").is_file()
    for process in (0, 1):  # each process wrote its own shards of the state
        assert any((out / "two" / "checkpoints" / "4" / "state" / f"ocdbt.process_{process}" / "d").iterdir())
    saved, reference = _saved_params(out / "two", 4), _saved_params(out / "one", 4)
    assert saved.keys() == reference.keys() and saved
    for name in saved:
        np.testing.assert_allclose(saved[name], reference[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_checkpoint_of_two_processes_restores_and_trains_on_two_devices(runs):
    out = runs["out"]
    saved = _saved_params(out / "two", 4)
    assert runs["restored_step"] == 4 and runs["restored"].keys() == saved.keys()
    for name, value in saved.items():
        np.testing.assert_array_equal(runs["restored"][name], value, err_msg=name)
    resumed, reference = runs["resumed"], runs["reference"]
    assert (resumed.first_step, resumed.last_step, reference.last_step) == (4, 5, 5)
    assert (out / "resumed" / "checkpoints" / "5").is_dir()
    # Step 5 reads batch 5 whatever the host count: the resumed loss is the reference's.
    np.testing.assert_allclose(_losses(out / "resumed")[5], _losses(out / "one")[5], rtol=1e-5)
