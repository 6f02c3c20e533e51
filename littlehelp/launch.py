"""Runs `littlehelp train` and `littlehelp eval` from Python, without the command line.

`configure(command, gin_files, overrides)` parses gin as the CLI does and returns the command's
gin-configurable function (`COMMANDS`), ready to call; `littlehelp.main` is a thin shell around it.
`train(gin_files, bindings, model_dir)` trains one run folder in this process and returns a
`RunResult` (its last step and final train and eval metrics, read back from `metrics.jsonl`). A
folder that already holds its final step is reused without training; one that holds an earlier step
is resumed by the trainer. `train` records its gin files and bindings in `MODEL_DIR/launch.json`
before training, and refuses, by name, a folder whose `launch.json` records other settings, rather
than reuse or resume a run that is not the one asked for. A folder without `launch.json` (trained by
`littlehelp train`) is accepted as it is, and gets one when `train` goes on training it.
`evaluate(gin_files, bindings, model_dir)` is `littlehelp eval`. Both clear gin when they end, so the
caller can import and parse more. Errors are `LittlehelpError`s
(`config.ConfigError` for configuration problems), never `SystemExit`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging as std_logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import flags, logging

from littlehelp import config
from littlehelp.errors import EXIT_PREEMPTED, PreemptedError

# jax, checkpoints and metrics are imported where used: the CLI imports this module before it sets up JAX.

# Subcommand -> (module, gin-configurable function). Modules are imported only when used.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("littlehelp.trainer", "train"),
    "eval": ("littlehelp.trainer", "evaluate"),
    "infer": ("littlehelp.inference", "infer"),
}
LAUNCH_RECORD = "launch.json"  # MODEL_DIR/launch.json: the gin files and bindings `train` ran with
FINAL_STEP_BINDING = "trainer.train.steps"
MODEL_DIR = "MODEL_DIR"
# Libraries whose INFO lines drown the run's own progress; their warnings and errors still show, but
# for LIBRARY_NOISE, warnings that every run of this project gets and no run acts on.
QUIET_LIBRARIES = ("/orbax/", "/seqio/", "/tensorflow", "/jax/", "/etils/", "/gin/")
LIBRARY_NOISE = ("Metadata file does not exist",)  # orbax, reading a step saved without its optional metadata
# Lines TensorFlow's native code writes to stderr while it loads, before TF_CPP_MIN_LOG_LEVEL applies
# (that setting, made by the CLI, silences the later ones: cuInit, 'PyFunc is stateful').
NATIVE_NOISE = (
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "Unable to register cu",
    "computation placer already registered",
    "TF-TRT Warning",
)

Bindings = Mapping[str, Any] | Sequence[str]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What `train` did to one run folder, with the final metrics of its metrics.jsonl."""

    model_dir: Path
    last_step: int
    train_metrics: dict[str, float]  # the last train record, "train/" removed
    eval_metrics: dict[str, float]  # the last eval record, "eval/" removed
    seconds: float  # wall seconds this call spent (0.0 when reused)
    reused: bool  # the folder already held its final step: nothing was trained
    preempted: bool  # stopped by SIGTERM with its state saved; train again to resume

    @property
    def exit_code(self) -> int:
        """0 when finished, `EXIT_PREEMPTED` (75) when stopped by SIGTERM (as `TrainSummary.exit_code`)."""
        return EXIT_PREEMPTED if self.preempted else 0


def load_command(command: str) -> Callable[..., Any]:
    """Imports (TensorFlow's loading lines dropped) and returns the gin-configurable function that runs `command`."""
    module_name, function_name = COMMANDS[command]
    with native_noise_dropped():
        module = importlib.import_module(module_name)
    return getattr(module, function_name)


@contextlib.contextmanager
def native_noise_dropped() -> Iterator[None]:
    """Holds back what is written to stderr's file descriptor in the block (native code writes there
    directly, past Python's logging), then writes back the lines that are not `NATIVE_NOISE`."""
    sys.stderr.flush()
    terminal = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(terminal, 2)
            os.close(terminal)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            os.write(2, "".join(line for line in lines if not any(n in line for n in NATIVE_NOISE)).encode())


def configure(
    command: str, gin_files: Sequence[str], overrides: Sequence[str], search_paths: Sequence[str] = ()
) -> Callable[..., Any]:
    """Imports configurables, parses gin (`gin_files`, then `NAME=VALUE` `overrides`), and returns the
    command's function, ready to call.

    Raises `config.ConfigError` for any configuration problem, before anything runs, including a
    required parameter left unset of a configurable that gin calls (`@name()`) to fill the function's
    arguments; nothing gin binds is called here.
    """
    target = load_command(command)
    config.import_configurable_modules()
    config.parse_gin(gin_files, overrides, search_paths)
    missing = [f"{target.__name__}.{name}" for name in config.missing_required_arguments(target)]
    missing += config.missing_reference_arguments(target)
    if missing:
        raise config.ConfigError(f"required value(s) not set: {', '.join(missing)}")
    return target


