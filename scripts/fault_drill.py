"""Fault drill: SIGKILL, SIGTERM, a corrupted step and a failed save; then a bitwise comparison.

Trains the tests' tiny T5 (tests/test_resume.py's TINY_RUN: inputs/targets 32, batch 8, one device,
eval off) with asynchronous saves every `--save_interval` steps, keeping `--max_to_keep`, through the
real CLI (`python -m littlehelp.main train ...`, one subprocess per attempt, its output read live).
Each attempt ends in a fault and is resumed by running the same command again:

- `--kills` SIGKILLs: half right after the attempt logs "Checkpoint step N being written" (its 2nd or
  3rd save, so the asynchronous write is in flight; the first kill is one of these, so that a
  finished step exists early), half at a random delay (up to `--max_kill_delay` s) after the
  attempt's first step; the other faults come at random places in the second half; no attempt is let past
  `steps - 2 * save_interval`, so that every fault finds work left. The next attempt must take over
  the dead process's run.lock and resume from the newest finished step.
- one corrupted newest step (its state/_METADATA deleted or its largest data file truncated), followed
  by one SIGTERM: the resumed attempt must move the step to checkpoints/corrupt/<step>-<time>/, resume
  from the step before, and save the corrupted step again; the SIGTERM, sent once that save has begun,
  must save, log "SIGTERM received" and exit with `errors.EXIT_PREEMPTED`.
- one failed save: checkpoints/ bind-mounted read-only (needs root; recorded as skipped, with the
  reason, where mounting is refused); the attempt must exit non-zero within
  `--failed_save_limit` s with exactly one stderr line "littlehelp: error: cannot save checkpoint
  step ..." naming the folder, and leave every file of the steps on disk as it was.

After the last fault it runs to `--steps`, compares every array of the final checkpoint bitwise
(dtype, shape, bytes) with an uninterrupted run of the same config, checks that metrics.jsonl has each
train step exactly once and that every corrupted step is still whole under corrupt/, and times the
trainer's finite-state check (run before each save) against the median step time.

    python scripts/fault_drill.py [--kills 10] [--seed 0] [--steps 60]
writes results/fault_drill.{json,md}; exit status 1 when the target (every fault survived, 0
mismatches, nothing deleted) is missed. Run folders and per-attempt logs stay in `--work_dir`.
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

import jax  # noqa: E402
import numpy as np  # noqa: E402

from littlehelp import checkpoints, errors, trainer  # noqa: E402
from littlehelp.metrics import read_jsonl  # noqa: E402

TINY_RUN = ["--gin_file=runs/smoke.gin", "--gin.checkpoints.CheckpointConfig.async_save=True"]
STEP_LINE = re.compile(r"\] step (\d+) train:")
SAVE_LINE = re.compile(r"Checkpoint step (\d+) being written")
RESUME_LINE = re.compile(r"training steps (\d+) -> ")
SIGTERM_SAVE_LINE = re.compile(r"SIGTERM received: saving step (\d+)")
TAKEOVER = "Taking over the lock"
SAVE_ERROR = "littlehelp: error: cannot save checkpoint step"
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def train_command(model_dir: Path, steps: int, save_interval: int, max_to_keep: int) -> list[str]:
    """The `littlehelp train` command line of one run folder (every attempt runs exactly this)."""
    return [sys.executable, "-m", "littlehelp.main", "train", *TINY_RUN,
            f"--gin.checkpoints.CheckpointConfig.save_interval_steps={save_interval}",
            f"--gin.checkpoints.CheckpointConfig.max_to_keep={max_to_keep}",
            f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}"]


class Attempt:
    """One training subprocess; its stdout and stderr lines are collected and readable as they come."""

    def __init__(self, command: Sequence[str], log_path: Path):
        self.log_path = log_path
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, bufsize=1)
        self.lines: list[tuple[str, str]] = []  # (stream, line), in arrival order
        self._queue: queue.Queue[str | None] = queue.Queue()  # None: one stream has ended
        self._open = 2
        self._readers = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                         for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr"))]
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
        """Sends `sig` to the trainer process."""
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
class KillTrigger:
    """When to SIGKILL an attempt: right after its `saves`-th save starts, or `delay` s after its first step."""

    saves: int = 0
    delay: float = 0.0

    def describe(self) -> str:
        """The trigger in words, for the outcome line."""
        return f"right after save #{self.saves} began" if self.saves else f"{self.delay:.2f} s after the first step"


def wait_for_trigger(attempt: Attempt, trigger: KillTrigger, ceiling: int, timeout: float) -> str | None:
    """Reads `attempt`'s output until `trigger` (or a step >= `ceiling`) fires; returns where it fired,
    or None when the process ended (or `timeout` passed) first."""
    saves, last_step, fire_at = 0, None, None
    deadline = time.monotonic() + timeout
    while not attempt.closed:
        line = attempt.next_line(min(deadline, fire_at or deadline))
        if fire_at is not None and time.monotonic() >= fire_at:
            return f"{trigger.describe()} (after step {last_step})"
        if line is None:
            if time.monotonic() >= deadline:
                return None
            continue
        if step := STEP_LINE.search(line):
            last_step = int(step.group(1))
            if last_step >= ceiling:
                return f"at the step ceiling {ceiling}"
            if fire_at is None and not trigger.saves:
                fire_at = time.monotonic() + trigger.delay
        if trigger.saves and (save := SAVE_LINE.search(line)):
            saves += 1
            if saves == trigger.saves:
                return f"{trigger.describe()} (step {save.group(1)})"
    return None


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
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def corrupt_step(step_dir: Path, rng: random.Random) -> str:
    """Deletes `state/_METADATA` or truncates the largest file under `state/` to half; says which."""
    state = step_dir / checkpoints.STATE_ITEM
    if rng.random() < 0.5:
        (state / "_METADATA").unlink()
        return f"deleted {step_dir.name}/state/_METADATA"
    largest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    size = largest.stat().st_size
    os.truncate(largest, size // 2)
    return f"truncated {largest.relative_to(step_dir.parent)} from {size} to {size // 2} bytes"


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

    kind: str  # kill, corrupt, sigterm or failed_save
    detail: str
    problems: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None

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
        self._aftermath: Outcome | None = None  # the fault whose resume the next attempt shows

    def _launch(self, label: str) -> tuple[Attempt, Expectation]:
        """Starts the next attempt, with what it must show at its start given the folder as it is now."""
        steps = committed_steps(self.checkpoints)
        expect = Expectation((self.model_dir / checkpoints.LOCK_NAME).exists(), steps[-1] if steps else 0)
        log = self.logs / f"{len(self.attempts):02d}-{label}.log"
        return Attempt(self.command, log), expect

    def _record(self, label: str, attempt: Attempt, code: int | None, seconds: float) -> None:
        """Adds one finished attempt to the report's list."""
        resumed = RESUME_LINE.search(attempt.text)
        self.attempts.append({"attempt": label, "exit_status": code, "seconds": round(seconds, 1),
                              "resumed_from": int(resumed.group(1)) if resumed else None,
                              "took_over_lock": TAKEOVER in attempt.text, "log": str(attempt.log_path)})

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
        return [f"next attempt resumed from {resumed.group(1) if resumed else 'nothing (no training steps line)'}, "
                f"expected step {step}"]

    def _settle(self, attempt: Attempt, expect: Expectation, check_resume: bool = True) -> None:
        """Completes the previous fault's outcome with what `attempt` showed at its start, and prints it.

        Without `check_resume` (the step it resumes from is another fault's concern) only the lock counts.
        """
        outcome, self._aftermath = self._aftermath, None
        if outcome is None:
            return
        outcome.problems += self._lock_problems(attempt, expect)
        if check_resume:
            outcome.problems += self._resume_problems(attempt, expect.resume_step)
        resumed = RESUME_LINE.search(attempt.text)
        outcome.detail += f"; next attempt resumed from step {resumed.group(1) if resumed else '?'}" + (
            ", took over the stale lock" if TAKEOVER in attempt.text else "")
        self._report(outcome)

    def _report(self, outcome: Outcome) -> None:
        """Records a settled fault and prints its line."""
        self.outcomes.append(outcome)
        print(f"[fault {len(self.outcomes)}] {outcome.line()}", flush=True)

    def kill(self, trigger: KillTrigger) -> None:
        """One SIGKILL at `trigger`; survived if the next attempt takes over the lock and resumes."""
        launched = time.time()
        attempt, expect = self._launch("kill")
        fired = wait_for_trigger(attempt, trigger, self.ceiling, self.args.run_timeout)
        if fired is not None:
            attempt.send(signal.SIGKILL)
        code, seconds = attempt.finish(self.args.run_timeout)
        self._settle(attempt, expect)
        self._record("kill", attempt, code, seconds)
        left = tmp_folders(self.checkpoints, launched)
        outcome = Outcome("kill", f"SIGKILL {fired}; " + (f"unfinished save left: {', '.join(left)}" if left
                                                          else "no save in flight"))
        if fired is None or code != -signal.SIGKILL:
            outcome.problems.append(f"not killed: the attempt ended by itself with exit status {code}")
        if not (self.model_dir / checkpoints.LOCK_NAME).exists():
            outcome.problems.append("the killed attempt left no run.lock")
        self._aftermath = outcome

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
        self._settle(attempt, expect, check_resume=corrupted is None)
        if corrupted is not None:
            self._check_corruption(attempt, corrupted, expect.resume_step, first_save)
        self._record("sigterm", attempt, code, seconds)
        saved = SIGTERM_SAVE_LINE.search(attempt.text)
        outcome = Outcome("sigterm", f"SIGTERM after the save of step {first_save} began; exit status {code} "
                          f"{stopped_after:.1f} s later" + (f", saved step {saved.group(1)}" if saved else ""))
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
        moved = re.search(rf"Moved checkpoint {re.escape(str(self.checkpoints))}/{step}, which cannot be restored, "
                          rf"to (\S+/{checkpoints.CORRUPT_FOLDER}/{step}-[\w.-]+);", attempt.text)
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
        outcome = Outcome("failed_save", f"checkpoints/ read-only: exit status {code} after {seconds:.1f} s"
                          + (f": {errors_lines[0]}" if errors_lines else ""))
        if code in (0, None) or seconds > self.args.failed_save_limit:
            outcome.problems.append(f"expected a non-zero exit within {self.args.failed_save_limit} s")
        if len(errors_lines) != 1 or str(self.checkpoints) not in errors_lines[0]:
            outcome.problems.append(f"expected one stderr line '{SAVE_ERROR} ...' naming {self.checkpoints}, "
                                    f"got {len(errors_lines)}")
        if snapshot(self.checkpoints) != before:
            outcome.problems.append("the files on disk changed")
        self._aftermath = outcome

    def finish(self) -> list[str]:
        """Runs to the last step; returns the problems of that attempt (beyond the previous fault's)."""
        attempt, expect = self._launch("final")
        code, seconds = attempt.finish(self.args.run_timeout)
        self._settle(attempt, expect)
        self._record("final", attempt, code, seconds)
        return [] if code == 0 else [f"the final attempt exited with status {code} (log {attempt.log_path})"]

    def run(self, plan: Sequence[KillTrigger | str]) -> list[str]:
        """Injects the faults of `plan` in order, then runs to the end; returns the final attempt's problems."""
        for fault in plan:
            if isinstance(fault, KillTrigger):
                self.kill(fault)
            elif fault == "corrupt_then_sigterm":
                self.corrupt_then_sigterm()
            else:
                self.failed_save()
        return self.finish()


