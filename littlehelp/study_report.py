"""A study's table.md, plot.png and docs block, each generated from its result.json alone.

The documentation shows each study's claims in its method's page (docs/methods/), between
`<!-- study:NAME -->` and `<!-- /study:NAME -->`; `update_docs` rewrites that block from the result, so
no table of a paper is copied by hand.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from littlehelp import stats

Result = Mapping[str, Any]
PLOT_COLUMNS = 3
EXPLORATORY = (
    "Rows marked (exploratory) are comparisons reported beside the claims, not claims: the same rule "
    "in a Holm family of their own, so they cannot change a claim's verdict."
)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _values(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def mean_cell(values: Sequence[float | None], digits: int) -> str:
    """`mean ± s.e.` over seeds (the mean alone for one seed; `-` when a seed has no value)."""
    interval = stats.t_interval(_values(values))
    if interval.n == 1 or math.isnan(interval.se):
        return _number(interval.mean, digits)
    return f"{_number(interval.mean, digits)} ± {_number(interval.se, 2)}"


def claims_table(result: Result) -> list[str]:
    """One row per claim: what it states, the comparison, the improvement and its interval, the verdict
    (marked exploratory for an exploratory comparison)."""
    lines = [
        "| claim | metric | comparison | needs | improvement (mean ± s.e.) | interval | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {m["name"]: m["label"] for m in result["metrics"]}
    for claim in result["claims"]:
        interval = claim["interval"]
        against = f"{claim['arm']} vs {claim['baseline']}" if claim["baseline"] else claim["arm"]
        shown = (
            "-"
            if interval["low"] is None
            else f"[{_number(interval['low'], 3)}, {_number(interval['high'], 3)}] at {interval['confidence']:.3g}"
        )
        marker = " (exploratory)" if claim.get("exploratory") else ""
        lines.append(
            f"| {claim['statement']} | {labels[claim['metric']]} | {against} | > {claim['threshold']:g} | "
            f"{mean_cell(claim['improvements'], 3)} | {shown} | **{claim['verdict']}**{marker} |"
        )
    return lines


def values_table(result: Result) -> list[str]:
    """One row per arm, one column per metric: mean ± s.e. over seeds, and the arm's wall time."""
    metrics = result["metrics"]
    lines = [
        "| arm | " + " | ".join(m["label"] for m in metrics) + " | wall time per seed |",
        "|---|" + "---|" * (len(metrics) + 1),
    ]
    for arm, title in result["arms"].items():
        cells = [
            mean_cell(result["values"][arm][m["name"]], m["digits"])
            if m["name"] in result["values"].get(arm, {})
            else ""
            for m in metrics
        ]
        seconds = result["wall_seconds"][arm]
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {np.mean(seconds):.0f} s |")
    return lines


def provenance_lines(result: Result) -> list[str]:
    """Where the numbers came from: command, commit, date, versions, machine, load and matmul rate."""
    where = result["provenance"]
    versions = ", ".join(f"{k} {v}" for k, v in where["versions"].items() if v)
    machine = where["machine"]
    before, after = where["before"], where["after"]
    return [
        f"- command: `{where['command']}` ({result['mode']} settings, seeds {len(result['seeds'])})",
        f"- commit {where['commit']}{' (with uncommitted changes)' if where['dirty'] else ''}, {where['date']}",
        f"- {versions}",
        f"- {machine['cpu']}, {machine['cpu_count']} cores, {machine['accelerator']}",
        f"- load average before {before['load']['load_average']}, after {after['load']['load_average']}; "
        f"float32 matmul {before['matmul_flops_per_second'] / 1e9:.0f} GFLOP/s before, "
        f"{after['matmul_flops_per_second'] / 1e9:.0f} after",
    ]


def table(result: Result, out_dir: Path) -> str:
    """table.md: the claims and verdicts, the rule, every arm's metrics, provenance, the plot."""
    exploratory = [EXPLORATORY, ""] if any(c.get("exploratory") for c in result["claims"]) else []
    parts = [
        f"# {result['title']}",
        "",
        "Generated from result.json by the study harness; do not edit.",
        "",
        result["description"],
        "",
        "## Claims, stated before the run",
        "",
        *claims_table(result),
        "",
        f"Rule: {result['rule']}",
        "",
        *exploratory,
        f"## Metrics (mean ± s.e. over {len(result['seeds'])} seeds)",
        "",
        *values_table(result),
        "",
        "## Provenance",
        "",
        *provenance_lines(result),
        "",
        "![the study](plot.png)",
        "",
    ]
    if (out_dir / "notes.md").is_file():
        parts += ["Discussion: [notes.md](notes.md).", ""]
    return "\n".join(parts)


