"""Studies: a paper's comparison declared once, run arm by arm and seed by seed, judged by one rule.

A `Study` declares its arms (trainer runs from gin files and bindings, or Python callables), its
metrics, its settings (default and --quick), and its claims, stated before anything runs: the metric,
the arm and baseline compared paired by seed, and the mean improvement the claim needs. `run_study`
runs every (arm, seed) in this process, reusing finished ones (a stopped study continues when the
same command is run again), measures the metrics, judges the claims with `littlehelp.stats`, and
writes `result.json` (every per-seed number, the claims and verdicts, provenance), `table.md` and
`plot.png` generated from it. Hand-written discussion lives in `notes.md` beside them; the harness
never writes it. `littlehelp study --list` names the studies; `littlehelp study NAME` runs one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from littlehelp import launch, provenance, stats
from littlehelp.errors import LittlehelpError

REPO = provenance.REPO
RESULTS = REPO / "results"
DOCS = REPO / "docs"
# Method packages register their studies as entry points of this group (pyproject.toml:
# `[project.entry-points."littlehelp.studies"]`, name = "module:STUDY"), so the core names none of them.
STUDY_ENTRY_POINTS = "littlehelp.studies"
Outcome = dict[str, Any]


class StudyError(LittlehelpError):
    """A study that cannot run as asked: an unknown name, a work folder built with other settings."""


@dataclasses.dataclass(frozen=True)
class Metric:
    """A number measured on each (arm, seed); `compute(context)` reads it (default: the arm's
    outcome["values"][name]). `arms` limits it to some arms (default: every per-seed arm).
    `higher_is_better=None` marks a descriptive number (a confounder): no claim may use it."""

    name: str
    label: str
    higher_is_better: bool | None
    compute: Callable[[ArmContext], float] | None = None
    arms: tuple[str, ...] | None = None
    digits: int = 4


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim in checkable form: `arm` beats `baseline` on `metric` by more than `threshold`, paired
    by seed (improvement = arm - baseline, sign-flipped when lower is better). With no baseline the
    arm's own value is the improvement. `separation` names two arms, the first known to be better,
    that the metric must tell apart that way, or the claim is untestable. `exploratory` marks a
    comparison reported beside the study's claims but not one of them: it is judged by the same rule
    in a Holm family of its own, so it cannot change a claim's verdict, and tables label it so."""

    name: str
    statement: str
    metric: str
    arm: str
    baseline: str | None = None
    threshold: float = 0.0
    separation: tuple[str, str] | None = None
    exploratory: bool = False