def plan_faults(kills: int, rng: random.Random, max_delay: float) -> list[KillTrigger | str]:
    """`kills` SIGKILL triggers (half at a save, half at a random delay; the first at a save, so that a
    finished step exists early), with the corrupt-then-SIGTERM pair and the failed save inserted at
    random places in the second half."""
    first, saves = min(kills, 1), max(kills // 2, min(kills, 1))
    rest = [True] * (saves - first) + [False] * (kills - saves)
    rng.shuffle(rest)
    at_save = [True] * first + rest
    plan: list[KillTrigger | str] = [KillTrigger(saves=rng.randint(2, 3)) if save else
                                     KillTrigger(delay=round(rng.uniform(0, max_delay), 2)) for save in at_save]
    for special in ("corrupt_then_sigterm", "failed_save"):
        plan.insert(rng.randint(max(kills // 2, 1), len(plan)), special)
    return plan


def arrays_by_path(step_dir: Path) -> dict[str, np.ndarray]:
    """Every array of a step folder (`checkpoints.read_arrays`), keyed by its tree path."""
    flat = jax.tree_util.tree_flatten_with_path(checkpoints.read_arrays(step_dir))[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def compare_arrays(left_dir: Path, right_dir: Path) -> tuple[int, list[str]]:
    """(arrays compared, mismatches) between two step folders: same tree paths, dtypes, shapes and bytes."""
    left, right = arrays_by_path(left_dir), arrays_by_path(right_dir)
    mismatches = [f"{name}: only in {left_dir if name in left else right_dir}" for name in sorted(left.keys() ^ right.keys())]
    for name in sorted(left.keys() & right.keys()):
        a, b = left[name], right[name]
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            mismatches.append(f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}, bytes differ")
    return len(left.keys() | right.keys()), mismatches


def metrics_problems(path: Path, steps: int) -> list[str]:
    """Train steps of metrics.jsonl that are missing, repeated or beyond `steps` (each must appear once)."""
    seen = [r["step"] for r in read_jsonl(path) if any(k.startswith("train/") for k in r)]
    counts = {step: seen.count(step) for step in set(seen) | set(range(1, steps + 1))}
    return [f"train step {step} appears {n} times in metrics.jsonl" for step, n in sorted(counts.items())
            if n != (1 if 1 <= step <= steps else 0)]


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
    step_seconds = statistics.median(1 / r["train/steps_per_second"] for r in read_jsonl(metrics_path)
                                     if "train/steps_per_second" in r)
    check = statistics.median(seconds)
    return {"check_seconds": check, "median_step_seconds": step_seconds, "check_over_step": check / step_seconds,
            "check_over_step_per_save_interval": check / (step_seconds * save_interval),
            "arrays": len(jax.tree.leaves(state)), "nonfinite_arrays": len(bad), "repeats": repeats}


def code_version() -> str:
    """The commit the trainer ran from, and whether littlehelp/ or gin/ had uncommitted changes."""
    def git(*args: str) -> str:
        """Runs `git ARGS` in the repository; its output, empty on failure."""
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" with uncommitted changes in littlehelp/ or gin/" if git("status", "--porcelain", "littlehelp", "gin")
                     else "")


def load_average() -> str:
    """`uptime`'s output: who else is using the machine."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The drill's flags (`argv` None: the command line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs to inject")
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault plan and the corruption")
    parser.add_argument("--steps", type=int, default=60, help="TRAIN_STEPS of the run")
    parser.add_argument("--save_interval", type=int, default=5, help="save_interval_steps")
    parser.add_argument("--max_to_keep", type=int, default=3)
    parser.add_argument("--max_kill_delay", type=float, default=3.0,
                        help="delayed kills come 0..this many seconds after an attempt's first step")
    parser.add_argument("--failed_save_limit", type=float, default=60.0,
                        help="seconds (start-up included) within which a failed save must exit")
    parser.add_argument("--run_timeout", type=float, default=600.0, help="seconds before an attempt is given up")
    parser.add_argument("--finite_repeats", type=int, default=20, help="timings of the finite-state check")
    parser.add_argument("--work_dir", type=Path, default=None,
                        help="where the run folders and logs go (default: a new folder in the temp dir)")
    parser.add_argument("--out_dir", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.save_interval < 1 or args.steps < 4 * args.save_interval:
        parser.error("need --kills >= 1, --save_interval >= 1 and --steps >= 4 * --save_interval")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the drill and writes the results; returns the exit status (1: target missed)."""
    args = parse_args(argv)
    started, load_start = time.monotonic(), load_average()
    work_dir = (args.work_dir or Path(tempfile.mkdtemp(prefix="fault_drill-"))).resolve()
    if (work_dir / "drill").exists() or (work_dir / "straight").exists():
        raise SystemExit(f"fault_drill: {work_dir} already holds a drill; pass an empty --work_dir")
    print(f"fault drill in {work_dir} ({load_start})", flush=True)
    drill = Drill(args, work_dir)
    straight_dir = work_dir / "straight"
    straight = Attempt(train_command(straight_dir, args.steps, args.save_interval, args.max_to_keep),
                       drill.logs / "straight.log")
    code, seconds = straight.finish(args.run_timeout)
    if code != 0:
        raise SystemExit(f"fault_drill: the uninterrupted run failed with status {code}; see {straight.log_path}")
    print(f"uninterrupted run: {args.steps} steps in {seconds:.0f} s", flush=True)
    final_problems = drill.run(plan_faults(args.kills, drill.rng, args.max_kill_delay))
    final_dir = drill.checkpoints / str(args.steps)
    if final_dir.is_dir():
        compared, mismatches = compare_arrays(final_dir, straight_dir / "checkpoints" / str(args.steps))
        finite = finite_check_cost(final_dir, drill.model_dir / "metrics.jsonl", args.save_interval,
                                   args.finite_repeats)
    else:
        compared, mismatches, finite = 0, [f"the drill's final step {args.steps} is not on disk"], None
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/fault_drill.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "config": {k: v for k, v in vars(args).items() if k not in ("work_dir", "out_dir")},
        "code": code_version(), "train_command": shlex.join(drill.command), "work_dir": str(work_dir),
        "faults": [dataclasses.asdict(o) | {"survived": o.survived, "line": o.line()} for o in drill.outcomes],
        "attempts": drill.attempts,
        "lock_takeovers": sum(a["took_over_lock"] for a in drill.attempts),
        "arrays_compared": compared, "mismatches": mismatches,
        "metrics_problems": metrics_problems(drill.model_dir / "metrics.jsonl", args.steps),
        "deleted_problems": deleted_problems(drill.corrupted), "final_problems": final_problems,
        "corrupted": [{k: v for k, v in c.items() if k != "files"} | {"files": len(c["files"])} for c in drill.corrupted],
        "finite_check": finite,
        "uptime_start": load_start, "uptime_end": load_average(),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    report["target_met"] = target_met(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "fault_drill.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out_dir / "fault_drill.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["target_met"] else 1


def target_met(report: dict) -> bool:
    """Every injected fault survived, 0 mismatches, nothing deleted, each step once, a clean final run."""
    return (all(f["survived"] for f in report["faults"] if not f["skipped"]) and not report["mismatches"]
            and not report["deleted_problems"] and not report["metrics_problems"] and not report["final_problems"])


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
    return (f"Finite-state check before each save (`trainer.nonfinite_arrays` on the final state, {cost['arrays']} "
            f"arrays, median of {cost['repeats']}): {cost['check_seconds'] * 1e3:.2f} ms against a median step of "
            f"{cost['median_step_seconds'] * 1e3:.1f} ms (metrics.jsonl): {cost['check_over_step']:.1%} of a step, "
            f"{cost['check_over_step_per_save_interval']:.2%} of the steps between two saves. Non-finite arrays: "
            f"{cost['nonfinite_arrays']}.")


def markdown(report: dict) -> str:
    """The report as a Markdown page."""
    counts, config = fault_counts(report["faults"]), report["config"]
    injected = sum(c["injected"] for c in counts.values())
    survived = sum(c["survived"] for c in counts.values())
    skipped = [f["line"] for f in report["faults"] if f["skipped"]]
    problems = report["mismatches"] + report["metrics_problems"] + report["deleted_problems"] + report["final_problems"]
    lines = [
        "# Fault drill\n",
        f"{report['date']}, code {report['code']}. Command: `{report['command'].strip()}`. "
        f"Total {report['total_seconds']:.0f} s.\n",
        f"Load at start: `{report['uptime_start']}`; at end: `{report['uptime_end']}`.\n",
        f"Config: tiny T5 on the in-memory docstrings task (gin/runs/smoke.gin), {config['steps']} steps, async saves every "
        f"{config['save_interval']} steps, keep {config['max_to_keep']}, seed {config['seed']}, delayed kills up "
        f"to {config['max_kill_delay']} s after an attempt's first step. Every attempt runs:\n",
        f"    {report['train_command']}\n",
        f"**Target** (every fault survived, 0 mismatches, nothing deleted): "
        f"**{'met' if report['target_met'] else 'MISSED'}**. {survived} of {injected} faults survived"
        + (f", {len(skipped)} skipped" if skipped else "") + f"; {len(report['mismatches'])} mismatches in "
        f"{report['arrays_compared']} arrays of step {config['steps']} compared bitwise with an uninterrupted "
        f"run; {len(report['deleted_problems'])} deletions; {report['lock_takeovers']} stale-lock takeovers.\n",
        "| fault | injected | survived | skipped |", "|---|---|---|---|",
        *(f"| {kind} | {c['injected']} | {c['survived']} | {c['skipped']} |" for kind, c in counts.items()),
        "", "Per fault:", "", *(f"{i}. {f['line']}" for i, f in enumerate(report["faults"], 1)), "",
        f"Other checks: metrics.jsonl has each train step 1..{config['steps']} exactly once: "
        f"{'yes' if not report['metrics_problems'] else 'NO'}; final attempt exited 0: "
        f"{'yes' if not report['final_problems'] else 'NO'}."
        + ("".join(f"\n- {p}" for p in problems) if problems else ""), "",
        finite_line(report["finite_check"]), "",
        f"Run folders and per-attempt logs: {report['work_dir']} (not kept in the repository).", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
