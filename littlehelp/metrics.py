"""Run metrics: the trackers that record scalars (metrics.jsonl, TensorBoard, Weights & Biases),
throughput and MFU, and progress display.

MFU = (model FLOPs per step / step seconds) / (devices x peak FLOP/s per device). On machines
without a published peak (CPUs) the peak is this machine's own measured dense-matmul rate
(`measure_matmul_flops`), as the benchmarks report it.

Trackers are chosen in gin: `MetricsWriter.trackers = ["jsonl", "tensorboard", "wandb"]`. metrics.jsonl
is always among them (sweeps, studies and `load_run` read it back); the W&B tracker needs the `wandb`
extra and is configured through `WandbTracker` (project, entity, group).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import gin
import jax
import jax.numpy as jnp
from absl import logging
from tensorboardX import SummaryWriter
from tqdm import tqdm

from littlehelp.config import OPERATIVE_CONFIG_NAME, ConfigError, gin_bindings


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


class Tracker(Protocol):
    """Where scalars go: one record per `write`, closed once at the end of the run."""

    def write(self, step: int, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


METRICS_FILE_NAME = "metrics.jsonl"


class JsonlTracker:
    """MODEL_DIR/metrics.jsonl: one JSON record per write, `{"step": N, "train/loss": ...}`."""

    def __init__(self, model_dir: Path):
        self.path = model_dir / METRICS_FILE_NAME
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, values: Mapping[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()

    def drop_after(self, step: int) -> int:
        """Drops the records of steps after `step` (atomically); returns how many were dropped."""
        self._file.flush()
        records = read_jsonl(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) < len(records):
            staging = self.path.with_suffix(".jsonl.tmp")
            staging.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            self._file.close()
            os.replace(staging, self.path)
            self._file = open(self.path, "a", encoding="utf-8")
        return len(records) - len(kept)

    def close(self) -> None:
        self._file.close()


class TensorBoardTracker:
    """TensorBoard scalars under MODEL_DIR/tensorboard."""

    def __init__(self, model_dir: Path):
        self._writer = SummaryWriter(str(model_dir / "tensorboard"))

    def write(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        self._writer.close()


WANDB_RUN_ID_NAME = "wandb_run_id"  # the run folder's W&B run id, so a resumed run continues it


@gin.configurable
class WandbTracker:
    """A Weights & Biases run named after the run folder, with the operative gin config as its config.

    The run id is stored in MODEL_DIR/wandb_run_id, so a resumed run (or a later `littlehelp eval`)
    continues the same W&B run. `group` defaults to W&B's WANDB_RUN_GROUP, which `littlehelp sweep`
    sets to the sweep's MODEL_DIR. W&B's own files go under MODEL_DIR/wandb; `WANDB_MODE=offline`
    runs without a network (`wandb sync MODEL_DIR/wandb/offline-run-*` uploads later).
    """

    def __init__(
        self,
        model_dir: Path,
        project: str = "littlehelp",
        entity: str | None = None,
        group: str | None = None,
    ):
        wandb = _import_wandb()
        self._run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            id=wandb_run_id(model_dir),
            resume="allow",
            name=model_dir.name,
            dir=str(model_dir),
            config={"gin": _operative_bindings(model_dir), "model_dir": str(model_dir)},
        )

    def write(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def close(self) -> None:
        self._run.finish()


WANDB_GROUP_VARIABLE = "WANDB_RUN_GROUP"  # W&B's own: the group of runs started without `group`


@contextlib.contextmanager
def wandb_group(name: str) -> Iterator[None]:
    """Sets W&B's run group to `name` for the runs started inside (a group the user set is kept)."""
    if WANDB_GROUP_VARIABLE in os.environ:
        yield
        return
    os.environ[WANDB_GROUP_VARIABLE] = name
    try:
        yield
    finally:
        del os.environ[WANDB_GROUP_VARIABLE]


def _import_wandb() -> Any:
    """The wandb module, or a one-line error saying how to install it."""
    try:
        import wandb  # pylint: disable=import-outside-toplevel (an optional extra)
    except ImportError:
        raise ConfigError(
            "the wandb tracker needs the wandb extra: .venv/bin/pip install -c constraints.txt -e '.[wandb]'"
        ) from None
    return wandb


def _operative_bindings(model_dir: Path) -> dict[str, Any]:
    """The bindings of the run's operative config.gin ({} before `train` has written it)."""
    path = model_dir / OPERATIVE_CONFIG_NAME
    return gin_bindings(path.read_text(encoding="utf-8")) if path.exists() else {}


def wandb_run_id(model_dir: Path) -> str:
    """The W&B run id stored in `model_dir`, or a new random one written there first."""
    path = model_dir / WANDB_RUN_ID_NAME
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    run_id = secrets.token_hex(6)
    staging = path.with_suffix(".tmp")
    staging.write_text(run_id + "\n", encoding="utf-8")
    os.replace(staging, path)
    return run_id


TRACKERS: dict[str, Callable[[Path], Tracker]] = {
    "jsonl": JsonlTracker,
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
}


def check_tracker_names(names: Sequence[str]) -> None:
    """Raises `ConfigError` unless `names` are known trackers, "jsonl" among them."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"MetricsWriter.trackers: unknown tracker {unknown[0]!r} (known: {', '.join(TRACKERS)})")
    if "jsonl" not in names:
        raise ConfigError(
            "MetricsWriter.trackers must include 'jsonl': sweeps, studies and load_run read metrics.jsonl"
        )


@gin.configurable
class MetricsWriter:
    """Writes scalars to each tracker and shows progress.

    On an interactive terminal a progress bar advances every step; otherwise a plain log line is
    printed whenever scalars are written. Only process 0 does any of this: on the other processes
    of a multi-process run every method does nothing (all of them hold the same scalars).
    """

    def __init__(
        self,
        model_dir: str | Path,
        total_steps: int,
        start_step: int = 0,
        interactive: bool | None = None,
        trackers: Sequence[str] = ("jsonl", "tensorboard"),
    ):
        check_tracker_names(trackers)
        self.model_dir = Path(model_dir)
        self._writes = jax.process_index() == 0
        self._bar = None
        self._trackers: dict[str, Tracker] = {}
        if not self._writes:
            return
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self._trackers = {name: TRACKERS[name](self.model_dir) for name in trackers}
        interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar = (
            tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True) if interactive else None
        )

    def drop_after(self, step: int) -> int:
        """Drops the metrics.jsonl records of steps after `step` (a resumed run recomputes them).

        Returns how many were dropped; the file is replaced atomically. Dashboards keep what they
        were sent (W&B ignores a step it has already recorded).
        """
        if not self._writes:
            return 0
        jsonl = self._trackers["jsonl"]
        assert isinstance(jsonl, JsonlTracker)
        dropped = jsonl.drop_after(step)
        if dropped:
            logging.info(
                "Resuming at step %d: dropped %d metrics records of later steps from %s (they are recomputed)",
                step,
                dropped,
                jsonl.path,
            )
        return dropped

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
        """Records `scalars` for `step` under `prefix` (e.g. "train", "eval")."""
        if not self._writes:
            return
        values = {f"{prefix}/{k}": float(v) for k, v in scalars.items()}
        for tracker in self._trackers.values():
            tracker.write(step, values)
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
        """Closes the trackers and the progress bar (process 0; elsewhere nothing is open)."""
        if not self._writes:
            return
        if self._bar is not None:
            self._bar.close()
        for tracker in self._trackers.values():
            tracker.close()


_SHOWN = (
    "loss",
    "accuracy",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "mfu",
    "steps_per_second",
    "data_wait_share",
)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
