"""Command line: `littlehelp train|eval|infer|compile --gin_file=F.gin --gin.NAME=VALUE`, and convert|sweep|study.

`littlehelp convert --from=PATH --to=DIR` imports a pretrained model (a GGUF file or an HF folder)
into a run folder (see `littlehelp.models.convert.run_folder`). `littlehelp sweep --sweep='NAME=[V1, V2]'`
trains one run folder per point of a grid of gin values under MODEL_DIR (see `littlehelp.sweep`).
`littlehelp compile --gin_file=F.gin --topology=v5p-512` compiles a training run's steps for a target
topology without running them and reports their per-device memory (see `littlehelp.aot`).
`littlehelp study NAME [--quick]` runs a paper's reproduction through the study harness
(`littlehelp.study`); `littlehelp study --list` names them.
Each other subcommand parses the gin files (searched in the working directory, `--gin_search_paths`
and the package's gin folder, littlehelp/gin/), then the `--gin.NAME=VALUE` overrides, and calls one
gin-configurable function that takes all of its arguments from gin. `--multihost` calls
`jax.distributed.initialize()` first, for runs launched on every host of a pod or cluster.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Before anything imports TensorFlow.

import argparse
import contextlib
import logging as std_logging
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import logging

from littlehelp import launch
from littlehelp.config import split_overrides
from littlehelp.errors import LittlehelpError

# Re-exported for tests that drive the CLI's pieces; library code imports littlehelp.launch. The
# commands table is `launch.COMMANDS` (not re-exported: patch it there).
from littlehelp.launch import configure, set_up_logging  # noqa: F401

COMMAND_HELP = {
    "train": "train a model (littlehelp.trainer.train)",
    "eval": "evaluate a checkpoint (littlehelp.trainer.evaluate)",
    "infer": "decode with a checkpoint (littlehelp.inference.infer)",
}
OVERRIDE_HELP = (
    "--gin.NAME=VALUE (repeatable) binds a gin value after the files, e.g. --gin.MODEL_DIR=runs/demo "
    "--gin.train.steps=10. VALUE is a gin literal when it parses as one (numbers, True, None, "
    "'quoted', @ref, %macro, lists); anything else is taken as a string."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per entry of `launch.COMMANDS`, sharing the gin options."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--gin_file",
        action="append",
        default=[],
        metavar="FILE",
        help="gin file to parse (repeatable, parsed in order)",
    )
    shared.add_argument(
        "--gin_search_paths",
        action="append",
        default=[],
        metavar="DIR[,DIR...]",
        help="extra folders to search for gin files, after the working directory and before littlehelp/gin/",
    )
    shared.add_argument(
        "--multihost",
        action="store_true",
        help="call jax.distributed.initialize() first (one process per host of a pod or cluster)",
    )
    parser = argparse.ArgumentParser(prog="littlehelp", description=__doc__.splitlines()[0], epilog=OVERRIDE_HELP)
    choices = "{" + ",".join([*launch.COMMANDS, "compile", "convert", "sweep", "study", "report"]) + "}"
    commands = parser.add_subparsers(dest="command", required=True, metavar=choices)
    for name in launch.COMMANDS:
        commands.add_parser(name, parents=[shared], help=COMMAND_HELP.get(name), epilog=OVERRIDE_HELP)
    converter = commands.add_parser("convert", help="import a GGUF file or an HF folder into a run folder")
    converter.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="PATH",
        help="a .gguf file or an HF folder (config.json + safetensors)",
    )
    converter.add_argument("--to", dest="out_dir", required=True, metavar="DIR", help="a new, empty folder")
    _add_sweep_parser(commands)
    _add_compile_parser(commands, shared)
    _add_study_parser(commands)
    reporter = commands.add_parser("report", help="a run folder's learning curves (curves.png) and what it learned")
    reporter.add_argument("--model_dir", required=True, metavar="DIR", help="the run folder")
    return parser


def _add_study_parser(commands: argparse._SubParsersAction) -> None:
    """The `study` subcommand: a paper's reproduction run by the study harness (`littlehelp.study`)."""
    runner = commands.add_parser("study", help="run a paper's reproduction as a study, or --list them")
    runner.add_argument("name", nargs="?", help="the study to run (see --list)")
    runner.add_argument("--list", action="store_true", help="list the studies and exit")
    runner.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run in its own folders, never written under results/"
    )
    runner.add_argument("--seeds", type=int, metavar="N", help="how many seeds (default: the study's)")
    runner.add_argument("--work_dir", metavar="DIR", help="run folders (default: runs/studies/NAME, or NAME-quick)")
    runner.add_argument(
        "--out",
        metavar="DIR",
        help="where result.json, table.md and plot.png go (default: results/NAME; quick: WORK_DIR/result)",
    )
    runner.add_argument(
        "--progress",
        metavar="DIR",
        help="keep each finished run's records (outcome, metrics, samples; no checkpoints) in DIR, and first "
        "take the finished runs DIR holds: a long study continued on another machine or checkout",
    )