@dataclasses.dataclass(frozen=True)
class Arm:
    """One thing compared: a trainer run (`gin_files` + `bindings`) or a Python callable `run`
    returning a JSON-able outcome. `bindings` may be a function of the context. `per_seed=False`
    runs it once, shared by every seed (a teacher, a data set)."""

    name: str
    gin_files: tuple[str, ...] = ()
    bindings: Mapping[str, Any] | Callable[[ArmContext], Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    run: Callable[[ArmContext], Outcome] | None = None
    per_seed: bool = True
    label: str = ""

    @property
    def title(self) -> str:
        """How tables name the arm."""
        return self.label or self.name


@dataclasses.dataclass(frozen=True)
class Curve:
    """A per-(arm, seed) series the plot draws: `read(context)` gives (xs, ys); `arms` limits it to
    some arms (default: every per-seed arm)."""

    name: str
    label: str
    x_label: str
    read: Callable[[ArmContext], tuple[Sequence[float], Sequence[float]]]
    arms: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Study:
    """A paper's comparison (see the module docstring)."""

    name: str
    title: str
    description: str
    arms: tuple[Arm, ...]
    metrics: tuple[Metric, ...]
    claims: tuple[Claim, ...]
    seeds: int
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    quick: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    quick_seeds: int = 2
    curves: tuple[Curve, ...] = ()

    def __post_init__(self) -> None:
        arms, metrics = {a.name for a in self.arms}, {m.name: m for m in self.metrics}
        for claim in self.claims:
            named = [claim.arm, claim.baseline, *(claim.separation or ())]
            unknown = [a for a in named if a is not None and a not in arms]
            if unknown or claim.metric not in metrics:
                raise StudyError(
                    f"study {self.name}: claim {claim.name} names unknown "
                    f"{'arm ' + unknown[0] if unknown else 'metric ' + claim.metric}"
                )
            if metrics[claim.metric].higher_is_better is None:
                raise StudyError(
                    f"study {self.name}: claim {claim.name} uses {claim.metric}, a descriptive "
                    "metric with no better direction"
                )

    def arm(self, name: str) -> Arm:
        """The arm called `name`."""
        return next(a for a in self.arms if a.name == name)

    def measured_arms(self, measure: Metric | Curve) -> list[Arm]:
        """The per-seed arms a metric or curve is measured on."""
        return [a for a in self.arms if a.per_seed and (measure.arms is None or a.name in measure.arms)]


@dataclasses.dataclass(frozen=True)
class ArmContext:
    """What an arm's bindings, callable and metrics see: its seed, the settings, its folder, and the
    outcomes of the arms that ran before it."""

    study: Study
    arm: Arm
    seed: int
    settings: Mapping[str, Any]
    work_dir: Path

    def folder_of(self, arm: str, seed: int | None = None) -> Path:
        """The run folder of `arm` (this seed unless given; shared arms have one)."""
        if not self.study.arm(arm).per_seed:
            return self.work_dir / arm
        return self.work_dir / arm / f"seed_{self.seed if seed is None else seed}"

    @property
    def folder(self) -> Path:
        """This arm's run folder."""
        return self.folder_of(self.arm.name)

    def outcome(self, arm: str | None = None) -> Outcome:
        """The outcome of `arm` (default: this one) for this seed, read from its folder."""
        return _read_json(self.folder_of(arm or self.arm.name) / OUTCOME_FILE)

    def replace(self, arm: str) -> ArmContext:
        """The same seed and settings, seen from `arm`."""
        return dataclasses.replace(self, arm=self.study.arm(arm))


OUTCOME_FILE, MEASURED_FILE, STUDY_FILE = "outcome.json", "measured.json", "study.json"
COMPILATION_CACHE = "compilation_cache"  # under the work folder, shared by its runs


def registered() -> dict[str, importlib.metadata.EntryPoint]:
    """Study name -> its entry point, in the order the installed distributions declare them."""
    return {point.name: point for point in importlib.metadata.entry_points(group=STUDY_ENTRY_POINTS)}


def load(name: str) -> Study:
    """The study called `name`; one line naming the known ones otherwise."""
    studies = registered()
    if name not in studies:
        raise StudyError(f"no study called {name!r}; the studies are {', '.join(studies)}")
    return studies[name].load()


def list_studies() -> list[tuple[str, str]]:
    """(name, title) of every study."""
    return [(name, point.load().title) for name, point in registered().items()]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, value: Any) -> None:
    """Writes `value` to `path` atomically (a staging file, then a rename); nan and inf become null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(_finite(value), indent=1, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(staging, path)


def _finite(value: Any) -> Any:
    """`value` with every nan or infinite float, at any depth, replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """JSON for what `json` does not know: paths as text, numpy scalars and arrays as numbers."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# ----- running the arms -----


def trainer_outcome(result: launch.RunResult) -> Outcome:
    """A trainer arm's outcome: its run's final metrics, steps and training FLOPs (from metrics.jsonl)."""
    return {
        "folder": str(result.model_dir),
        "last_step": result.last_step,
        "train_metrics": result.train_metrics,
        "eval_metrics": result.eval_metrics,
        "train_flops": train_flops(result.model_dir),
    }


FLOPS_RECORD = "train/flops_per_step"


def flops_between(records: Sequence[Mapping[str, Any]], start: int, end: float) -> float:
    """FLOPs of steps start+1..end from metrics.jsonl records: each logged per-step count stands for
    the steps since the previous record (the first: since step 0), clipped to (start, end]."""
    total, previous = 0.0, 0
    for record in (r for r in records if FLOPS_RECORD in r):
        total += record[FLOPS_RECORD] * max(0, min(record["step"], end) - max(previous, start))
        previous = record["step"]
    return total


def train_flops(model_dir: Path, start: int = 0, end: float = math.inf) -> float:
    """Training FLOPs of a run's steps start+1..end (default: all), from its metrics.jsonl."""
    from littlehelp.metrics import METRICS_FILE_NAME, read_jsonl  # pylint: disable=import-outside-toplevel

    return flops_between(read_jsonl(Path(model_dir) / METRICS_FILE_NAME), start, end)


