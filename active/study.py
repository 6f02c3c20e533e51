"""Active-learning studies over data sets, selectors and seeds; CLI `python -m active.study`.

    python -m active.study --datasets digits wine --selectors random margin badge --seeds 5
    python -m active.study --datasets digits --selectors margin --churn_alphas 0 0.5 0.9

Each (data set, selector, seed) runs `active.loop.run` on that seed's train/test split. Summaries:
- area under the accuracy curve (`loop.area_under_curve`: mean accuracy over the labelled range);
- win/tie/loss of each selector against a baseline, counted per (data set, round) with a two-sided
  paired t-test over seeds at p < 0.05 (the protocol of Zhan et al. / arXiv 2210.03822);
- churn next to accuracy for each distillation weight a (low-churn retraining).

Unknown data sets or selectors (all of them, with "did you mean"), a bad schedule, or one that
does not fit a data set's pool are refused before the first run: one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from active import data, loop, models, validation
from active.selectors import SELECTORS
from littlehelp.errors import LittlehelpError


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Labelling schedule for one data set: seed set, per-round batch, rounds."""

    seed_size: int
    batch_size: int
    rounds: int

    def __post_init__(self):
        validation.check_schedule(self.seed_size, self.batch_size, self.rounds)


# Small batches relative to each pool (digits 1257, breast_cancer 398, wine 124, iris 105 train
# examples); Fashion-MNIST uses the CNN.
SCHEDULES = {
    "digits": Schedule(20, 20, 10),
    "breast_cancer": Schedule(10, 10, 10),
    "wine": Schedule(6, 6, 8),
    "iris": Schedule(6, 6, 8),
    "fashion_mnist": Schedule(100, 100, 10),
}
# Pool and test-set caps (train, test) per data set, so a study stays within CPU minutes.
SIZE_LIMITS = {"fashion_mnist": (10_000, 2_000)}
DEFAULT_SELECTORS = ("random", "margin", "entropy", "least_confidence", "coreset", "badge", "cluster_margin", "iwes")


@dataclasses.dataclass(frozen=True)
class Curve:
    """One loop run."""

    dataset: str
    selector: str
    seed: int
    churn_alpha: float
    schedule: Schedule
    records: list[loop.RoundRecord]

    @property
    def area(self) -> float:
        return loop.area_under_curve(self.records)

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "selector": self.selector, "seed": self.seed,
                "churn_alpha": self.churn_alpha, "schedule": dataclasses.asdict(self.schedule),
                "area": self.area, "records": loop.records_as_dicts(self.records)}


def model_config_for(dataset: data.LabelledData) -> models.ModelConfig:
    """The MLP for tables, the CNN for images."""
    if dataset.image_shape is not None:
        return models.ModelConfig(hidden=(128,), image_shape=dataset.image_shape, steps=500, batch_size=64)
    return models.ModelConfig()


def load(name: str, seed: int) -> data.LabelledData:
    """Data set `name` split with `seed`, capped at its `SIZE_LIMITS`."""
    max_train, max_test = SIZE_LIMITS.get(name, (None, None))
    return data.load(name, seed, max_train=max_train, max_test=max_test)


def check_plan(datasets: Sequence[str], selectors: Sequence[str], schedules: dict[str, Schedule]) -> None:
    """Refuses unknown data sets or selectors (every one at once), a data set without a schedule, or
    a schedule that labels more than its data set's pool (the pool's size does not depend on the seed)."""
    validation.check_known("data set", datasets, data.available(), known_as="available here")
    validation.check_known("selector", selectors, SELECTORS)
    missing = [name for name in datasets if name not in schedules]
    if missing:
        raise validation.SelectionInputError(f"schedules has no entry for data set(s) {missing}")
    for name in datasets:
        schedule = schedules[name]
        validation.check_schedule_fits(schedule.seed_size, schedule.batch_size, schedule.rounds,
                                       len(load(name, 0).train_labels), f"the {name} pool")


