"""Run metrics: JSONL and TensorBoard scalars, throughput and MFU, and progress display.

MFU = (model FLOPs per step / step seconds) / (devices x peak FLOP/s per device). On machines
without a published peak (CPUs) the peak is this machine's own measured dense-matmul rate
(`measure_matmul_flops`), as the benchmarks report it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging
from tensorboardX import SummaryWriter
from tqdm import tqdm


def measure_matmul_flops(size: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
    """Median FLOP/s of a jitted float32 [size, size] @ [size, size] on the default device."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(seconds)


class MetricsWriter:
    """Writes scalars to MODEL_DIR/metrics.jsonl and TensorBoard, and shows progress.

    On an interactive terminal a progress bar advances every step; otherwise a plain log line is
    printed whenever scalars are written. Only process 0 does any of this: on the other processes
    of a multi-process run every method does nothing (all of them hold the same scalars).
    """

    def __init__(self, model_dir: str | Path, total_steps: int, start_step: int = 0, interactive: bool | None = None):
        self.model_dir = Path(model_dir)
        self._writes = jax.process_index() == 0
        self._bar = None
        if not self._writes:
            return
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.model_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tensorboard = SummaryWriter(str(self.model_dir / "tensorboard"))
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar = (
            tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True) if interactive else None
        )

    def drop_after(self, step: int) -> int:
        """Drops the metrics.jsonl records of steps after `step` (a resumed run recomputes them).

        Returns how many were dropped; the file is replaced atomically.
        """
        if not self._writes:
            return 0
        path = self.model_dir / "metrics.jsonl"
        self._jsonl.flush()
        records = read_jsonl(path)
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) < len(records):
            staging = path.with_suffix(".jsonl.tmp")
            staging.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            self._jsonl.close()
            os.replace(staging, path)
            self._jsonl = open(path, "a", encoding="utf-8")
            logging.info(
                "Resuming at step %d: dropped %d metrics records of later steps from %s (they are recomputed)",
                step,
                len(records) - len(kept),
                path,
            )
        return len(records) - len(kept)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
        """Records `scalars` for `step` under `prefix` (e.g. "train", "eval")."""
        if not self._writes:
            return
        values = {f"{prefix}/{k}": float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tensorboard.add_scalar(name, value, step)
        summary = " ".join(f"{k}={v:.4g}" for k, v in scalars.items() if k in _SHOWN)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{prefix}: {summary}")
        else:
            logging.info("step %d %s: %s", step, prefix, summary)

    def advance(self, steps: int = 1) -> None:
        """Moves the progress bar on."""
        if self._bar is not None:
            self._bar.update(steps)

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Closes the files and the progress bar (process 0; elsewhere nothing is open)."""
        if not self._writes:
            return
        if self._bar is not None:
            self._bar.close()
        self._tensorboard.close()
        self._jsonl.close()


_SHOWN = ("loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_second", "mfu", "steps_per_second")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
