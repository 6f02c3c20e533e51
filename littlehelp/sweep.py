"""`littlehelp sweep`: a grid of gin values, one run folder per point, trained in turn, and a summary.

`--sweep='NAME=[v1, v2]'` (repeatable; a `--sweep_file` holds the same lines, `#` comments allowed)
names a binding and the gin literals it takes. The grid is the product of every axis; each point
trains into `MODEL_DIR/<its values>` (e.g. `BATCH_SIZE=8,peak_learning_rate=0.01`) with
`littlehelp.launch.train`, which reuses a folder that already holds its final step, otherwise lets
the trainer resume from the newest checkpoint, and refuses a folder built with other settings. Every
point's configuration (and its folder's launch.json) is checked before anything runs, so a misspelt
name or a folder left by another sweep fails at once. A point that fails on its own (a `LittlehelpError` such
as a diverged loss) is recorded as failed with its one-line reason and the sweep goes on (or stops there
with `stop_on_failure`); the sweep then fails once the summary is written. A rerun trains failed points
again (their cause may have been fixed) and records their new outcome. SIGTERM and Ctrl-C stop the sweep at
once. The summary (`sweep.json`, `sweep.md`, `sweep.png`) is read back from each folder's metrics.jsonl, so
a rerun that skips finished points still reports them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import math
import re
import shlex
import tokenize
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gin import config_parser

from littlehelp import config, launch, metrics
from littlehelp.config import ConfigError
from littlehelp.errors import LittlehelpError, PreemptedError
from littlehelp.launch import last_metrics

SUMMARY_NAME = "sweep"
# Folder names longer than this (bytes) are cut and end in a hash of the whole name.
MAX_FOLDER_NAME = 200
_OPENERS, _CLOSERS = "([{", ")]}"
FINISHED, FAILED, NOT_RUN = "finished", "failed", "not run"  # a point's status in the summary


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept binding: its gin name and the values it takes, each as gin source text."""

    name: str
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of the grid: its folder under MODEL_DIR and its value (gin text) per swept name."""

    folder: Path
    values: dict[str, str]


class SweepFailedError(LittlehelpError):
    """Some points of a sweep failed (the summary, written, says which and why)."""


class _ParseOnly(config_parser.ParserDelegate):
    """Lets gin's parser read references and macros without consulting gin's registry."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> str:
        return scoped_configurable_name

    def macro(self, macro_name: str) -> str:
        return macro_name


def parse_axis(text: str, source: str = "--sweep") -> Axis:
    """Parses `NAME=[v1, v2, ...]` into an `Axis`; raises `ConfigError` naming `source` otherwise."""
    name, separator, values = (part.strip() for part in text.partition("="))
    if not separator or not name or not (values.startswith("[") and values.endswith("]")):
        raise ConfigError(f"{source} '{text}' must look like NAME=[VALUE, ...]")
    if not _is_gin_list(values):
        raise ConfigError(f"{source} '{text}': {values} is not a gin list of literals")
    items = split_list(values)
    if not items:
        raise ConfigError(f"{source} '{text}' has no values")
    return Axis(name, items)


def _is_gin_list(text: str) -> bool:
    """Whether `text` is exactly one gin value, and a list."""
    try:
        statements = list(config_parser.ConfigParser(f"_ = {text}", _ParseOnly()))
    except (SyntaxError, ValueError, tokenize.TokenError):
        return False
    return (
        len(statements) == 1
        and isinstance(statements[0], config_parser.BindingStatement)
        and isinstance(statements[0].value, list)
    )


def split_list(text: str) -> tuple[str, ...]:
    """The source text of each top-level item of the gin list `text` (`'[1, (2, 3)]'` -> `('1', '(2, 3)')`)."""
    line_starts = [0, *(i + 1 for i, c in enumerate(text) if c == "\n")]

    def offset(position: tuple[int, int]) -> int:
        return line_starts[position[0] - 1] + position[1]

    items, depth, start = [], 0, 0
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.OP and token.string in _CLOSERS:
            depth -= 1
            if depth == 0:
                items.append(text[start : offset(token.start)])
        elif token.type == tokenize.OP and token.string == "," and depth == 1:
            items.append(text[start : offset(token.start)])
            start = offset(token.end)
        if token.type == tokenize.OP and token.string in _OPENERS:
            depth += 1
            if depth == 1:
                start = offset(token.end)
    return tuple(item.strip() for item in items if item.strip())