def study_block(result: Result) -> str:
    """A docs page's block for a study: its claims table and where the full table is."""
    name = result["study"]
    return "\n".join(
        [
            f"<!-- study:{name} -->",
            f"**{result['title']}** ({len(result['seeds'])} seeds, commit "
            f"{(result['provenance']['commit'] or '?')[:7]}; full table: `results/{name}/table.md`)",
            "",
            *claims_table(result),
            f"<!-- /study:{name} -->",
        ]
    )


def block_pattern(name: str) -> re.Pattern[str]:
    """The study's block (markers included) in a page."""
    return re.compile(rf"<!-- study:{re.escape(name)} -->.*?<!-- /study:{re.escape(name)} -->", re.S)


def docs_pages(docs: Path) -> list[Path]:
    """The Markdown pages under `docs`, build outputs (folders starting with "_") left out."""
    pages = docs.rglob("*.md")
    return sorted(p for p in pages if not any(part.startswith("_") for part in p.relative_to(docs).parts))


def update_docs(docs: Path, result: Result) -> list[Path]:
    """Rewrites the study's block in every page under `docs` that has one; returns those pages."""
    pattern, updated = block_pattern(result["study"]), []
    for page in docs_pages(docs):
        text = page.read_text(encoding="utf-8")
        if pattern.search(text):
            page.write_text(pattern.sub(lambda _: study_block(result), text), encoding="utf-8")
            updated.append(page)
    return updated


def plot(result: Result, path: Path) -> None:
    """One panel per curve (mean over seeds, each seed faint), then one per metric (seeds and mean)."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    curves, metrics = result["curves"], result["metrics"]
    count = len(curves) + len(metrics)
    columns = min(count, PLOT_COLUMNS)
    rows = -(-count // columns)
    figure, panels = pyplot.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False)
    flat = list(panels.flat)
    for panel, (name, by_arm) in zip(flat, curves.items()):
        _draw_curves(panel, name, by_arm, result["arms"])
    for panel, metric in zip(flat[len(curves) :], metrics):
        _draw_metric(panel, metric, result)
    for panel in flat[count:]:
        panel.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _nan_mean(values: Any) -> Any:
    """The mean over the first axis without the nan values (nan, without a warning, where all are)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0)


def _draw_curves(
    panel: Any, name: str, by_arm: Mapping[str, Sequence[Mapping[str, list]]], titles: Mapping[str, str]
) -> None:
    for colour, (arm, series) in enumerate(by_arm.items()):
        for seed in series:
            panel.plot(seed["x"], _values(seed["y"]), color=f"C{colour}", alpha=0.25, linewidth=0.7)
        length = min(len(s["y"]) for s in series)
        mean = _nan_mean([_values(s["y"][:length]) for s in series])
        panel.plot(series[0]["x"][:length], mean, color=f"C{colour}", label=titles.get(arm, arm))
    panel.set_title(name, fontsize=9)
    panel.legend(fontsize=7)


def _draw_metric(panel: Any, metric: Mapping[str, Any], result: Result) -> None:
    arms = [a for a in result["arms"] if metric["name"] in result["values"].get(a, {})]
    for x, arm in enumerate(arms):
        values = np.array(_values(result["values"][arm][metric["name"]]))
        panel.scatter([x] * len(values), values, color=f"C{x}", alpha=0.5, s=12)
        panel.errorbar(
            [x + 0.15],
            [_nan_mean(values)],
            yerr=[stats.t_interval(values.tolist()).se if len(values) > 1 else 0],
            color="black",
            fmt="o",
            markersize=3,
            capsize=3,
        )
    panel.set_xticks(range(len(arms)), [result["arms"][a] for a in arms], rotation=30, ha="right", fontsize=7)
    arrow = {True: "higher is better", False: "lower is better", None: "descriptive"}[metric["higher_is_better"]]
    panel.set_title(f"{metric['label']} ({arrow})", fontsize=9)