def _study(args: argparse.Namespace) -> Any:
    """`littlehelp study`: lists the studies, or runs one (continuing it where it stopped)."""
    from littlehelp import study  # pylint: disable=import-outside-toplevel

    if args.list:
        listed = study.list_studies()
        width = max(len(name) for name, _ in listed)
        print("\n".join(f"{name:{width}s}  {title}" for name, title in listed), flush=True)
        return listed
    if not args.name:
        raise study.StudyError("study: name a study to run, or give --list")
    return study.run_named(study.Request(args.name, args.quick, args.seeds, args.work_dir, args.out, args.progress))


def _add_compile_parser(commands: argparse._SubParsersAction, shared: argparse.ArgumentParser) -> None:
    """The `compile` subcommand: a training run's steps compiled for a target, not run."""
    compiler = commands.add_parser(
        "compile",
        parents=[shared],
        epilog=OVERRIDE_HELP,
        help="compile a training run's steps for a target topology and report memory",
    )
    compiler.add_argument("--topology", metavar="NAME", help="a TPU slice, e.g. v5p-512 or v5e:4x4 (needs libtpu)")
    compiler.add_argument("--num_devices", type=int, metavar="N", help="N fake CPU devices instead of a TPU slice")
    compiler.add_argument(
        "--mesh", metavar="DxFxT", help="the (data, fsdp, tensor) mesh, e.g. 1x256x1 (default: the run's)"
    )
    compiler.add_argument(
        "--memory_gb",
        type=float,
        metavar="GB",
        help="per-device memory limit (default: the TPU chip's HBM; none for CPU)",
    )
    compiler.add_argument("--out", metavar="FILE.json", help="also write the report as JSON")


def _add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    """The `sweep` subcommand: a grid of gin values trained one run folder per point."""
    sweeper = commands.add_parser(
        "sweep", help="train one run folder per point of a grid of gin values", epilog=OVERRIDE_HELP
    )
    sweeper.add_argument(
        "--gin_file",
        action="append",
        default=[],
        metavar="FILE",
        help="gin file to parse (repeatable, parsed in order)",
    )
    sweeper.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="NAME=[V1, V2]",
        help="a binding and the gin values it takes (repeatable: the grid is their product)",
    )
    sweeper.add_argument(
        "--sweep_file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of NAME=[V1, V2] lines, one per line, # comments allowed",
    )
    sweeper.add_argument(
        "--print_commands", action="store_true", help="print one `littlehelp train` command per point and run nothing"
    )
    sweeper.add_argument(
        "--stop_on_failure",
        action="store_true",
        help="stop at the first point that fails (default: record it as failed and go on)",
    )


def main(argv: Sequence[str] | None = None, *, debug_log: DebugLog | None = None) -> Any:
    """Runs the CLI on `argv` (default `sys.argv[1:]`) and returns the command's result.

    A `LittlehelpError` (bad configuration, unusable checkpoint, a run that cannot go on) is printed
    as one line on stderr and exits with its `exit_code` (2 for configuration errors). A result with a
    non-zero `exit_code` attribute (a run stopped by SIGTERM: 75) exits with that status.
    With `debug_log` (the `littlehelp` program), library tracebacks go there instead of the terminal,
    and so does everything written to stderr after an error's line, which stays the last one shown.
    """
    try:
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(rest)
        launch.set_up_logging()
        if debug_log is not None:
            debug_log.take_tracebacks()
        if args.command == "convert":
            with launch.native_noise_dropped():
                from littlehelp.models.convert import run_folder  # pylint: disable=import-outside-toplevel

            return run_folder.convert(args.source, args.out_dir)
        if args.command == "study":
            return _study(args)
        if args.command == "report":
            from littlehelp import run_report  # pylint: disable=import-outside-toplevel

            return run_report.report(args.model_dir)
        if args.command == "sweep":
            from littlehelp import sweep  # pylint: disable=import-outside-toplevel

            return sweep.run_sweep(
                args.gin_file, args.sweep, args.sweep_file, overrides, args.print_commands, args.stop_on_failure
            )
        result = _compile(args, overrides) if args.command == "compile" else _run_command(args, overrides)
    except LittlehelpError as error:
        line = f"littlehelp: error: {error.one_line()}"
        if debug_log is None:
            print(line, file=sys.stderr)
        else:
            debug_log.print_last(line)
        raise SystemExit(error.exit_code) from None
    if getattr(result, "exit_code", 0):  # e.g. a training run stopped by SIGTERM exits 75
        raise SystemExit(result.exit_code)
    return result