def read_axes(path: str | Path) -> list[Axis]:
    """The axes of a sweep file: one `NAME=[...]` per line; blank lines and `#` comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"--sweep_file '{path}' cannot be read: {error.strerror}") from None
    axes = []
    for number, line in enumerate(lines, start=1):
        text = _without_comment(line).strip()
        if text:
            axes.append(parse_axis(text, source=f"{path}:{number}"))
    return axes


def _without_comment(line: str) -> str:
    """`line` up to a `#` that is outside any quoted string."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#":
            return line[:i]
    return line


def gather_axes(sweeps: Sequence[str], sweep_files: Sequence[str]) -> list[Axis]:
    """The axes of the sweep files, then of the `--sweep` flags; each name may be swept only once."""
    axes = [axis for path in sweep_files for axis in read_axes(path)] + [parse_axis(s) for s in sweeps]
    if not axes:
        raise ConfigError("sweep: give at least one --sweep='NAME=[VALUE, ...]' or a --sweep_file")
    names = [axis.name for axis in axes]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"sweep: {', '.join(twice)} swept more than once")
    return axes


def expand_grid(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    return [
        dict(zip((a.name for a in axes), combination)) for combination in itertools.product(*(a.values for a in axes))
    ]


def short_names(names: Sequence[str]) -> dict[str, str]:
    """Each name's part after its last dot, or the whole name where two names share that part."""
    last = {name: name.rsplit(".", 1)[-1] for name in names}
    shared = {part for part in last.values() if list(last.values()).count(part) > 1}
    return {name: _safe(name if part in shared else part) for name, part in last.items()}


def _safe(text: str) -> str:
    """`text` with every run of characters outside [A-Za-z0-9._+-] turned into one `_`, ends trimmed."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"


def folder_name(values: Mapping[str, str], short: Mapping[str, str]) -> str:
    """A point's folder name: `short=value` pairs joined by commas, filesystem-safe and bounded in length."""
    name = ",".join(f"{short[k]}={_safe(v)}" for k, v in values.items())
    if len(name.encode()) <= MAX_FOLDER_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return name.encode()[: MAX_FOLDER_NAME - 13].decode(errors="ignore") + "," + digest


def grid_points(axes: Sequence[Axis], model_dir: str | Path) -> list[Point]:
    """The grid's points with their folders under `model_dir`; raises `ConfigError` if two share a folder."""
    short = short_names([a.name for a in axes])
    points = [Point(Path(model_dir) / folder_name(v, short), v) for v in expand_grid(axes)]
    folders = [p.folder.name for p in points]
    clashes = sorted({f for f in folders if folders.count(f) > 1})
    if clashes:
        raise ConfigError(f"sweep: several points would share the folder {clashes[0]} (repeated or look-alike values)")
    return points


def split_model_dir(overrides: Sequence[str]) -> tuple[str, dict[str, str]]:
    """(MODEL_DIR, the other overrides as {name: value}) from `NAME=VALUE` overrides; MODEL_DIR is required."""
    bindings: dict[str, str] = {}
    for override in overrides:
        name, _, value = override.partition("=")
        bindings[name.strip()] = value.strip()
    model_dir = bindings.pop("MODEL_DIR", "").strip("'\"")
    if not model_dir:
        raise ConfigError("sweep: set --gin.MODEL_DIR=DIR, the folder that holds one run folder per point")
    return model_dir, bindings


def point_bindings(point: Point, fixed: Mapping[str, str]) -> dict[str, str]:
    """The `--gin.` bindings of a point: the fixed overrides, then its swept values."""
    both = sorted(set(fixed) & set(point.values))
    if both:
        raise ConfigError(f"sweep: {', '.join(both)} is both swept and set by --gin.{both[0]}=...")
    return {**fixed, **point.values}


def check_point(point: Point, gin_files: Sequence[str], bindings: Mapping[str, str]) -> int:
    """Parses the gin files with the point's bindings as `littlehelp train` would; returns its final step.

    Raises `ConfigError` (naming the point) for any binding gin or the trainer refuses, or when the
    point's folder was built with other settings (`launch.check_launch_record`).
    """
    overrides = [f"MODEL_DIR={point.folder}", *(f"{k}={v}" for k, v in bindings.items())]
    try:
        launch.configure("train", gin_files, overrides)
        steps = config.bound_value("trainer.train.steps")
        launch.check_launch_record(point.folder, launch.launch_record(gin_files, bindings))
    except ConfigError as error:
        raise ConfigError(f"sweep point {point.folder.name}: {error.one_line()}") from None
    if not isinstance(steps, int):
        raise ConfigError(f"sweep point {point.folder.name}: trainer.train.steps is {steps!r}, not an int")
    return steps


def train_command(point: Point, gin_files: Sequence[str], bindings: Mapping[str, str]) -> str:
    """The complete `littlehelp train ...` shell command that runs `point`."""
    arguments = [
        "littlehelp",
        "train",
        *(f"--gin_file={f}" for f in gin_files),
        *(f"--gin.{k}={v}" for k, v in bindings.items()),
        f"--gin.MODEL_DIR={point.folder}",
    ]
    return shlex.join(arguments)


def train_points(
    points: Sequence[Point],
    bindings: Sequence[Mapping[str, str]],
    gin_files: Sequence[str],
    stop_on_failure: bool = False,
) -> dict[str, str | None]:
    """Trains the points in turn: {folder name: None when finished, else its failure's one line}.

    A point's own failure (a `LittlehelpError`: a diverged loss, a setting the trainer refuses, an
    unusable checkpoint) is printed and recorded, and the next point runs, or none with
    `stop_on_failure`; points after a stop are left out. SIGTERM (`PreemptedError`) and Ctrl-C stop the
    sweep at once. The points' W&B runs (`metrics.WandbTracker`) are grouped under the sweep's MODEL_DIR.
    """
    outcomes: dict[str, str | None] = {}
    with metrics.wandb_group(str(points[0].folder.parent) if points else ""):
        for number, (point, binding) in enumerate(zip(points, bindings), start=1):
            print(f"sweep point {number}/{len(points)}: {point.folder}", flush=True)
            try:
                launch.require_finished(launch.train(gin_files, binding, point.folder))
            except PreemptedError:
                raise
            except LittlehelpError as error:
                outcomes[point.folder.name] = error.one_line()
                print(f"  {point.folder.name}: failed: {error.one_line()}", flush=True)
                if stop_on_failure:
                    break
            else:
                outcomes[point.folder.name] = None
    return outcomes


def point_summary(point: Point, outcomes: Mapping[str, str | None]) -> dict[str, Any]:
    """A point's swept values, its status and error (from `outcomes`, as `train_points` returns them), and
    the final train and last eval metrics of its metrics.jsonl."""
    path = point.folder / metrics.METRICS_FILE_NAME
    records = metrics.read_jsonl(path) if path.is_file() else []
    train_step, train = last_metrics(records, "train")
    eval_step, evaluation = last_metrics(records, "eval")
    error = outcomes.get(point.folder.name)
    status = NOT_RUN if point.folder.name not in outcomes else FAILED if error else FINISHED
    return {
        "folder": point.folder.name,
        "values": dict(point.values),
        "status": status,
        "error": error,
        "step": train_step,
        "train": train,
        "eval_step": eval_step,
        "eval": evaluation,
    }


def plotted_loss(summaries: Sequence[Mapping[str, Any]]) -> str:
    """`"eval"` when every point has an eval loss, else `"train"`: the loss the plot shows."""
    return "eval" if all("loss" in s["eval"] for s in summaries) else "train"


def markdown_table(summaries: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    """The summary as a Markdown table: swept values, last train step, train and eval loss (and accuracy),
    and a status column (`failed: <reason>`, `not run`) when some point did not finish."""
    columns = [
        (kind, metric)
        for kind in ("train", "eval")
        for metric in ("loss", "accuracy")
        if any(metric in s[kind] for s in summaries)
    ]
    with_status = any(s["status"] != FINISHED for s in summaries)
    short = short_names(names)
    header = [
        *(short[n] for n in names),
        "step",
        *(f"{kind} {metric}" for kind, metric in columns),
        *(["status"] if with_status else []),
    ]
    rows = [
        [
            *(s["values"][n] for n in names),
            "-" if s["step"] is None else str(s["step"]),
            *(_number(s[kind].get(metric)) for kind, metric in columns),
            *([_status(s)] if with_status else []),
        ]
        for s in summaries
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"


def _status(summary: Mapping[str, Any]) -> str:
    """A point's status as a table cell: `finished`, `not run` or `failed: <reason>` (`|` escaped)."""
    status = f"{FAILED}: {summary['error']}" if summary["status"] == FAILED else summary["status"]
    return status.replace("|", "\\|")


def _number(value: float | None) -> str:
    """A metric as the table shows it: 4 significant digits, `-` when absent."""
    return "-" if value is None else f"{value:.4g}"


def _numeric(text: str) -> float | None:
    """The number a gin value text denotes (not a bool), or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def plot_summary(summaries: Sequence[Mapping[str, Any]], axes: Sequence[Axis], path: Path) -> None:
    """Draws each swept value against the plotted loss, one panel per swept name, into `path`.

    Points that share their other swept values are joined by a line.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    kind = plotted_loss(summaries)
    figure, panels = pyplot.subplots(1, len(axes), figsize=(4.5 * len(axes), 3.6), squeeze=False)
    for axis, panel in zip(axes, panels[0]):
        _draw_panel(panel, axis, [a.name for a in axes if a.name != axis.name], summaries, kind)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _draw_panel(
    panel: Any, axis: Axis, others: Sequence[str], summaries: Sequence[Mapping[str, Any]], kind: str
) -> None:
    """One panel: `axis`'s values (numbers, or categories in sweep order) against `kind` loss."""
    numbers = [n for n in (_numeric(v) for v in axis.values) if n is not None]
    numeric = len(numbers) == len(axis.values)
    position = dict(zip(axis.values, numbers if numeric else [float(i) for i in range(len(axis.values))]))
    groups: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    for s in summaries:
        loss = s[kind].get("loss")
        if loss is not None:
            key = tuple(s["values"][n] for n in others)
            groups.setdefault(key, []).append((position[s["values"][axis.name]], loss))
    short = short_names([axis.name, *others])
    for key, xy in groups.items():
        label = ", ".join(f"{short[n]}={v}" for n, v in zip(others, key)) or None
        panel.plot(*zip(*sorted(xy)), marker="o", label=label)
    if numeric and min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
        panel.set_xscale("log")
    if not numeric:
        panel.set_xticks(range(len(axis.values)), axis.values)
    panel.set_xlabel(axis.name)
    panel.set_ylabel(f"final {kind} loss")
    if others:
        panel.legend(fontsize="small")


def write_summary(
    model_dir: str | Path, points: Sequence[Point], axes: Sequence[Axis], outcomes: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    """Writes MODEL_DIR/sweep.json, sweep.md and sweep.png from the points' metrics and `outcomes` (as
    `train_points` returns them); returns the summaries. The plot shows finished points only."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    summaries = [point_summary(p, outcomes) for p in points]
    names = [a.name for a in axes]
    report = {"swept": {a.name: list(a.values) for a in axes}, "points": summaries}
    (model_dir / f"{SUMMARY_NAME}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (model_dir / f"{SUMMARY_NAME}.md").write_text(markdown_table(summaries, names), encoding="utf-8")
    plot_summary([s for s in summaries if s["status"] == FINISHED], axes, model_dir / f"{SUMMARY_NAME}.png")
    print(f"wrote {model_dir / SUMMARY_NAME}.json, .md and .png", flush=True)
    return summaries


def run_sweep(
    gin_files: Sequence[str],
    sweeps: Sequence[str],
    sweep_files: Sequence[str],
    overrides: Sequence[str],
    print_commands: bool = False,
    stop_on_failure: bool = False,
) -> list[dict[str, Any]] | list[str]:
    """Checks every point of the grid, then trains them in turn (`train_points`) and writes the summary.

    With `print_commands`, prints (and returns) one `littlehelp train` command per point instead and
    runs nothing. Otherwise returns the summaries written to MODEL_DIR/sweep.json, or raises
    `SweepFailedError` after writing them when a point failed.
    """
    model_dir, fixed = split_model_dir(overrides)
    axes = gather_axes(sweeps, sweep_files)
    points = grid_points(axes, model_dir)
    bindings = [point_bindings(p, fixed) for p in points]
    for point, binding in zip(points, bindings):
        check_point(point, gin_files, binding)
    if print_commands:
        commands = [train_command(p, gin_files, b) for p, b in zip(points, bindings)]
        print("\n".join(commands), flush=True)
        return commands
    outcomes = train_points(points, bindings, gin_files, stop_on_failure)
    summaries = write_summary(model_dir, points, axes, outcomes)
    failed = {name: error for name, error in outcomes.items() if error}
    if failed:
        raise SweepFailedError(
            failure_line(failed, len(points) - len(outcomes), len(points), Path(model_dir) / f"{SUMMARY_NAME}.md")
        )
    return summaries


def failure_line(failed: Mapping[str, str], not_run: int, total: int, table: Path) -> str:
    """The one line a sweep with failed points ends with: how many failed (or where it stopped), the
    first failure's folder and reason, and where the summary is."""
    first, error = next(iter(failed.items()))
    if not_run:
        return f"sweep stopped at {first}: {error}; {not_run} point{'s' * (not_run > 1)} not run; see {table}"
    return f"{len(failed)} of {total} sweep points failed ({first}: {error}); see {table}"
