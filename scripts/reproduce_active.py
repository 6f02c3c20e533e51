"""Active-learning studies on real data -> results/active.md, results/active.json, plots.

    python scripts/reproduce_active.py            # default: 5 seeds, 10-20 minutes on 2 shared CPU cores
    python scripts/reproduce_active.py --seeds 20 --with_fashion_mnist --output_dir results/active_full

Three studies, each over several seeds (each seed also draws its own train/test split):
1. learning curves of every selector on digits, breast_cancer and wine (and, with
   --with_fashion_mnist, Fashion-MNIST with the CNN on a 10000-example pool when its Debian package
   is installed; an accelerator or an hour of CPU): area under the accuracy curve
   per selector and data set, and per-round win/tie/loss against random and against margin
   (two-sided paired t-test over seeds, p < 0.05);
2. large batches: Cluster-Margin vs margin vs random with batches of ~8-10% of the pool;
3. low-churn retraining: margin with distillation weight a towards the previous round's model;
   churn (share of test predictions that change per round) next to accuracy.
The learning-curve and churn plots need matplotlib; without it the tables are still written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from active import data, study  # noqa: E402

LARGE_BATCH = {"digits": study.Schedule(100, 100, 8), "breast_cancer": study.Schedule(30, 30, 8)}
LARGE_BATCH_SELECTORS = ("random", "margin", "cluster_margin")
CHURN_DATASETS = ("digits", "breast_cancer")
CHURN_ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.9)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per configuration (more: tighter tests)")
    parser.add_argument("--output_dir", default="results", help="where active.md/.json and the plots go")
    parser.add_argument("--selectors", nargs="+", default=list(study.DEFAULT_SELECTORS))
    parser.add_argument("--with_fashion_mnist", action="store_true",
                        help="add Fashion-MNIST (CNN) to the learning curves when it is installed")
    return parser.parse_args()


def log(curve: study.Curve) -> None:
    print(f"  {curve.dataset:14s} {curve.selector:17s} a={curve.churn_alpha:<4} seed {curve.seed}: "
          f"area {curve.area:.4f}", flush=True)


def run_studies(args: argparse.Namespace) -> dict[str, list[study.Curve]]:
    """The three studies' curves."""
    seeds = range(args.seeds)
    datasets = ["digits", "breast_cancer", "wine"]
    if args.with_fashion_mnist and "fashion_mnist" in data.available():
        datasets.append("fashion_mnist")
    print("1. learning curves", flush=True)
    curves = study.run_curves(datasets, args.selectors, seeds, progress=log)
    print("2. large batches", flush=True)
    large = study.run_curves(list(LARGE_BATCH), LARGE_BATCH_SELECTORS, seeds, LARGE_BATCH, progress=log)
    print("3. low churn", flush=True)
    churn = [c for alpha in CHURN_ALPHAS
             for c in study.run_curves(CHURN_DATASETS, ["margin"], seeds, churn_alpha=alpha, progress=log)]
    return {"curves": curves, "large_batch": large, "churn": churn}


def margin_verdict(curves: list[study.Curve], selectors: list[str]) -> str:
    """One paragraph, from the numbers, on whether margin matches or beats the other selectors."""
    table = study.area_table(curves)
    best = {d: max(row, key=lambda s: row[s][0]) for d, row in table.items()}
    margin_rank = {d: sorted(row, key=lambda s: -row[s][0]).index("margin") + 1 for d, row in table.items()}
    vs_margin = study.win_tie_loss(curves, "margin") if "margin" in selectors else {}
    beaten = {s: c["win"] for s, c in vs_margin.items() if c["win"] > c["loss"]}
    ranks = ", ".join(f"{d}: {margin_rank[d]} of {len(table[d])} (best: {best[d]})" for d in table)
    if beaten:
        others = ", ".join(f"{s} ({n} round wins)" for s, n in beaten.items())
        tail = f"Selectors with more round wins than losses against margin: {others}."
    else:
        tail = "No selector wins more (data set, round) comparisons against margin than it loses."
    return f"Margin's rank by mean area under the curve: {ranks}. {tail}"


def churn_table(curves: list[study.Curve]) -> str:
    summary = study.churn_summary(curves)
    lines = ["| data set | a | mean churn per round | final accuracy | area under curve |", "|---|---|---|---|---|"]
    for dataset, by_alpha in summary.items():
        for alpha, row in by_alpha.items():
            numbers = " | ".join(f"{row[key]:.4f}" for key in ("churn", "final_accuracy", "area"))
            lines.append(f"| {dataset} | {alpha} | {numbers} |")
    return "\n".join(lines)


def seconds_table(curves: list[study.Curve], selectors: list[str]) -> str:
    """Markdown: mean selection seconds per round, per data set and selector."""
    seconds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in curves:
        seconds[c.dataset][c.selector] += [r.selection_seconds for r in c.records[1:]]
    lines = ["| data set | " + " | ".join(selectors) + " |", "|---" * (len(selectors) + 1) + "|"]
    for dataset, row in seconds.items():
        lines.append(f"| {dataset} | " + " | ".join(f"{sum(row[s]) / len(row[s]):.4f}" for s in selectors) + " |")
    return "\n".join(lines)


