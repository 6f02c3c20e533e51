"""Fault drill: SIGKILLs in every phase of a run, SIGTERM, a corrupted step, a truncated input-iterator
state, a failed save, a sweep with a failing point and an interrupted convert; then a bitwise comparison.

Trains the tests' tiny T5 (littlehelp/gin/runs/smoke.gin: inputs/targets 32, batch 8, one device, eval off) with
asynchronous saves every `--save_interval` steps, keeping `--max_to_keep`, through the real CLI
(`python -m littlehelp.main train ...`, one subprocess per attempt, its output read live). Each
attempt ends in a fault and is resumed by running the same command again:

- `--kills` SIGKILLs (at least 5), planned round-robin over five phases of an attempt, so that every
  phase gets one; the saves they wait for are spread from step 2 * save_interval to the last save
  before `steps - 2 * save_interval`, so the run moves on between the rounds:
    between saves  as soon as save N (the first at or after its step) is on disk
    start-up       when the attempt logs that it restores its checkpoint (or starts from scratch)
    mid-save       right after "Checkpoint step N being written": the asynchronous write in flight
    compile        right after "training steps A -> B", before "compiled the train step"
    mid-step       right after the step halfway from where the attempt resumed to its first save
  The phase each kill hit is read from what the attempt had logged and what is on disk once it is
  dead (`phase_hit`). The next attempt must take over the dead process's run.lock and resume from
  the newest finished step (where it dies in start-up itself, the first one that gets to "training
  steps" must). An attempt that passes step `steps - 2 * save_interval` is killed there, so that
  every fault finds work left.
- one corrupted newest step (its state/_METADATA deleted or its largest data file truncated), followed
  by one SIGTERM: the resumed attempt must move the step to checkpoints/corrupt/<step>-<time>/, resume
  from the step before, and save the corrupted step again; the SIGTERM, sent once that save has begun,
  must save, log "SIGTERM received" and exit with `errors.EXIT_PREEMPTED`.
- one truncated input-iterator state (the largest file of the newest step's data_iterator/ cut to
  half): the next attempt must resume from that step with one warning ("... does not read back ...;
  replaying N batches instead") and without moving the step aside; it is killed once its first save
  is on disk, so the final comparison covers the replayed batches.
- one failed save: checkpoints/ bind-mounted read-only (needs root; recorded as skipped, with the
  reason, where mounting is refused); the attempt must exit non-zero within
  `--failed_save_limit` s with exactly one stderr line "littlehelp: error: cannot save checkpoint
  step ..." naming the folder, and leave every file of the steps on disk as it was.
These three come at random places in the second half of the kills.

After the last fault it runs to `--steps`, compares every array of the final checkpoint bitwise
(dtype, shape, bytes) with an uninterrupted run of the same config, checks that metrics.jsonl has each
train step exactly once and that every corrupted step is still whole under corrupt/, and times the
trainer's finite-state check (run before each save) against the median step time. Then two faults
outside that run folder:

- a sweep (`littlehelp sweep`, runs/smoke.gin, 2 steps a point) whose first point has an infinite
  learning rate: it must exit 1, record that point as failed with its one-line reason in sweep.json
  and sweep.md, and finish the other point; the same command again must retry the failed point alone
  (failing the same way) and leave the finished point's files as they were.
- `littlehelp convert` of a random tiny decoder (written as an HF folder for the drill), SIGKILLed once
  its staging folder holds a file: the destination must hold nothing or a complete folder, and
  converting again must write one equal to a conversion made in the drill's own process.

    python scripts/fault_drill.py [--kills 10] [--seed 0] [--steps 60] [--out_dir results]
writes OUT_DIR/fault_drill.{json,md}; exit status 1 when the target (every fault survived, kills in all
five phases, 0 mismatches, nothing deleted) is missed. Run folders and per-attempt logs stay in
`--work_dir`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import queue
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from littlehelp import checkpoints, errors, trainer  # noqa: E402
from littlehelp.features import DECODER_INPUT_TOKENS  # noqa: E402
from littlehelp.metrics import read_jsonl  # noqa: E402
from littlehelp.models import build_model, convert  # noqa: E402
from littlehelp.models.convert import Pretrained, run_folder  # noqa: E402
from littlehelp.models.decoder import DecoderConfig  # noqa: E402

TINY_RUN = ["--gin_file=runs/smoke.gin", "--gin.checkpoints.CheckpointConfig.async_save=True"]
STEP_LINE = re.compile(r"\] step (\d+) train:")
SAVE_LINE = re.compile(r"Checkpoint step (\d+) being written")
RESTORE_LINE = re.compile(r"Restoring the newest good checkpoint in |No checkpoint in \S+ and no restore_path")
RESUME_LINE = re.compile(r"training steps (\d+) -> ")
COMPILED_LINE = re.compile(r"compiled the train step")
SIGTERM_SAVE_LINE = re.compile(r"SIGTERM received: saving step (\d+)")
ITERATOR_WARNING = re.compile(r"the input iterator state (\S+) does not read back")
TAKEOVER = "Taking over the lock"
SAVE_ERROR = "littlehelp: error: cannot save checkpoint step"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
POLL_SECONDS = 0.005  # how often the drill looks at the disk while it waits for a save or a staging folder

PHASES = ("start-up", "compile", "mid-step", "mid-save", "between saves")
SAVE_PHASES = ("mid-save", "between saves")  # the kills that wait for a save
# The round-robin order of the kills: the first leaves a finished step, and a kill that moves the run
# on (between saves, mid-save) comes between every two that do not.
KILL_ORDER = ("between saves", "start-up", "mid-save", "compile", "mid-step")
SPECIAL_FAULTS = ("corrupt_then_sigterm", "truncated_iterator", "failed_save")
FAULTS = {
    "kill": "SIGKILL in one of the five phases (table below); the next attempt takes over the lock and resumes",
    "corrupt": "newest step's state corrupted; moved to corrupt/, resumed from the step before, saved again",
    "sigterm": "SIGTERM once a save has begun: that save finishes, exit status 75, the next attempt resumes there",
    "truncated_iterator": "newest step's input-iterator state truncated: resumed there with one warning, "
    "batches replayed",
    "failed_save": "checkpoints/ read-only: exit 1 with one stderr line, the steps on disk untouched",
    "sweep_failure": "sweep point with an infinite learning rate: recorded as failed, the others finish; a rerun "
    "retries it alone and leaves the finished points untouched",
    "interrupted_convert": "`littlehelp convert` SIGKILLed mid-write: the destination holds nothing or a complete "
    "folder; converting again succeeds",
}
SWEEP_AXIS = "optimizers.inverse_sqrt_schedule.peak_learning_rate=[1e999, 0.01]"
SWEEP_STEPS = 2


def train_command(model_dir: Path, steps: int, save_interval: int, max_to_keep: int) -> list[str]:
    """The `littlehelp train` command line of one run folder (every attempt runs exactly this)."""
    return [
        sys.executable,
        "-m",
        "littlehelp.main",
        "train",
        *TINY_RUN,
        f"--gin.checkpoints.CheckpointConfig.save_interval_steps={save_interval}",
        f"--gin.checkpoints.CheckpointConfig.max_to_keep={max_to_keep}",
        f"--gin.MODEL_DIR={model_dir}",
        f"--gin.TRAIN_STEPS={steps}",
    ]


class Attempt:
    """One training subprocess; its stdout and stderr lines are collected and readable as they come."""

    def __init__(self, command: Sequence[str], log_path: Path):
        self.log_path = log_path
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: list[tuple[str, str]] = []  # (stream, line), in arrival order
        self._queue: queue.Queue[str | None] = queue.Queue()  # None: one stream has ended
        self._open = 2
        self._readers = [
            threading.Thread(target=self._read, args=(stream, name), daemon=True)
            for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr"))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], name: str) -> None:
        """Reader thread: collects one stream's lines; None in the queue when it ends."""
        for line in stream:
            self.lines.append((name, line.rstrip("\n")))
            self._queue.put(line)
        self._queue.put(None)

    def next_line(self, until: float) -> str | None:
        """The next output line, or None when `until` (monotonic) passes or both streams have closed."""
        while self._open:
            try:
                line = self._queue.get(timeout=max(until - time.monotonic(), 0))
            except queue.Empty:
                return None
            if line is not None:
                return line
            self._open -= 1
        return None

    @property
    def closed(self) -> bool:
        """Whether both output streams have ended (the process has exited)."""
        return self._open == 0

    def first_match(self, pattern: re.Pattern, timeout: float) -> re.Match | None:
        """Reads lines until one matches `pattern`; None if the output ends or `timeout` s pass first."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            line = self.next_line(deadline)
            if line is not None and (match := pattern.search(line)):
                return match
        return None

    def send(self, sig: signal.Signals) -> None:
        """Sends `sig` to the process."""
        self.process.send_signal(sig)

    def finish(self, timeout: float) -> tuple[int | None, float]:
        """Waits for the exit (SIGKILL after `timeout` s); returns (exit status or None if killed, seconds)."""
        try:
            code: int | None = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        for reader in self._readers:
            reader.join()
        self.log_path.write_text("".join(f"[{name}] {line}\n" for name, line in self.lines), encoding="utf-8")
        return code, time.monotonic() - self.started

    @property
    def text(self) -> str:
        """Everything the attempt printed, both streams."""
        return "\n".join(line for _, line in self.lines)

    def stderr(self) -> list[str]:
        """The lines it printed on stderr."""
        return [line for name, line in self.lines if name == "stderr"]


@dataclasses.dataclass(frozen=True)
class KillPlan:
    """One planned SIGKILL: the phase it aims at and, for mid-save and between saves, the step from which
    a save may be hit (the first save at or after it is)."""

    phase: str
    save: int = 0

    def describe(self) -> str:
        """The plan in words."""
        return f"{self.phase} (save >= {self.save})" if self.phase in SAVE_PHASES else self.phase


def plan_faults(kills: int, steps: int, save_interval: int, rng: random.Random) -> list[KillPlan | str]:
    """`kills` SIGKILLs round-robin over `KILL_ORDER`, the steps of their saves spread evenly from
    2 * save_interval to the last save before `steps - 2 * save_interval`, with the `SPECIAL_FAULTS`
    inserted at random places in the second half (after the first kill, which leaves a finished step)."""
    first, last = 2 * save_interval, (steps - 2 * save_interval) // save_interval * save_interval
    plan: list[KillPlan | str] = []
    for i in range(kills):
        phase = KILL_ORDER[i % len(KILL_ORDER)]
        plan.append(KillPlan(phase, first + (last - first) * i // max(kills - 1, 1) if phase in SAVE_PHASES else 0))
    for special in SPECIAL_FAULTS:
        plan.insert(rng.randint(max(kills // 2, 1), len(plan)), special)
    return plan


def phase_hit(text: str, committed: Sequence[int]) -> str:
    """The phase a killed attempt was in, from what it had logged (`text`) and the steps on disk after
    its death (`committed`).

    start-up: no "training steps" line yet; compile: no "compiled the train step" line; mid-save: the
    last save it began is not on disk; between saves: that save had finished; mid-step: none had begun.
    """
    if not RESUME_LINE.search(text):
        return "start-up"
    if not COMPILED_LINE.search(text):
        return "compile"
    last_save = last_save_begun(text)
    if last_save is None:
        return "mid-step"
    return "between saves" if last_save in committed else "mid-save"


def last_save_begun(text: str) -> int | None:
    """The step of the last "Checkpoint step N being written" line of `text` (a save waits for the one
    before it, so only this one can be unfinished)."""
    saves = SAVE_LINE.findall(text)
    return int(saves[-1]) if saves else None


def committed_steps(directory: Path) -> list[int]:
    """The finished step folders of a checkpoints folder (orbax renames a step into place when done)."""
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def tmp_folders(directory: Path, since: float) -> list[str]:
    """Unfinished saves (orbax's `<step>.orbax-checkpoint-tmp` folders) changed after `since` (epoch s).

    Orbax replaces a leftover folder of the same step when it saves that step again, so a new one
    can carry an old name.
    """
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if TMP_SUFFIX in p.name and p.stat().st_mtime >= since)


def snapshot(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory`, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def truncate_largest(folder: Path, root: Path) -> str:
    """Truncates the largest file under `folder` to half its size; says which (relative to `root`)."""
    largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    size = largest.stat().st_size
    os.truncate(largest, size // 2)
    return f"truncated {largest.relative_to(root)} from {size} to {size // 2} bytes"


def corrupt_step(step_dir: Path, rng: random.Random) -> str:
    """Deletes `state/_METADATA` or truncates the largest file under `state/` to half; says which."""
    state = step_dir / checkpoints.STATE_ITEM
    if rng.random() < 0.5:
        (state / "_METADATA").unlink()
        return f"deleted {step_dir.name}/state/_METADATA"
    return truncate_largest(state, step_dir.parent)


class MountRefused(RuntimeError):
    """This machine does not let the drill mount a folder read-only (not root, no CAP_SYS_ADMIN)."""


@contextlib.contextmanager
def read_only_mount(directory: Path) -> Iterator[None]:
    """Bind-mounts `directory` read-only onto itself for the block (needs root); raises MountRefused."""

    def mount(*args: str) -> None:
        """Runs `mount ARGS DIRECTORY`."""
        done = subprocess.run(["mount", *args, str(directory)], capture_output=True, text=True)
        if done.returncode:
            raise MountRefused(f"mount {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")

    mount("--bind", str(directory))
    try:
        mount("-o", "remount,bind,ro")
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@dataclasses.dataclass
class Outcome:
    """One injected fault: what was done, and what went wrong (nothing: survived)."""

    kind: str  # a key of FAULTS
    detail: str
    problems: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None
    planned_phase: str | None = None  # kills: the phase aimed at
    phase: str | None = None  # kills: the phase hit (None: not killed)

    @property
    def survived(self) -> bool:
        """Injected, and nothing went wrong."""
        return self.skipped is None and not self.problems

    def line(self) -> str:
        """One line for the progress output and the report."""
        if self.skipped:
            return f"{self.kind}: SKIPPED ({self.skipped})"
        verdict = "survived" if self.survived else "FAILED: " + "; ".join(self.problems)
        return f"{self.kind}: {self.detail} -> {verdict}"


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What the next attempt must show at its start: a stale-lock takeover, and the step it resumes from."""

    stale_lock: bool
    resume_step: int


class Drill:
    """Runs the faults one attempt at a time on one run folder and records their outcomes."""

    def __init__(self, args: argparse.Namespace, work_dir: Path):
        self.args = args
        self.work_dir = work_dir
        self.model_dir = work_dir / "drill"
        self.checkpoints = self.model_dir / "checkpoints"
        self.logs = work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.command = train_command(self.model_dir, args.steps, args.save_interval, args.max_to_keep)
        self.ceiling = args.steps - 2 * args.save_interval
        self.rng = random.Random(args.seed)
        self.outcomes: list[Outcome] = []
        self.attempts: list[dict] = []
        self.corrupted: list[dict] = []  # step, where it was moved, its files after corruption
        self._aftermath: Outcome | None = None  # the fault whose stale lock the next attempt shows
        self._unresumed: list[Outcome] = []  # faults waiting for an attempt that gets to "training steps"

    def _launch(self, label: str) -> tuple[Attempt, Expectation]:
        """Starts the next attempt, with what it must show at its start given the folder as it is now."""
        steps = committed_steps(self.checkpoints)
        expect = Expectation((self.model_dir / checkpoints.LOCK_NAME).exists(), steps[-1] if steps else 0)
        log = self.logs / f"{len(self.attempts):02d}-{label}.log"
        return Attempt(self.command, log), expect

    def _record(self, label: str, attempt: Attempt, code: int | None, seconds: float) -> None:
        """Adds one finished attempt to the report's list."""
        resumed = RESUME_LINE.search(attempt.text)
        self.attempts.append(
            {
                "attempt": label,
                "exit_status": code,
                "seconds": round(seconds, 1),
                "resumed_from": int(resumed.group(1)) if resumed else None,
                "took_over_lock": TAKEOVER in attempt.text,
                "log": str(attempt.log_path),
            }
        )

    @staticmethod
    def _lock_problems(attempt: Attempt, expect: Expectation) -> list[str]:
        """`attempt` took over the lock if and only if a stale one was left."""
        taken = TAKEOVER in attempt.text
        return [] if taken == expect.stale_lock else [f"stale lock left: {expect.stale_lock}, taken over: {taken}"]

    @staticmethod
    def _resume_problems(attempt: Attempt, step: int) -> list[str]:
        """`attempt` resumed from `step` (its "training steps N -> M" line)."""
        resumed = RESUME_LINE.search(attempt.text)
        if resumed and int(resumed.group(1)) == step:
            return []
        got = resumed.group(1) if resumed else "nothing (no training steps line)"
        return [f"{attempt.log_path.stem} resumed from {got}, expected step {step}"]

    def _settle(self, attempt: Attempt, expect: Expectation) -> None:
        """Completes the outcomes of earlier faults with what `attempt` showed at its start, and prints them.

        The previous fault's: `attempt` took over the stale lock it left (if any). Then, unless `attempt`
        died before "training steps" (a start-up kill: a later attempt shows that), the previous fault and
        any still waiting: `attempt` resumed from `expect.resume_step`.
        """
        outcome, self._aftermath = self._aftermath, None
        if outcome is not None:
            outcome.problems += self._lock_problems(attempt, expect)
            outcome.detail += "; next attempt took over the stale lock" if TAKEOVER in attempt.text else ""
            self._unresumed.append(outcome)
        resumed = RESUME_LINE.search(attempt.text)
        if resumed is None:
            return
        for waiting in self._unresumed:
            waiting.problems += self._resume_problems(attempt, expect.resume_step)
            waiting.detail += f"; {attempt.log_path.stem} resumed from step {resumed.group(1)}"
            self._report(waiting)
        self._unresumed = []

    def _report(self, outcome: Outcome) -> None:
        """Records a settled fault and prints its line."""
        self.outcomes.append(outcome)
        print(f"[fault {len(self.outcomes)}] {outcome.line()}", flush=True)

    def kill(self, plan: KillPlan) -> None:
        """One SIGKILL at the moment `plan` aims at; survived if the next attempt takes over the lock and resumes."""
        launched = time.time()
        attempt, expect = self._launch("kill")
        fired = self._fire_point(attempt, plan, expect.resume_step)
        if fired is not None:
            attempt.send(signal.SIGKILL)
        code, seconds = attempt.finish(self.args.run_timeout)
        self._settle(attempt, expect)
        self._record("kill", attempt, code, seconds)
        hit = phase_hit(attempt.text, committed_steps(self.checkpoints))
        left = tmp_folders(self.checkpoints, launched)
        outcome = Outcome(
            "kill",
            f"[{hit}] SIGKILL {fired} (aimed at {plan.describe()}, attempt from step "
            f"{expect.resume_step}); " + (f"unfinished save left: {', '.join(left)}" if left else "no save in flight"),
            planned_phase=plan.phase,
        )
        if fired is None or code != -signal.SIGKILL:
            outcome.problems.append(f"not killed: the attempt ended by itself with exit status {code}")
        else:
            outcome.phase = hit
        if not (self.model_dir / checkpoints.LOCK_NAME).exists():
            outcome.problems.append("the killed attempt left no run.lock")
        self._aftermath = outcome

    def _fire_point(self, attempt: Attempt, plan: KillPlan, resume: int) -> str | None:
        """Reads `attempt`'s output until the moment `plan` aims at (or a step past the ceiling); returns
        that moment in words, or None when the process ended (or `--run_timeout` passed) first.

        `resume` is the step the attempt resumes from: a mid-step kill comes right after the step halfway
        to its first save.
        """
        interval = self.args.save_interval
        mid_step = resume + max(((resume // interval + 1) * interval - resume) // 2, 1)
        deadline = time.monotonic() + self.args.run_timeout
        awaited: int | None = None  # between saves: the save whose folder is awaited
        while not attempt.closed:
            line = attempt.next_line(deadline if awaited is None else min(deadline, time.monotonic() + POLL_SECONDS))
            if awaited is not None and (self.checkpoints / str(awaited)).is_dir():
                return f"as soon as save {awaited} was on disk"
            if line is None:
                if time.monotonic() >= deadline:
                    return None
            elif step := STEP_LINE.search(line):
                if int(step.group(1)) > self.ceiling:
                    return f"at step {step.group(1)}, past the ceiling {self.ceiling}"
                if plan.phase == "mid-step" and int(step.group(1)) >= mid_step:
                    return f"right after step {step.group(1)}"
            elif (save := SAVE_LINE.search(line)) and int(save.group(1)) >= plan.save:
                if plan.phase == "mid-save":
                    return f"right after 'Checkpoint step {save.group(1)} being written'"
                if plan.phase == "between saves" and awaited is None:
                    awaited = int(save.group(1))
            elif plan.phase == "start-up" and RESTORE_LINE.search(line):
                return "as it began its restore" if "Restoring" in line else "as it began from scratch"
            elif plan.phase == "compile" and (resumed := RESUME_LINE.search(line)):
                return f"right after 'training steps {resumed.group(1)} -> ...'"
        return None

    def corrupt_then_sigterm(self) -> None:
        """Corrupts the newest step, then SIGTERMs the attempt that recovers from it once it re-saves it."""
        steps = committed_steps(self.checkpoints)
        if not steps:
            self._report(Outcome("corrupt", "no finished step to corrupt", ["no finished step on disk"]))
            return self.sigterm(None)
        step = steps[-1]
        how = corrupt_step(self.checkpoints / str(step), self.rng)
        self.corrupted.append({"step": step, "how": how, "files": snapshot(self.checkpoints / str(step))})
        self.sigterm(step)

    def sigterm(self, corrupted: int | None) -> None:
        """One SIGTERM once the attempt's first save has begun; it must save and exit with EXIT_PREEMPTED.

        With `corrupted` (a step just corrupted) the attempt is also checked for moving that step
        aside, resuming from the one before and saving it again.
        """
        attempt, expect = self._launch("sigterm")
        first = attempt.first_match(SAVE_LINE, self.args.run_timeout)
        first_save = int(first.group(1)) if first else None
        signalled = time.monotonic()
        if first is not None:
            attempt.send(signal.SIGTERM)
        code, seconds = attempt.finish(self.args.run_timeout)
        stopped_after = time.monotonic() - signalled
        if corrupted is not None:
            older = [s for s in committed_steps(self.checkpoints) if s < corrupted]
            expect = dataclasses.replace(expect, resume_step=older[-1] if older else 0)
        self._settle(attempt, expect)
        if corrupted is not None:
            self._check_corruption(attempt, corrupted, expect.resume_step, first_save)
        self._record("sigterm", attempt, code, seconds)
        saved = SIGTERM_SAVE_LINE.search(attempt.text)
        outcome = Outcome(
            "sigterm",
            f"SIGTERM after the save of step {first_save} began; exit status {code} "
            f"{stopped_after:.1f} s later" + (f", saved step {saved.group(1)}" if saved else ""),
        )
        if first is None:
            outcome.detail = f"no SIGTERM sent: the attempt ended (exit status {code}) before its first save"
            outcome.problems.append("the attempt ended before its first save")
        if code != errors.EXIT_PREEMPTED:
            outcome.problems.append(f"exit status {code}, expected {errors.EXIT_PREEMPTED}")
        if saved is None or int(saved.group(1)) not in committed_steps(self.checkpoints):
            outcome.problems.append("no 'SIGTERM received: saving step N' line with step N finished on disk")
        self._aftermath = outcome

    def _check_corruption(self, attempt: Attempt, step: int, older: int, first_save: int | None) -> None:
        """The corrupted `step` was moved to corrupt/<step>-<time>/, the `older` step restored instead,
        and `step` recomputed and saved again (its first save)."""
        record = self.corrupted[-1]
        moved = re.search(
            rf"Moved checkpoint {re.escape(str(self.checkpoints))}/{step}, which cannot be restored, "
            rf"to (\S+/{checkpoints.CORRUPT_FOLDER}/{step}-[\w.-]+);",
            attempt.text,
        )
        outcome = Outcome("corrupt", f"{record['how']}")
        if moved is None:
            outcome.problems.append("no 'Moved checkpoint ... to .../corrupt/...' log line")
        else:
            record["moved_to"] = moved.group(1).rstrip(".;")
            outcome.detail += f"; moved to {record['moved_to']}"
        outcome.problems += self._resume_problems(attempt, older)
        if first_save != step or step not in committed_steps(self.checkpoints):
            outcome.problems.append(f"step {step} was not saved again (first save: step {first_save})")
        else:
            outcome.detail += f"; step {step} recomputed and saved again"
        self._report(outcome)

    def failed_save(self) -> None:
        """One attempt with checkpoints/ read-only: it must fail fast, in one line, touching nothing."""
        before = snapshot(self.checkpoints)
        try:
            with read_only_mount(self.checkpoints):
                attempt, expect = self._launch("failed_save")
                code, seconds = attempt.finish(self.args.run_timeout)
        except MountRefused as error:
            self._report(Outcome("failed_save", "", skipped=str(error)))
            return
        self._settle(attempt, expect)
        self._record("failed_save", attempt, code, seconds)
        errors_lines = [line for line in attempt.stderr() if line.startswith(SAVE_ERROR)]
        outcome = Outcome(
            "failed_save",
            f"checkpoints/ read-only: exit status {code} after {seconds:.1f} s"
            + (f": {errors_lines[0]}" if errors_lines else ""),
        )
        if code in (0, None) or seconds > self.args.failed_save_limit:
            outcome.problems.append(f"expected a non-zero exit within {self.args.failed_save_limit} s")
        if len(errors_lines) != 1 or str(self.checkpoints) not in errors_lines[0]:
            outcome.problems.append(
                f"expected one stderr line '{SAVE_ERROR} ...' naming {self.checkpoints}, got {len(errors_lines)}"
            )
        if snapshot(self.checkpoints) != before:
            outcome.problems.append("the files on disk changed")
        self._aftermath = outcome

    def truncated_iterator(self) -> None:
        """Truncates the newest step's input-iterator state; the next attempt must resume from that step
        with one warning (it replays the batches) and is SIGKILLed once its first save is on disk."""
        steps = committed_steps(self.checkpoints)
        item = self.checkpoints / str(steps[-1]) / checkpoints.ITERATOR_ITEM if steps else None
        if item is None or not item.is_dir():
            self._report(Outcome("truncated_iterator", "", ["no finished step with an input-iterator state"]))
            return
        step = steps[-1]
        how = truncate_largest(item, self.checkpoints)
        attempt, expect = self._launch("iterator")
        fired = self._fire_point(attempt, KillPlan("between saves", step + 1), step)
        if fired is not None:
            attempt.send(signal.SIGKILL)
        code, seconds = attempt.finish(self.args.run_timeout)
        self._settle(attempt, expect)
        self._record("iterator", attempt, code, seconds)
        warnings = ITERATOR_WARNING.findall(attempt.text)
        outcome = Outcome("truncated_iterator", f"{how}; {len(warnings)} warning(s) that it does not read back")
        if len(warnings) != 1 or f"/{step}/{checkpoints.ITERATOR_ITEM}/" not in warnings[0]:
            outcome.problems.append(f"expected one warning about {step}/{checkpoints.ITERATOR_ITEM}, got {warnings}")
        outcome.problems += self._resume_problems(attempt, step)
        if "which cannot be restored" in attempt.text:
            outcome.problems.append(f"step {step} was moved aside")
        if fired is None:
            outcome.problems.append(f"the attempt ended (exit status {code}) before its first save was on disk")
        else:
            outcome.detail += f"; resumed from it, SIGKILLed {fired}"
        self._aftermath = outcome

    def finish(self) -> list[str]:
        """Runs to the last step; returns the problems of that attempt (beyond the previous fault's)."""
        attempt, expect = self._launch("final")
        code, seconds = attempt.finish(self.args.run_timeout)
        self._settle(attempt, expect)
        self._record("final", attempt, code, seconds)
        for waiting in self._unresumed:  # the final attempt died before "training steps"
            waiting.problems.append("no later attempt got to 'training steps'")
            self._report(waiting)
        return [] if code == 0 else [f"the final attempt exited with status {code} (log {attempt.log_path})"]

    def run(self, plan: Sequence[KillPlan | str]) -> list[str]:
        """Injects the faults of `plan` in order, then runs to the end; returns the final attempt's problems."""
        specials = {
            "corrupt_then_sigterm": self.corrupt_then_sigterm,
            "truncated_iterator": self.truncated_iterator,
            "failed_save": self.failed_save,
        }
        for fault in plan:
            if isinstance(fault, KillPlan):
                self.kill(fault)
            else:
                specials[fault]()
        return self.finish()

    def _finished(self, command: Sequence[str], label: str) -> Attempt:
        """Runs `command` (not a training attempt) to its end; its log goes with the attempts' logs."""
        attempt = Attempt(command, self.logs / f"{label}.log")
        attempt.finish(self.args.run_timeout)
        return attempt

    def sweep_failure(self) -> None:
        """A sweep whose first point diverges, run twice: see `sweep_problems`; the rerun must retry that
        point alone, fail the same way, and leave the finished points' files as they were."""
        folder = self.work_dir / "sweep"
        command = [
            sys.executable,
            "-m",
            "littlehelp.main",
            "sweep",
            "--gin_file=runs/smoke.gin",
            f"--sweep={SWEEP_AXIS}",
            f"--gin.MODEL_DIR={folder}",
            f"--gin.TRAIN_STEPS={SWEEP_STEPS}",
        ]
        first = self._finished(command, "sweep")
        points, problems = sweep_problems(folder, first)
        failed = {p["folder"]: p["error"] for p in points if p["status"] == "failed"}
        finished = [p["folder"] for p in points if p["status"] == "finished"]
        before = {name: snapshot(folder / name) for name in finished}
        again = self._finished(command, "sweep-again")
        points_again, problems_again = sweep_problems(folder, again)
        outcome = Outcome(
            "sweep_failure",
            f"`littlehelp sweep --sweep='{SWEEP_AXIS}'`, {SWEEP_STEPS} steps a point: "
            f"exit status {first.process.returncode}; failed: "
            + "; ".join(f"{name} ({error})" for name, error in failed.items())
            + f"; finished: {', '.join(finished)}; rerun: exit status {again.process.returncode}",
            [f"first run: {p}" for p in problems] + [f"rerun: {p}" for p in problems_again],
        )
        if {p["folder"]: p["error"] for p in points_again if p["status"] == "failed"} != failed:
            outcome.problems.append("the rerun's failed points or reasons differ from the first run's")
        for name in finished:
            if f"{name}: step {SWEEP_STEPS} is there, reused" not in again.text:
                outcome.problems.append(f"the rerun did not reuse {name}")
            if snapshot(folder / name) != before[name]:
                outcome.problems.append(f"the rerun changed files of {name}")
        if not outcome.problems:
            outcome.detail += ", retried the failed point alone (same reason), the finished points' files unchanged"
        self._report(outcome)

    def interrupted_convert(self) -> None:
        """`littlehelp convert` of a tiny HF folder, SIGKILLed once its staging folder holds a file: the
        destination must hold nothing or a complete folder, and converting again must succeed."""
        root = self.work_dir / "convert"
        source, reference, destination = root / "hf", root / "reference", root / "converted"
        run_folder.write_run_folder(convert.load(write_convert_source(source)), reference)
        command = [sys.executable, "-m", "littlehelp.main", "convert", f"--from={source}", f"--to={destination}"]
        attempt = Attempt(command, self.logs / "convert-killed.log")
        staging = wait_for_staging(attempt, destination, self.args.run_timeout)
        if staging is not None:
            attempt.send(signal.SIGKILL)
        code, _ = attempt.finish(self.args.run_timeout)
        outcome = Outcome(
            "interrupted_convert",
            f"SIGKILL once {staging.name if staging else 'a staging folder'} held a file (exit status {code})",
        )
        if staging is None or code != -signal.SIGKILL:
            outcome.problems.append(f"not killed mid-write: the convert ended by itself with exit status {code}")
        if not destination.exists() or not any(destination.iterdir()):
            outcome.detail += f"; {destination.name}/ absent"
            again = self._finished(command, "convert-again")
            outcome.detail += f"; converting again: exit status {again.process.returncode}"
            if again.process.returncode != 0:
                outcome.problems.append(f"the second convert exited with status {again.process.returncode}")
            outcome.problems += converted_problems(destination, reference)
        else:
            problems = converted_problems(destination, reference)
            outcome.detail += f"; {destination.name}/ " + ("complete" if not problems else "PARTIAL")
            outcome.problems += problems
        if not outcome.problems:
            outcome.detail += ", a complete folder equal to the reference conversion"
        left = sorted(p.name for p in root.glob(f".{destination.name}-*"))
        outcome.detail += f"; staging folders left beside it: {', '.join(left) or 'none'}"
        self._report(outcome)


def sweep_problems(folder: Path, run: Attempt) -> tuple[list[dict], list[str]]:
    """(the points of folder/sweep.json, what is wrong): the sweep must exit 1 with one error line, the
    1e999 point failed with a one-line reason that sweep.md shows, and every other point finished."""
    problems = [] if run.process.returncode == 1 else [f"exit status {run.process.returncode}, expected 1"]
    error_lines = [line for line in run.stderr() if line.startswith("littlehelp: error: ")]
    if len(error_lines) != 1 or "sweep points failed" not in error_lines[0]:
        problems.append(f"expected one stderr line 'littlehelp: error: ... sweep points failed ...', got {error_lines}")
    try:
        points = json.loads((folder / "sweep.json").read_text())["points"]
        table = (folder / "sweep.md").read_text()
    except (OSError, ValueError, KeyError) as error:
        return [], problems + [f"no readable sweep.json and sweep.md ({error})"]
    for point in points:
        diverges = "1e999" in point["folder"]
        if point["status"] != ("failed" if diverges else "finished"):
            problems.append(f"{point['folder']}: status {point['status']}")
        elif diverges and (
            not point["error"] or "\n" in point["error"] or f"failed: {point['error']}".replace("|", "\\|") not in table
        ):
            problems.append(f"{point['folder']}: reason {point['error']!r} is not one line shown in sweep.md")
    return points, problems


def write_convert_source(folder: Path) -> Path:
    """A random tiny decoder (`DecoderConfig()`'s sizes) written as an HF folder, for `convert --from`."""
    config = DecoderConfig()
    model = build_model(config)
    example = {DECODER_INPUT_TOKENS: np.zeros((1, 8), np.int32)}
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), example))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    return convert.export(Pretrained("llama", config, model, params, None, "the fault drill"), folder)


def wait_for_staging(attempt: Attempt, destination: Path, timeout: float) -> Path | None:
    """Polls until `convert`'s staging folder for `destination` (`.NAME-*` beside it) holds a file;
    returns it, or None when the process ends (or `timeout` s pass) first."""
    deadline = time.monotonic() + timeout
    while attempt.process.poll() is None and time.monotonic() < deadline:
        for staging in destination.parent.glob(f".{destination.name}-*"):
            with contextlib.suppress(OSError):  # orbax renames folders inside it meanwhile
                if any(p.is_file() for p in staging.rglob("*")):
                    return staging
        time.sleep(POLL_SECONDS)
    return None


def converted_problems(folder: Path, reference: Path) -> list[str]:
    """What keeps `folder` from being the converted model `reference` is: its file names, model.gin,
    and every array of checkpoints/0 (bitwise)."""
    names, expected = (sorted(p.name for p in f.iterdir()) if f.is_dir() else [] for f in (folder, reference))
    if names != expected:
        return [f"{folder} holds {names}, expected {expected}"]
    gin_files = [(f / run_folder.MODEL_GIN).read_text() for f in (folder, reference)]
    problems = [] if gin_files[0] == gin_files[1] else [f"{run_folder.MODEL_GIN} differs from the reference's"]
    steps = checkpoints.finished_steps(folder / "checkpoints")
    if steps != [0]:
        return problems + [f"{folder}/checkpoints holds the finished steps {steps}, expected [0]"]
    return problems + compare_arrays(reference / "checkpoints" / "0", folder / "checkpoints" / "0")[1]


def arrays_by_path(step_dir: Path) -> dict[str, np.ndarray]:
    """Every array of a step folder (`checkpoints.read_arrays`), keyed by its tree path."""
    flat = jax.tree_util.tree_flatten_with_path(checkpoints.read_arrays(step_dir))[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def compare_arrays(left_dir: Path, right_dir: Path) -> tuple[int, list[str]]:
    """(arrays compared, mismatches) between two step folders: same tree paths, dtypes, shapes and bytes."""
    left, right = arrays_by_path(left_dir), arrays_by_path(right_dir)
    mismatches = [
        f"{name}: only in {left_dir if name in left else right_dir}" for name in sorted(left.keys() ^ right.keys())
    ]
    for name in sorted(left.keys() & right.keys()):
        a, b = left[name], right[name]
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            mismatches.append(f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}, bytes differ")
    return len(left.keys() | right.keys()), mismatches


def metrics_problems(path: Path, steps: int) -> list[str]:
    """Train steps of metrics.jsonl that are missing, repeated or beyond `steps` (each must appear once)."""
    seen = [r["step"] for r in read_jsonl(path) if any(k.startswith("train/") for k in r)]
    counts = {step: seen.count(step) for step in set(seen) | set(range(1, steps + 1))}
    return [
        f"train step {step} appears {n} times in metrics.jsonl"
        for step, n in sorted(counts.items())
        if n != (1 if 1 <= step <= steps else 0)
    ]


def deleted_problems(corrupted: Sequence[dict]) -> list[str]:
    """Every corrupted step must still be under corrupt/ with the very files it had when corrupted."""
    problems = []
    for record in corrupted:
        where = Path(record.get("moved_to", ""))
        if not record.get("moved_to") or not where.is_dir():
            problems.append(f"corrupted step {record['step']} is not under corrupt/")
        elif snapshot(where) != record["files"]:
            problems.append(f"corrupted step {record['step']} changed in {where}")
    return problems


def finite_check_cost(step_dir: Path, metrics_path: Path, save_interval: int, repeats: int) -> dict:
    """Median seconds of `trainer.nonfinite_arrays` on the final state (its arrays on the device, as
    restored) against the median step time of metrics.jsonl (1 / train/steps_per_second)."""
    state = jax.device_put(checkpoints.read_arrays(step_dir))
    bad = trainer.nonfinite_arrays(state)  # compiles
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.nonfinite_arrays(state)
        seconds.append(time.perf_counter() - start)
    step_seconds = statistics.median(
        1 / r["train/steps_per_second"] for r in read_jsonl(metrics_path) if "train/steps_per_second" in r
    )
    check = statistics.median(seconds)
    return {
        "check_seconds": check,
        "median_step_seconds": step_seconds,
        "check_over_step": check / step_seconds,
        "check_over_step_per_save_interval": check / (step_seconds * save_interval),
        "arrays": len(jax.tree.leaves(state)),
        "nonfinite_arrays": len(bad),
        "repeats": repeats,
    }


def code_version() -> str:
    """The commit the trainer ran from, and whether littlehelp/ (its gin files included) had uncommitted changes."""

    def git(*args: str) -> str:
        """Runs `git ARGS` in the repository; its output, empty on failure."""
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" with uncommitted changes in littlehelp/" if git("status", "--porcelain", "littlehelp") else "")


def load_average() -> str:
    """`uptime`'s output: who else is using the machine."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The drill's flags (`argv` None: the command line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help=f"SIGKILLs to inject (at least {len(PHASES)})")
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault plan and the corruption")
    parser.add_argument("--steps", type=int, default=60, help="TRAIN_STEPS of the run")
    parser.add_argument("--save_interval", type=int, default=5, help="save_interval_steps")
    parser.add_argument("--max_to_keep", type=int, default=3)
    parser.add_argument(
        "--failed_save_limit",
        type=float,
        default=60.0,
        help="seconds (start-up included) within which a failed save must exit",
    )
    parser.add_argument("--run_timeout", type=float, default=600.0, help="seconds before an attempt is given up")
    parser.add_argument("--finite_repeats", type=int, default=20, help="timings of the finite-state check")
    parser.add_argument(
        "--work_dir",
        type=Path,
        default=None,
        help="where the run folders and logs go (default: a new folder in the temp dir)",
    )
    parser.add_argument(
        "--out_dir", type=Path, default=REPO / "results", help="where fault_drill.json and fault_drill.md go"
    )
    args = parser.parse_args(argv)
    if args.kills < len(PHASES) or args.save_interval < 1 or args.steps < 4 * args.save_interval:
        parser.error(
            f"need --kills >= {len(PHASES)} (one per phase), --save_interval >= 1 and --steps >= 4 * --save_interval"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the drill and writes the results; returns the exit status (1: target missed)."""
    args = parse_args(argv)
    started, load_start = time.monotonic(), load_average()
    work_dir = (args.work_dir or Path(tempfile.mkdtemp(prefix="fault_drill-"))).resolve()
    if any((work_dir / name).exists() for name in ("drill", "straight", "sweep", "convert")):
        raise SystemExit(f"fault_drill: {work_dir} already holds a drill; pass an empty --work_dir")
    print(f"fault drill in {work_dir} ({load_start})", flush=True)
    drill = Drill(args, work_dir)
    straight_dir = work_dir / "straight"
    straight = Attempt(
        train_command(straight_dir, args.steps, args.save_interval, args.max_to_keep), drill.logs / "straight.log"
    )
    code, seconds = straight.finish(args.run_timeout)
    if code != 0:
        raise SystemExit(f"fault_drill: the uninterrupted run failed with status {code}; see {straight.log_path}")
    print(f"uninterrupted run: {args.steps} steps in {seconds:.0f} s", flush=True)
    plan = plan_faults(args.kills, args.steps, args.save_interval, drill.rng)
    print("plan: " + ", ".join(f.describe() if isinstance(f, KillPlan) else f for f in plan), flush=True)
    final_problems = drill.run(plan)
    final_dir = drill.checkpoints / str(args.steps)
    if final_dir.is_dir():
        compared, mismatches = compare_arrays(final_dir, straight_dir / "checkpoints" / str(args.steps))
        finite = finite_check_cost(
            final_dir, drill.model_dir / "metrics.jsonl", args.save_interval, args.finite_repeats
        )
    else:
        compared, mismatches, finite = 0, [f"the drill's final step {args.steps} is not on disk"], None
    drill.sweep_failure()
    drill.interrupted_convert()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python scripts/fault_drill.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "config": {k: v for k, v in vars(args).items() if k not in ("work_dir", "out_dir")},
        "code": code_version(),
        "train_command": shlex.join(drill.command),
        "work_dir": str(work_dir),
        "plan": [f.describe() if isinstance(f, KillPlan) else f for f in plan],
        "faults": [dataclasses.asdict(o) | {"survived": o.survived, "line": o.line()} for o in drill.outcomes],
        "attempts": drill.attempts,
        "lock_takeovers": sum(a["took_over_lock"] for a in drill.attempts),
        "arrays_compared": compared,
        "mismatches": mismatches,
        "metrics_problems": metrics_problems(drill.model_dir / "metrics.jsonl", args.steps),
        "deleted_problems": deleted_problems(drill.corrupted),
        "final_problems": final_problems,
        "corrupted": [
            {k: v for k, v in c.items() if k != "files"} | {"files": len(c["files"])} for c in drill.corrupted
        ],
        "finite_check": finite,
        "uptime_start": load_start,
        "uptime_end": load_average(),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    report["kill_phases"] = phase_counts(report["faults"])
    report["target_met"] = target_met(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "fault_drill.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out_dir / "fault_drill.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["target_met"] else 1


def target_met(report: dict) -> bool:
    """Every injected fault survived, kills hit every phase, 0 mismatches, nothing deleted, each step once,
    a clean final run."""
    return (
        all(f["survived"] for f in report["faults"] if not f["skipped"])
        and all(c["hit"] for c in report["kill_phases"].values())
        and not report["mismatches"]
        and not report["deleted_problems"]
        and not report["metrics_problems"]
        and not report["final_problems"]
    )


def phase_counts(faults: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Kills aimed at, hitting, and surviving each phase."""
    counts = {phase: {"planned": 0, "hit": 0, "survived": 0} for phase in PHASES}
    for fault in faults:
        if fault["planned_phase"]:
            counts[fault["planned_phase"]]["planned"] += 1
        if fault["phase"]:
            counts[fault["phase"]]["hit"] += 1
            counts[fault["phase"]]["survived"] += fault["survived"]
    return counts


def fault_counts(faults: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Injected, survived and skipped faults by kind."""
    counts: dict[str, dict[str, int]] = {}
    for fault in faults:
        row = counts.setdefault(fault["kind"], {"injected": 0, "survived": 0, "skipped": 0})
        row["skipped" if fault["skipped"] else "injected"] += 1
        row["survived"] += fault["survived"]
    return counts


def finite_line(cost: dict | None) -> str:
    """The finite-state check's cost, in words."""
    if cost is None:
        return "Finite-state check: not measured (no final step)."
    return (
        f"Finite-state check before each save (`trainer.nonfinite_arrays` on the final state, {cost['arrays']} "
        f"arrays, median of {cost['repeats']}): {cost['check_seconds'] * 1e3:.2f} ms against a median step of "
        f"{cost['median_step_seconds'] * 1e3:.1f} ms (metrics.jsonl): {cost['check_over_step']:.1%} of a step, "
        f"{cost['check_over_step_per_save_interval']:.2%} of the steps between two saves. Non-finite arrays: "
        f"{cost['nonfinite_arrays']}."
    )


def markdown(report: dict) -> str:
    """The report as a Markdown page."""
    counts, config, phases = fault_counts(report["faults"]), report["config"], report["kill_phases"]
    injected = sum(c["injected"] for c in counts.values())
    survived = sum(c["survived"] for c in counts.values())
    skipped = [f["line"] for f in report["faults"] if f["skipped"]]
    problems = report["mismatches"] + report["metrics_problems"] + report["deleted_problems"] + report["final_problems"]
    lines = [
        "# Fault drill\n",
        f"{report['date']}, code {report['code']}. Command: `{report['command'].strip()}`. "
        f"Total {report['total_seconds']:.0f} s.\n",
        f"Load at start: `{report['uptime_start']}`; at end: `{report['uptime_end']}`.\n",
        f"Config: tiny T5 on the in-memory docstrings task (littlehelp/gin/runs/smoke.gin), {config['steps']} steps, "
        "async saves every "
        f"{config['save_interval']} steps, keep {config['max_to_keep']}, seed {config['seed']}. Every attempt runs:\n",
        f"    {report['train_command']}\n",
        f"Plan (in order): {', '.join(report['plan'])}; then the final attempt, the sweep and the convert.\n",
        f"**Target** (every fault survived, kills in all {len(PHASES)} phases, 0 mismatches, nothing deleted): "
        f"**{'met' if report['target_met'] else 'MISSED'}**. {survived} of {injected} faults survived"
        + (f", {len(skipped)} skipped" if skipped else "")
        + f"; {len(report['mismatches'])} mismatches in "
        f"{report['arrays_compared']} arrays of step {config['steps']} compared bitwise with an uninterrupted "
        f"run; {len(report['deleted_problems'])} deletions; {report['lock_takeovers']} stale-lock takeovers.\n",
        "| fault | injected | survived | skipped | what |",
        "|---|---|---|---|---|",
        *(
            f"| {kind} | {c['injected']} | {c['survived']} | {c['skipped']} | {FAULTS[kind]} |"
            for kind, c in counts.items()
        ),
        "",
        "Kills by phase (the phase hit is read from the killed attempt's log and the steps on disk):",
        "",
        "| phase | planned | hit | survived |",
        "|---|---|---|---|",
        *(f"| {phase} | {c['planned']} | {c['hit']} | {c['survived']} |" for phase, c in phases.items()),
        "",
        "Per fault:",
        "",
        *(f"{i}. {f['line']}" for i, f in enumerate(report["faults"], 1)),
        "",
        f"Other checks: metrics.jsonl has each train step 1..{config['steps']} exactly once: "
        f"{'yes' if not report['metrics_problems'] else 'NO'}; final attempt exited 0: "
        f"{'yes' if not report['final_problems'] else 'NO'}."
        + ("".join(f"\n- {p}" for p in problems) if problems else ""),
        "",
        finite_line(report["finite_check"]),
        "",
        f"Run folders and per-attempt logs: {report['work_dir']} (not kept in the repository).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
