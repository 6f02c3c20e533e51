"""Training runs launched by scripts (reproductions): one `littlehelp train` process per run folder.

A folder that already holds its final step is reused, so a stopped reproduction resumes where it
stopped; each run's output goes to `<folder>.log` beside it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from littlehelp import checkpoints

REPO = Path(__file__).resolve().parent.parent


def train(folder: Path, gin_files: str | Sequence[str], bindings: Mapping[str, Any], final_step: int,
          in_process: bool = False) -> float:
    """Runs `littlehelp train` with `gin_files` (one or several, parsed in order) into `folder` up to
    `final_step` (gin `bindings` added) unless it holds that step or a later one; returns the seconds it
    took. A failed run stops the script with its last log line.

    `in_process` runs it in this Python process (no start-up of its own: for many short runs), logging to
    this process's stderr instead of `<folder>.log`.
    """
    steps = checkpoints.finished_steps(folder / "checkpoints")
    if steps and steps[-1] >= final_step:
        print(f"  {folder.name}: step {steps[-1]} is there, reused", flush=True)
        return 0.0
    folder.mkdir(parents=True, exist_ok=True)
    files = [gin_files] if isinstance(gin_files, str) else list(gin_files)
    command = [sys.executable, "-m", "littlehelp.main", "train", *(f"--gin_file={f}" for f in files),
               f"--gin.MODEL_DIR={folder}", f"--gin.TRAIN_STEPS={final_step}",
               *(f"--gin.{k}={v}" for k, v in bindings.items())]
    start = time.perf_counter()
    if in_process:
        _train_here(folder, command[3:])
    else:
        _train_in_subprocess(folder, command)
    seconds = time.perf_counter() - start
    print(f"  {folder.name}: {final_step} steps done in {seconds:.0f}s", flush=True)
    return seconds


def _train_here(folder: Path, arguments: list[str]) -> None:
    """`littlehelp train ARGUMENTS` in this process; a failure (already printed) stops the script."""
    from littlehelp import main  # pylint: disable=import-outside-toplevel

    try:
        main.main(arguments)
    except SystemExit as error:
        raise SystemExit(f"training {folder} failed (exit {error.code}); its error is printed above") from None


def _train_in_subprocess(folder: Path, command: list[str]) -> None:
    """`command` in a new process logging to `<folder>.log`; a failure stops the script with its last line."""
    log_path = folder.parent / f"{folder.name}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode:
        tail = log_path.read_text(encoding="utf-8").strip().splitlines()[-1:]
        raise SystemExit(f"training {folder} failed (exit {done.returncode}): {' '.join(tail)} (full log: {log_path})")