def run_curves(datasets: Sequence[str], selectors: Sequence[str], seeds: Sequence[int],
               schedules: dict[str, Schedule] | None = None, churn_alpha: float = 0.0,
               progress=None) -> list[Curve]:
    """One `loop.run` per (data set, seed, selector); the split of each data set depends on the seed.

    `check_plan` refuses bad names or schedules before the first run.
    """
    schedules = schedules or SCHEDULES
    check_plan(datasets, selectors, schedules)
    curves = []
    for name in datasets:
        for seed in seeds:
            dataset = load(name, seed)
            schedule = schedules[name]
            for selector in selectors:
                records = loop.run(dataset.train_features, dataset.train_labels, dataset.test_features,
                                   dataset.test_labels, selector=selector, seed=seed, churn_alpha=churn_alpha,
                                   model_config=model_config_for(dataset), num_classes=dataset.num_classes,
                                   **dataclasses.asdict(schedule))
                curves.append(Curve(name, selector, seed, churn_alpha, schedule, records))
                if progress:
                    progress(curves[-1])
    return curves


def _grouped(curves: Sequence[Curve]) -> dict[tuple[str, str], list[Curve]]:
    """(data set, selector) -> curves sorted by seed."""
    groups: dict[tuple[str, str], list[Curve]] = defaultdict(list)
    for curve in curves:
        groups[(curve.dataset, curve.selector)].append(curve)
    return {key: sorted(value, key=lambda c: c.seed) for key, value in groups.items()}


def area_table(curves: Sequence[Curve]) -> dict[str, dict[str, tuple[float, float]]]:
    """data set -> selector -> (mean, standard error) of the area under the accuracy curve."""
    table: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for (dataset, selector), group in _grouped(curves).items():
        areas = np.array([c.area for c in group])
        sem = float(areas.std(ddof=1) / np.sqrt(len(areas))) if len(areas) > 1 else 0.0
        table[dataset][selector] = (float(areas.mean()), sem)
    return dict(table)


def compare(a: np.ndarray, b: np.ndarray, p_value: float = 0.05) -> str:
    """'win', 'tie' or 'loss' of paired samples a vs b (two-sided paired t-test)."""
    differences = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if len(differences) < 2 or np.allclose(differences, differences[0]) and differences[0] == 0:
        return "tie"
    if np.allclose(differences, differences[0]):  # constant non-zero difference: t is infinite
        return "win" if differences[0] > 0 else "loss"
    p = stats.ttest_rel(a, b).pvalue
    if p >= p_value:
        return "tie"
    return "win" if differences.mean() > 0 else "loss"


def win_tie_loss(curves: Sequence[Curve], baseline: str, p_value: float = 0.05) -> dict[str, dict[str, int]]:
    """selector -> {'win', 'tie', 'loss'} counts against `baseline` over every (data set, round >= 1)."""
    groups = _grouped(curves)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"win": 0, "tie": 0, "loss": 0})
    for (dataset, selector), group in groups.items():
        reference = groups.get((dataset, baseline))
        if selector == baseline or reference is None:
            continue
        if [c.seed for c in group] != [c.seed for c in reference]:
            raise ValueError(f"{dataset}: {selector} and {baseline} were run on different seeds")
        for round_index in range(1, len(group[0].records)):
            ours = np.array([c.records[round_index].accuracy for c in group])
            theirs = np.array([c.records[round_index].accuracy for c in reference])
            counts[selector][compare(ours, theirs, p_value)] += 1
    return {selector: dict(value) for selector, value in counts.items()}