def set_up_logging() -> None:
    """absl logging at INFO to stderr, without absl's 'before flag parsing' warning (the CLI's)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_quiet_libraries)


def from_quiet_library(record: std_logging.LogRecord) -> bool:
    """Whether a log record comes from one of the QUIET_LIBRARIES."""
    return any(p in record.pathname for p in QUIET_LIBRARIES)


def _quiet_libraries(record: std_logging.LogRecord) -> bool:
    """Keeps a log record unless it comes from a QUIET_LIBRARIES path and is below WARNING or `LIBRARY_NOISE`."""
    if not from_quiet_library(record):
        return True
    return record.levelno >= std_logging.WARNING and not str(record.msg).startswith(LIBRARY_NOISE)


def train(
    gin_files: str | Sequence[str], bindings: Bindings, model_dir: str | Path, search_paths: Sequence[str] = ()
) -> RunResult:
    """`littlehelp train` with `gin_files` (parsed in order), then `bindings`, then MODEL_DIR=`model_dir`.

    Reuses the folder without training when its checkpoints hold the final step (`trainer.train.steps`)
    or a later one; otherwise trains (resuming from its newest checkpoint) in this process. Raises
    `config.ConfigError` when the folder's launch.json records other gin files or bindings.
    """
    from littlehelp import checkpoints  # pylint: disable=import-outside-toplevel

    folder, record = Path(model_dir), launch_record(gin_files, bindings)
    overrides = [*binding_list(bindings), f"{MODEL_DIR}={str(folder)!r}"]
    with _gin_released():
        target = configure("train", record["gin_files"], overrides, search_paths)
        final_step = _final_step()
        check_launch_record(folder, record)
        done = checkpoints.finished_steps(folder / "checkpoints")
        if done and done[-1] >= final_step:
            print(f"  {folder.name}: step {done[-1]} is there, reused", flush=True)
            return read_result(folder, done[-1], seconds=0.0, reused=True, preempted=False)
        write_launch_record(folder, record)
        return _train_here(target, folder, final_step)


@contextlib.contextmanager
def _gin_released() -> Iterator[None]:
    """Clears gin's config (which parsing locks) when a run ends, so the caller can import or parse more."""
    try:
        yield
    finally:
        config.gin.clear_config()


def _train_here(target: Callable[..., Any], folder: Path, final_step: int) -> RunResult:
    """Calls the configured `trainer.train` and reports how it went, in one line and as a `RunResult`."""
    start = time.perf_counter()
    summary = target()
    seconds = time.perf_counter() - start
    if summary.preempted:
        print(f"  {folder.name}: stopped by SIGTERM at step {summary.last_step} after {seconds:.0f}s", flush=True)
    else:
        print(f"  {folder.name}: {final_step} steps done in {seconds:.0f}s", flush=True)
    return read_result(folder, summary.last_step, seconds=seconds, reused=False, preempted=summary.preempted)


def require_finished(result: RunResult) -> RunResult:
    """`result` when its run reached its final step; `PreemptedError` (exit 75) when SIGTERM stopped it."""
    if result.preempted:
        raise PreemptedError(
            f"the run in {result.model_dir} was stopped by SIGTERM at step {result.last_step} "
            "with its state saved; run the same command again to resume"
        )
    return result


def evaluate(
    gin_files: str | Sequence[str], bindings: Bindings, model_dir: str | Path, search_paths: Sequence[str] = ()
) -> dict[str, float]:
    """`littlehelp eval` with `gin_files`, then `bindings`, then MODEL_DIR=`model_dir`: the eval metrics."""
    overrides = [*binding_list(bindings), f"{MODEL_DIR}={str(Path(model_dir))!r}"]
    with _gin_released():
        return configure("eval", _file_list(gin_files), overrides, search_paths)()


def binding_list(bindings: Bindings) -> list[str]:
    """`NAME=VALUE` strings: a Mapping's items as `f"{name}={value}"`, a sequence's strings as they are."""
    if isinstance(bindings, Mapping):
        return [f"{name}={value}" for name, value in bindings.items()]
    return [bindings] if isinstance(bindings, str) else [str(b) for b in bindings]