def schedule_lines(schedules: dict[str, study.Schedule], datasets) -> str:
    return "; ".join(f"{d}: seed set {s.seed_size}, batch {s.batch_size}, {s.rounds} rounds"
                     for d, s in schedules.items() if d in datasets)


def write_markdown(path: Path, results: dict[str, list[study.Curve]], args: argparse.Namespace,
                   seconds: float, plots: list[str]) -> None:
    curves, large, churn = results["curves"], results["large_batch"], results["churn"]
    datasets = sorted({c.dataset for c in curves})
    missing = "" if "fashion_mnist" in datasets else (
        " Fashion-MNIST was not run (--with_fashion_mnist; it is "
        + ("installed here)." if "fashion_mnist" in data.available()
           else "not installed here: Debian package dataset-fashion-mnist)."))
    parts = [
        "# Active learning on real data", "",
        f"Generated by `python scripts/reproduce_active.py --seeds {args.seeds}` in {seconds / 60:.1f} minutes. "
        f"Model: {study.model_config_for(data.load('wine'))} (the CNN for Fashion-MNIST), retrained from the same "
        "initialisation every round. Each seed draws its own 70/30 stratified train/test split and seed set." + missing,
        "", f"Schedules: {schedule_lines(study.SCHEDULES, datasets)}.", "",
        "## Area under the accuracy curve (mean ± standard error over seeds; best in bold)", "",
        study.format_area_table(study.area_table(curves), args.selectors), "",
        "## Win/tie/loss per (data set, round), paired t-test over seeds, p < 0.05", "",
        study.format_win_tie_loss(study.win_tie_loss(curves, "random"), "random"), "",
        study.format_win_tie_loss(study.win_tie_loss(curves, "margin"), "margin"), "",
        "## Does margin's reported strength hold here?", "", margin_verdict(curves, args.selectors), "",
        "## Selection seconds per round (Pool assembly and selection; Cluster-Margin's clustering is in round 1)", "",
        seconds_table(curves, args.selectors), "",
        "## Large batches: Cluster-Margin vs margin", "",
        f"Schedules: {schedule_lines(LARGE_BATCH, LARGE_BATCH)}.", "",
        study.format_area_table(study.area_table(large), list(LARGE_BATCH_SELECTORS)), "",
        study.format_win_tie_loss(study.win_tie_loss(large, "margin"), "margin"), "",
        "## Low-churn retraining: loss = (1 - a) CE(y) + a CE(previous model), margin selector", "",
        churn_table(churn), "",
    ]
    parts += [f"![{name}]({name})" for name in plots] or ["(plots skipped: matplotlib is not installed)"]
    path.write_text("\n".join(parts) + "\n")


def mean_curves(curves: list[study.Curve]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """data set -> selector -> (labelled counts, mean accuracy over seeds)."""
    grouped: dict[tuple[str, str], list[study.Curve]] = defaultdict(list)
    for c in curves:
        grouped[(c.dataset, c.selector)].append(c)
    result: dict[str, dict] = defaultdict(dict)
    for (dataset, selector), group in grouped.items():
        counts = [r.labelled for r in group[0].records]
        means = [sum(c.records[i].accuracy for c in group) / len(group) for i in range(len(counts))]
        result[dataset][selector] = (counts, means)
    return dict(result)


def plot(results: dict[str, list[study.Curve]], output_dir: Path) -> list[str]:
    """Learning curves (one panel per data set, plus the large-batch runs) and the churn trade-off."""
    if importlib.util.find_spec("matplotlib") is None:
        return []
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    panels = {**mean_curves(results["curves"]),
              **{f"{d} (large batch)": v for d, v in mean_curves(results["large_batch"]).items()}}
    colours = {selector: f"C{i}" for i, selector in enumerate(study.DEFAULT_SELECTORS)}  # same in every panel
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (title, by_selector) in zip(axes.flat, panels.items()):
        for selector, (counts, means) in by_selector.items():
            axis.plot(counts, means, marker=".", label=selector, color=colours.get(selector))
        axis.set(title=title, xlabel="labelled examples", ylabel="test accuracy")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(output_dir / "active_curves.png", dpi=110)
    figure, axis = pyplot.subplots(figsize=(5, 3.6))
    for dataset, by_alpha in study.churn_summary(results["churn"]).items():
        alphas = sorted(by_alpha)
        churns, areas = [by_alpha[a]["churn"] for a in alphas], [by_alpha[a]["area"] for a in alphas]
        axis.plot(churns, areas, marker="o", label=dataset)
        for a in alphas:
            axis.annotate(f"a={a}", (by_alpha[a]["churn"], by_alpha[a]["area"]), fontsize=7)
    axis.set(xlabel="mean churn per round", ylabel="area under accuracy curve", title="low-churn retraining")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(output_dir / "active_churn.png", dpi=110)
    return ["active_curves.png", "active_churn.png"]


def main() -> None:
    args = parse_args()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = run_studies(args)
    seconds = time.perf_counter() - started
    with open(output_dir / "active.json", "w") as stream:
        json.dump({name: [c.to_json() for c in curves] for name, curves in results.items()}, stream)
    plots = plot(results, output_dir)
    write_markdown(output_dir / "active.md", results, args, seconds, plots)
    print(f"wrote {output_dir / 'active.md'} ({seconds / 60:.1f} minutes)")


if __name__ == "__main__":
    main()