def run_arm(context: ArmContext) -> Outcome:
    """Runs one (arm, seed), or reads its outcome when it ran before; records its wall seconds."""
    path = context.folder / OUTCOME_FILE
    if path.is_file():
        return _read_json(path)
    arm, started = context.arm, time.perf_counter()
    if arm.run is not None:
        outcome = dict(arm.run(context))
    else:
        bindings = arm.bindings(context) if callable(arm.bindings) else arm.bindings
        outcome = trainer_outcome(
            launch.require_finished(launch.train(list(arm.gin_files), dict(bindings), context.folder))
        )
    outcome["seconds"] = time.perf_counter() - started
    _write_json(path, outcome)
    return outcome


class Progress:
    """Prints which run is next, the time spent and an estimate of the time left."""

    def __init__(self, study: str, total: int):
        self.study, self.total, self.done, self.started = study, total, 0, time.perf_counter()
        self.timed: list[float] = []

    def starting(self, context: ArmContext) -> None:
        """One line before a run: its arm and seed, elapsed time and the estimate."""
        elapsed = time.perf_counter() - self.started
        left = (
            ""
            if not self.timed
            else f", about {_duration(sum(self.timed) / len(self.timed) * (self.total - self.done))} left"
        )
        seed = f"seed {context.seed}" if context.arm.per_seed else "shared"
        print(
            f"[{self.study}] run {self.done + 1}/{self.total}: {context.arm.name}, {seed} "
            f"({_duration(elapsed)} elapsed{left})",
            flush=True,
        )

    def finished(self, outcome: Outcome, reused: bool) -> None:
        """Counts a run; runs done now (not reused) feed the estimate."""
        self.done += 1
        if not reused:
            self.timed.append(outcome["seconds"])


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_all(
    study: Study,
    seeds: Sequence[int],
    settings: Mapping[str, Any],
    work_dir: Path,
    keep: Path | None = None,
) -> None:
    """Every shared arm once, then every per-seed arm for each seed, in declaration order; with a
    progress folder `keep`, each finished per-seed run's records are kept there (`save_progress`)."""
    shared = [a for a in study.arms if not a.per_seed]
    seeded = [a for a in study.arms if a.per_seed]
    plan = [(a, seeds[0]) for a in shared] + [(a, s) for s in seeds for a in seeded]
    progress = Progress(study.name, len(plan))
    for arm, seed in plan:
        context = ArmContext(study, arm, seed, settings, work_dir)
        reused = (context.folder / OUTCOME_FILE).is_file()
        if not reused:
            progress.starting(context)
        outcome = run_arm(context)
        progress.finished(outcome, reused)
        if keep is not None and arm.per_seed:
            save_progress(context.folder, work_dir, keep)
        elif keep is not None:
            keep_shared_outcome(arm.name, outcome, keep)


# ----- progress kept across machines: each finished per-seed run's records, no checkpoints -----

PROGRESS_FILES = (OUTCOME_FILE, MEASURED_FILE, "*.jsonl")