def churn_summary(curves: Sequence[Curve]) -> dict[str, dict[float, dict[str, float]]]:
    """data set -> churn_alpha -> mean churn (rounds >= 1), mean final accuracy, mean area."""
    groups: dict[tuple[str, float], list[Curve]] = defaultdict(list)
    for curve in curves:
        groups[(curve.dataset, curve.churn_alpha)].append(curve)
    summary: dict[str, dict[float, dict[str, float]]] = defaultdict(dict)
    for (dataset, alpha), group in sorted(groups.items()):
        summary[dataset][alpha] = {
            "churn": float(np.mean([r.churn for c in group for r in c.records[1:]])),
            "final_accuracy": float(np.mean([c.records[-1].accuracy for c in group])),
            "area": float(np.mean([c.area for c in group])),
        }
    return dict(summary)


def format_area_table(table: dict[str, dict[str, tuple[float, float]]], selectors: Sequence[str]) -> str:
    """Markdown: one row per data set, one column per selector, best mean in bold."""
    lines = ["| data set | " + " | ".join(selectors) + " |", "|---" * (len(selectors) + 1) + "|"]
    for dataset, row in table.items():
        best = max(row[s][0] for s in selectors if s in row)
        cells = []
        for selector in selectors:
            mean, sem = row.get(selector, (float("nan"), 0.0))
            text = f"{mean:.4f} ± {sem:.4f}"
            cells.append(f"**{text}**" if mean == best else text)
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_win_tie_loss(counts: dict[str, dict[str, int]], baseline: str) -> str:
    """Markdown: selector, wins/ties/losses against `baseline`."""
    lines = [f"| selector | vs {baseline}: win | tie | loss |", "|---|---|---|---|"]
    for selector, c in counts.items():
        lines.append(f"| {selector} | {c['win']} | {c['tie']} | {c['loss']} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m active.study", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer", "wine"],
                        help=f"available here: {', '.join(data.available())}")
    parser.add_argument("--selectors", nargs="+", default=list(DEFAULT_SELECTORS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--seed_size", type=int, help="override every data set's seed-set size")
    parser.add_argument("--batch_size", type=int, help="override every data set's batch size")
    parser.add_argument("--rounds", type=int, help="override every data set's number of rounds")
    parser.add_argument("--churn_alphas", type=float, nargs="+", default=[0.0],
                        help="distillation weights towards the previous round's model")
    parser.add_argument("--output", help="write every curve as JSON here")
    return parser.parse_args(argv)


def schedules_from(args: argparse.Namespace) -> dict[str, Schedule]:
    """`SCHEDULES` with the command line's overrides applied."""
    overrides = {k: v for k in ("seed_size", "batch_size", "rounds") if (v := getattr(args, k)) is not None}
    return {name: dataclasses.replace(schedule, **overrides) for name, schedule in SCHEDULES.items()}


def main(argv: Sequence[str] | None = None) -> list[Curve]:
    """Runs the study the command line describes, prints its tables, returns the curves.

    A `LittlehelpError` (bad arguments are refused so, before any run) is printed as one line on
    stderr and exits with its `exit_code`.
    """
    args = parse_args(argv)
    try:
        return run_study(args)
    except LittlehelpError as error:
        print(f"active.study: error: {error.one_line()}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None


def run_study(args: argparse.Namespace) -> list[Curve]:
    """The study `args` describe: its curves, with the tables printed and the curves written."""
    validation.check_integer("seeds", args.seeds, 1)
    schedules = schedules_from(args)
    curves = [curve for alpha in args.churn_alphas
              for curve in run_curves(args.datasets, args.selectors, range(args.seeds), schedules, alpha)]
    plain = [c for c in curves if c.churn_alpha == args.churn_alphas[0]]
    print(format_area_table(area_table(plain), args.selectors))
    for baseline in ("random", "margin"):
        if baseline in args.selectors and len(args.selectors) > 1:
            print("\n" + format_win_tie_loss(win_tie_loss(plain, baseline), baseline))
    if len(args.churn_alphas) > 1:
        print("\n" + json.dumps(churn_summary(curves), indent=1))
    if args.output:
        with open(args.output, "w") as stream:
            json.dump([c.to_json() for c in curves], stream)
    return curves


if __name__ == "__main__":
    main(sys.argv[1:])