def launch_record(gin_files: str | Sequence[str], bindings: Bindings) -> dict[str, list[str]]:
    """What `train` records in launch.json: the gin files and the bindings but MODEL_DIR, in order."""
    return {
        "gin_files": _file_list(gin_files),
        "bindings": [b for b in binding_list(bindings) if _name(b) != MODEL_DIR],
    }


def _file_list(gin_files: str | Sequence[str]) -> list[str]:
    """One gin file or several, as a list of strings."""
    return [gin_files] if isinstance(gin_files, (str, Path)) else [str(f) for f in gin_files]


def _name(binding: str) -> str:
    """The NAME of `NAME=VALUE`."""
    return binding.partition("=")[0].strip()


def _final_step() -> int:
    """The final step gin binds to `trainer.train.steps` (parsed gin)."""
    steps = config.bound_value(FINAL_STEP_BINDING)
    if not isinstance(steps, int) or isinstance(steps, bool):
        raise config.ConfigError(f"{FINAL_STEP_BINDING} is {steps!r}, not an int")
    return steps


def check_launch_record(folder: Path, record: Mapping[str, list[str]]) -> None:
    """Raises `config.ConfigError` when `folder/launch.json` exists and records other settings than `record`."""
    path = folder / LAUNCH_RECORD
    if not path.is_file():
        return
    try:
        there = json.loads(path.read_text(encoding="utf-8"))
        difference = settings_difference(there, record)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise config.ConfigError(
            f"run folder {folder} has an unreadable {LAUNCH_RECORD} ({error}); use another folder or delete it"
        ) from None
    if difference:
        raise config.ConfigError(
            f"run folder {folder} was built with other settings ({difference}); use another folder or delete it"
        )


def settings_difference(there: Mapping[str, list[str]], now: Mapping[str, list[str]]) -> str:
    """The first difference between two launch records, as `"X=1 there, X=2 now"`; "" when they agree.

    Bindings are compared by the value each name ends with (a later binding of a name replaces an
    earlier one, as in gin), gin files as the ordered list.
    """
    if list(there["gin_files"]) != list(now["gin_files"]):
        return f"gin files {_listed(there['gin_files'])} there, {_listed(now['gin_files'])} now"
    old, new = _final_values(there["bindings"]), _final_values(now["bindings"])
    for name in [*new, *(n for n in old if n not in new)]:
        if old.get(name) != new.get(name):
            return f"{_shown(name, old)} there, {_shown(name, new)} now"
    return ""


def _final_values(bindings: Sequence[str]) -> dict[str, str]:
    """{NAME: VALUE} of `NAME=VALUE` strings, spaces around both trimmed, the last binding of a name kept."""
    values: dict[str, str] = {}
    for binding in bindings:
        name, _, value = binding.partition("=")
        values[name.strip()] = value.strip()
    return values


def _shown(name: str, values: Mapping[str, str]) -> str:
    """`NAME=VALUE`, or `NAME unset`."""
    return f"{name}={values[name]}" if name in values else f"{name} unset"


def _listed(files: Sequence[str]) -> str:
    """Gin file names joined by commas (`none` for none)."""
    return ", ".join(files) or "none"


def write_launch_record(folder: Path, record: Mapping[str, list[str]]) -> None:
    """Writes `folder/launch.json` atomically (a temporary file, then `os.replace`), from process 0 only."""
    import jax  # pylint: disable=import-outside-toplevel

    path = folder / LAUNCH_RECORD
    if jax.process_index() != 0 or path.is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f"{LAUNCH_RECORD}.tmp"
    temporary.write_text(json.dumps(dict(record), indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_result(folder: Path, last_step: int, seconds: float, reused: bool, preempted: bool) -> RunResult:
    """A `RunResult` whose metrics are the last train and eval records of `folder/metrics.jsonl`."""
    from littlehelp import metrics  # pylint: disable=import-outside-toplevel

    path = folder / metrics.METRICS_FILE_NAME
    records = metrics.read_jsonl(path) if path.is_file() else []
    return RunResult(
        model_dir=folder,
        last_step=last_step,
        train_metrics=last_metrics(records, "train")[1],
        eval_metrics=last_metrics(records, "eval")[1],
        seconds=seconds,
        reused=reused,
        preempted=preempted,
    )


def last_metrics(records: Sequence[Mapping[str, Any]], prefix: str) -> tuple[int | None, dict[str, float]]:
    """(step, {name: value}) of the last record holding `prefix/` metrics, the prefix removed."""
    for record in reversed(records):
        values = {k.removeprefix(f"{prefix}/"): v for k, v in record.items() if k.startswith(f"{prefix}/")}
        if values:
            return record.get("step"), values
    return None, {}