class DebugLog:
    """A file in the temporary folder for what the terminal need not show, created on first use."""

    def __init__(self) -> None:
        self.path = Path(tempfile.gettempdir()) / f"littlehelp-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"

    def write(self, text: str) -> None:
        """Appends `text` (lost when the log cannot be written: a full disk)."""
        with contextlib.suppress(OSError), open(self.path, "a", encoding="utf-8") as log:
            log.write(text)

    def take_tracebacks(self) -> None:
        """From now on, the tracebacks of library log records (their message lines still show) and of
        exceptions Python ignores (`sys.unraisablehook`: callbacks of closed event loops) come here."""
        logging.get_absl_handler().addFilter(self._library_traceback)
        sys.unraisablehook = self._unraisable

    def _library_traceback(self, record: std_logging.LogRecord) -> bool:
        """A logging filter keeping every record; a QUIET_LIBRARIES record's traceback moves here."""
        if record.exc_info and launch.from_quiet_library(record):
            self.write(f"{record.getMessage()}\n{''.join(traceback.format_exception(*record.exc_info))}")
            record.exc_info, record.exc_text = None, None
        return True

    def _unraisable(self, unraisable: Any) -> None:
        lines = traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
        self.write(f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n{''.join(lines)}")

    def print_last(self, line: str) -> None:
        """Prints the error `line` as the last thing on stderr: what is written there afterwards (library
        threads reporting the same failure, tracebacks at interpreter exit) comes here, named on the line
        above (just the line when the log cannot be opened)."""
        sys.stderr.flush()
        try:
            log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            print(line, file=sys.stderr)
            return
        terminal = os.dup(2)
        os.dup2(log, 2)
        os.close(log)
        with os.fdopen(terminal, "w") as stream:
            stream.write(f"littlehelp: what is printed after this error goes to {self.path}\n{line}\n")


def _run_command(args: argparse.Namespace, overrides: Sequence[str]) -> Any:
    """`littlehelp train|eval|infer`: gin parsed, then the command's function called."""
    if args.multihost:
        import jax  # pylint: disable=import-outside-toplevel

        jax.distributed.initialize()
    target = launch.configure(args.command, args.gin_file, overrides, _search_paths(args))
    logging.info("Running %s", args.command)
    return target()


def _search_paths(args: argparse.Namespace) -> list[str]:
    """The `--gin_search_paths` folders, each flag comma-separated."""
    return [p for paths in args.gin_search_paths for p in paths.split(",") if p]


def _compile(args: argparse.Namespace, overrides: Sequence[str]) -> Any:
    """`littlehelp compile`: the run's train settings from gin, compiled for the target (`littlehelp.aot`).

    Before JAX starts, a CPU target gets its fake devices and a TPU topology keeps JAX on the CPU.
    """
    with launch.native_noise_dropped():
        from littlehelp import aot  # pylint: disable=import-outside-toplevel

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    mesh = aot.parse_mesh(args.mesh) if args.mesh else None
    count = aot.cpu_device_count(args.num_devices, mesh)
    if count and not args.topology:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
    settings = launch.configure("train", args.gin_file, overrides, _search_paths(args))(settings_only=True)
    return aot.compile_command(args.topology, count, mesh, args.memory_gb, args.out, settings)


def run() -> None:
    """Console-script entry point (`littlehelp`)."""
    main(debug_log=DebugLog())


if __name__ == "__main__":
    run()