def save_progress(folder: Path, work_dir: Path, progress: Path) -> None:
    """Copies a finished run's records (PROGRESS_FILES under its folder) to the same place under
    `progress`, with the work folder's study.json."""
    progress.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work_dir / STUDY_FILE, progress / STUDY_FILE)
    for pattern in PROGRESS_FILES:
        for path in folder.rglob(pattern):
            target = progress / path.relative_to(work_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


SHARED_FILE = "shared.json"  # in a progress folder: the shared runs' outcomes the kept runs were built on


def keep_shared_outcome(arm: str, outcome: Outcome, progress: Path) -> None:
    """Records a shared run's outcome in the progress folder, or, when one is recorded, refuses one that
    differs from it (timing aside): the kept runs were built on that one."""
    path = progress / SHARED_FILE
    kept = _read_json(path) if path.is_file() else {}
    values = _read_json_round_trip(_without_timing(outcome))
    if arm in kept and kept[arm] != values:
        raise StudyError(
            f"shared run {arm} came out otherwise than the one the runs kept in {progress} were built on "
            f"({kept[arm]} there, {values} now); start over without that folder"
        )
    _write_json(path, {**kept, arm: values})


# What differs between two runs of the same computation: wall time, speed, where it ran.
TIMING_KEYS = frozenset({"seconds", "folder", "steps_per_second", "tokens_per_second", "mfu", "data_wait_share"})


def _without_timing(value: Any) -> Any:
    """`value` with TIMING_KEYS left out at every level: what a rerun must reproduce."""
    if isinstance(value, Mapping):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    return value


def _read_json_round_trip(value: Any) -> Any:
    """`value` as `_write_json` then `_read_json` would give it back."""
    return json.loads(json.dumps(_finite(value), default=_jsonable))


def restore_progress(progress: Path, work_dir: Path) -> int:
    """Copies into `work_dir` each finished run `progress` holds that `work_dir` lacks (checking that
    both were made with the same study and settings); returns how many runs."""
    if not (progress / STUDY_FILE).is_file():
        return 0
    check_work_dir(work_dir, _read_json(progress / STUDY_FILE))
    taken = 0
    for outcome in sorted(progress.rglob(OUTCOME_FILE)):
        run = outcome.parent.relative_to(progress)
        if (work_dir / run / OUTCOME_FILE).is_file():
            continue
        shutil.copytree(outcome.parent, work_dir / run, dirs_exist_ok=True)
        taken += 1
    return taken


# ----- measuring and judging -----


def measure(context: ArmContext, metric: Metric) -> float:
    """`metric` of one (arm, seed), cached in the arm's measured.json."""
    path = context.folder / MEASURED_FILE
    measured = _read_json(path) if path.is_file() else {}
    if metric.name not in measured:
        value = metric.compute(context) if metric.compute else context.outcome()["values"][metric.name]
        measured = _read_json(path) if path.is_file() else {}  # `compute` may have measured others meanwhile
        measured[metric.name] = None if value is None else float(value)
        _write_json(path, measured)
    value = measured[metric.name]
    return math.nan if value is None else value


def measure_all(study: Study, seeds: Sequence[int], settings: Mapping[str, Any], work_dir: Path) -> dict:
    """{arm: {metric: [value per seed]}} for every measured (arm, metric)."""
    values: dict[str, dict[str, list[float]]] = {}
    for metric in study.metrics:
        for arm in study.measured_arms(metric):
            values.setdefault(arm.name, {})[metric.name] = [
                measure(ArmContext(study, arm, seed, settings, work_dir), metric) for seed in seeds
            ]
    return values


def improvements(claim: Claim, metric: Metric, values: Mapping[str, Mapping[str, list[float]]]) -> list[float]:
    """A claim's per-seed improvements: arm - baseline (or the arm's value), + when better."""
    sign = 1.0 if metric.higher_is_better else -1.0
    arm = values[claim.arm][claim.metric]
    base = values[claim.baseline][claim.metric] if claim.baseline else [0.0] * len(arm)
    return [sign * (a - b) for a, b in zip(arm, base)]


def judge_claims(study: Study, values: Mapping[str, Mapping[str, list[float]]]) -> list[dict[str, Any]]:
    """Each claim with its per-seed improvements, interval, p-values and generated verdict; the
    claims and the exploratory comparisons are two Holm families."""
    metrics = {m.name: m for m in study.metrics}
    rows = []
    separations: list[bool | None] = []
    for claim in study.claims:
        if claim.separation:
            better, worse = (values[a][claim.metric] for a in claim.separation)
            sign = 1.0 if metrics[claim.metric].higher_is_better else -1.0
            separations.append(stats.separated([sign * (a - b) for a, b in zip(better, worse)]))
        else:
            separations.append(None)
        rows.append(improvements(claim, metrics[claim.metric], values))
    verdicts: dict[int, stats.Verdict] = {}
    for exploratory in (False, True):
        family = [i for i, c in enumerate(study.claims) if c.exploratory == exploratory]
        verdicts.update(
            zip(
                family,
                stats.judge(
                    [rows[i] for i in family],
                    [study.claims[i].threshold for i in family],
                    [separations[i] for i in family],
                ),
            )
        )
    return [
        {
            **dataclasses.asdict(claim),
            "improvements": row,
            "separated": separated,
            "interval": dataclasses.asdict(v.interval),
            "p_value": v.p_value,
            "adjusted_p": v.adjusted_p,
            "verdict": v.verdict,
            "reason": v.reason,
        }
        for claim, row, separated, v in zip(
            study.claims, rows, separations, [verdicts[i] for i in range(len(study.claims))]
        )
    ]


def read_curves(study: Study, seeds: Sequence[int], settings: Mapping[str, Any], work_dir: Path) -> dict:
    """{curve: {arm: [{"x": [...], "y": [...]} per seed]}} for every per-seed arm."""
    curves: dict[str, dict[str, list[dict[str, list[float]]]]] = {}
    for curve in study.curves:
        for arm in study.measured_arms(curve):
            series = [curve.read(ArmContext(study, arm, seed, settings, work_dir)) for seed in seeds]
            curves.setdefault(curve.name, {})[arm.name] = [
                {"x": list(map(float, x)), "y": list(map(float, y))} for x, y in series
            ]
    return curves


# ----- the command -----


@dataclasses.dataclass(frozen=True)
class Request:
    """What `littlehelp study NAME` was asked: mode, seeds and folders (None: the defaults)."""

    name: str
    quick: bool = False
    seeds: int | None = None
    work_dir: str | None = None
    out: str | None = None
    progress: str | None = None


def folders(request: Request) -> tuple[Path, Path]:
    """(work folder, result folder). Quick runs use their own folders, never results/."""
    suffix = "-quick" if request.quick else ""
    work = Path(request.work_dir or REPO / "runs" / "studies" / f"{request.name}{suffix}").resolve()
    out = Path(request.out).resolve() if request.out else (work / "result" if request.quick else RESULTS / request.name)
    if request.quick and out.is_relative_to(RESULTS.resolve()):
        raise StudyError(f"--quick results may not go under {RESULTS} (committed results): choose another --out")
    return work, out


def check_work_dir(work_dir: Path, record: Mapping[str, Any]) -> None:
    """Refuses a work folder built by another study or with other settings; records them otherwise."""
    path = work_dir / STUDY_FILE
    if path.is_file():
        previous = _read_json(path)
        for key in sorted(set(previous) | set(record)):
            if previous.get(key) != record.get(key):
                raise StudyError(
                    f"work folder {work_dir} was built with other settings ({key}: "
                    f"{previous.get(key)!r} there, {record.get(key)!r} now); use another --work_dir"
                )
        return
    _write_json(path, record)


@contextlib.contextmanager
def compilation_cache(folder: Path) -> Iterator[None]:
    """Keeps compiled XLA programs in `folder` while a study runs (its arms compile the same steps
    again and again: every run of one model, every seed), unless the user set a cache of their own."""
    # pylint: disable=import-outside-toplevel
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cache

    if jax.config.values["jax_compilation_cache_dir"] is not None:
        yield
        return
    minimum = jax.config.values["jax_persistent_cache_min_compile_time_secs"]
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    cache.reset_cache()  # JAX decides once whether to use a cache: make it decide again, now and after
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", minimum)
        cache.reset_cache()


def resolve_settings(study: Study, request: Request) -> tuple[dict[str, Any], list[int]]:
    """(settings, seeds) of the request: the study's defaults, its quick overrides, --seeds."""
    settings = {**study.settings, **(study.quick if request.quick else {})}
    count = request.seeds or (study.quick_seeds if request.quick else study.seeds)
    if count < 1:
        raise StudyError(f"--seeds {count}: a study needs at least one seed")
    return settings, list(range(count))


def run_named(request: Request, command: str | None = None) -> dict[str, Any]:
    """`littlehelp study NAME`: the registered study `request.name`, run by `run_study`."""
    return run_study(load(request.name), request, command)


def run_study(study: Study, request: Request, command: str | None = None) -> dict[str, Any]:
    """Runs (or continues) `study` and writes its result.json, table.md and plot.png; returns the result."""
    settings, seeds = resolve_settings(study, request)
    work_dir, out_dir = folders(request)
    record = {"study": study.name, "quick": request.quick, "settings": settings}
    progress = Path(request.progress).resolve() if request.progress else None
    if progress is not None and (taken := restore_progress(progress, work_dir)):
        print(f"[{study.name}] took {taken} finished runs from {progress}", flush=True)
    check_work_dir(work_dir, record)
    git, before = provenance.git_state(), provenance.conditions()
    with compilation_cache(work_dir / COMPILATION_CACHE):
        run_all(study, seeds, settings, work_dir, progress)
        values = measure_all(study, seeds, settings, work_dir)
    result = {
        "study": study.name,
        "title": study.title,
        "description": study.description,
        "mode": "quick" if request.quick else "default",
        "settings": settings,
        "seeds": seeds,
        "arms": {a.name: a.title for a in study.arms if a.per_seed},
        "metrics": [
            {"name": m.name, "label": m.label, "higher_is_better": m.higher_is_better, "digits": m.digits}
            for m in study.metrics
        ],
        "values": values,
        "claims": judge_claims(study, values),
        "rule": stats.RULE,
        "curves": read_curves(study, seeds, settings, work_dir),
        "wall_seconds": _wall_seconds(study, seeds, settings, work_dir),
        "provenance": provenance.describe_run(command or _command_line(), before, provenance.conditions(), git),
    }
    write_result(result, out_dir)
    return result


def _wall_seconds(study: Study, seeds: Sequence[int], settings: Mapping[str, Any], work_dir: Path) -> dict:
    """{arm: [seconds per seed]} (shared arms: one number), as recorded when each ran."""
    seconds: dict[str, Any] = {}
    for arm in study.arms:
        contexts = [ArmContext(study, arm, s, settings, work_dir) for s in (seeds if arm.per_seed else seeds[:1])]
        values = [c.outcome()["seconds"] for c in contexts]
        seconds[arm.name] = values if arm.per_seed else values[0]
    return seconds


def _command_line() -> str:
    return shlex.join(["littlehelp", *sys.argv[1:]]) if sys.argv else "littlehelp study"


def write_result(result: Mapping[str, Any], out_dir: Path) -> None:
    """result.json, then table.md and plot.png generated from it; the docs' block for a default run."""
    from littlehelp import study_report  # pylint: disable=import-outside-toplevel (matplotlib is slow to load)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "result.json", result)
    (out_dir / "table.md").write_text(study_report.table(result, out_dir), encoding="utf-8")
    study_report.plot(result, out_dir / "plot.png")
    if out_dir == (RESULTS / result["study"]).resolve():
        study_report.update_docs(DOCS, result)
    print(f"[{result['study']}] wrote {out_dir}/result.json, table.md and plot.png", flush=True)
    for claim in result["claims"]:
        kind = "exploratory comparison" if claim.get("exploratory") else "claim"
        print(f"[{result['study']}] {kind} {claim['name']}: {claim['verdict']} ({claim['reason']})", flush=True)
