"""Where a train step's time goes: a JAX profiler trace of chosen steps, and the host's data-wait share.

`train.profile_steps = (START, END)` traces the steps that take the state from step START to step END
into MODEL_DIR/profile (TensorBoard's profile plugin reads it: `tensorboard --logdir MODEL_DIR/profile`;
`perfetto_trace.json.gz` beside it opens in Perfetto). Every step function of the window is compiled
before the trace starts, so compilation is never inside it.

`StepTimes` splits each logging interval's host time into waiting for the next batch and the rest
(dispatching the step and reading its metrics back, which waits for the device): an input-bound run
shows a large `data_wait_share` in its log lines.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
from absl import logging

from littlehelp.config import ConfigError

PROFILE_DIR_NAME = "profile"


def check_profile_steps(profile_steps: Any, steps: int) -> None:
    """Raises `ConfigError` unless `profile_steps` is None or (START, END) with 0 <= START < END <= steps."""
    if profile_steps is None:
        return
    pair = tuple(profile_steps) if isinstance(profile_steps, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in pair):
        raise ConfigError(f"train.profile_steps must be (START, END), two step numbers, got {profile_steps!r}")
    start, end = pair
    if not 0 <= start < end <= steps:
        raise ConfigError(f"train.profile_steps={profile_steps!r} must satisfy 0 <= START < END <= train.steps={steps}")


class ProfileWindow:
    """Traces the steps `start`..`end - 1` of the loop (state step START to END) into MODEL_DIR/profile."""

    def __init__(self, model_dir: str | Path, profile_steps: tuple[int, int] | None):
        self.folder = Path(model_dir) / PROFILE_DIR_NAME
        self.steps = range(*profile_steps) if profile_steps else range(0)
        self.active = False

    def starts_at(self, step: int, first_step: int) -> bool:
        """Whether the trace starts before `step`; a run resumed inside the window skips it (logged)."""
        if step == first_step and self.steps and self.steps.start < step < self.steps.stop:
            logging.warning("not profiling: the run resumed at step %d, inside profile_steps %s", step, self.steps)
        return step == self.steps.start and bool(self.steps)

    def start(self) -> None:
        """Starts the trace (call after compiling every step function of the window)."""
        logging.info("profiling steps %d -> %d into %s", self.steps.start, self.steps.stop, self.folder)
        jax.profiler.start_trace(str(self.folder), create_perfetto_trace=True)
        self.active = True

    def stop_after(self, step: int, outputs: Any) -> None:
        """Stops the trace once the window's last step (`step`) has finished on the device."""
        if self.active and step + 1 == self.steps.stop:
            jax.block_until_ready(outputs)
            self.close()
            logging.info("wrote the profile of steps %d -> %d to %s", self.steps.start, self.steps.stop, self.folder)

    def close(self) -> None:
        """Stops a trace still running (a run that ended inside the window)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()


class StepTimes:
    """Host seconds of the steps since the last `reset`: in total and waiting for batches."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.data_wait = time.perf_counter(), 0, 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leaves the time spent inside out of the interval (e.g. starting or stopping a trace)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - began

    def waited(self, seconds: float) -> None:
        """Adds time spent waiting for a batch."""
        self.data_wait += seconds

    def finished_step(self) -> None:
        self.steps += 1

    def summary(self) -> dict[str, float]:
        """seconds_per_step and data_wait_share (of the host's time) of the steps since `reset`."""
        total = time.perf_counter() - self.start
        return {"seconds_per_step": total / self.steps, "data_wait_share": self.data_wait / total}
