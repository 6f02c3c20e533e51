"""`littlehelp report`: a run folder's learning curves as a plot, and a few lines on what the run learned.

Everything is read back from the folder (metrics.jsonl, and inference.jsonl when `infer` has run), so a
report can be made of any run, finished or not: `littlehelp report --model_dir=runs/demo` writes
`runs/demo/curves.png` and prints the summary.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from littlehelp.metrics import METRICS_FILE_NAME, read_jsonl
from littlehelp.runs import RunFolderError

CURVES_NAME = "curves.png"
SHOWN_EXAMPLES = 4


def series(records: Sequence[Mapping[str, Any]], name: str) -> list[tuple[int, float]]:
    """[(step, value)] of metric `name` (e.g. "eval/loss") over the records that hold it."""
    return [(int(r["step"]), float(r[name])) for r in records if name in r]


def summary_lines(records: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, str]]) -> list[str]:
    """What the run did: its steps, losses (with perplexity), speed, and a few decoded examples."""
    train, evaluation = series(records, "train/loss"), series(records, "eval/loss")
    lines = [f"steps: {train[-1][0]}" if train else "steps: none logged yet"]
    if train:
        (first, start), (last, end) = train[0], train[-1]
        lines.append(f"train loss: {start:.3f} at step {first} -> {end:.3f} at step {last}")
    for step, loss in evaluation:
        lines.append(f"eval loss at step {step}: {loss:.3f} (perplexity {math.exp(loss):.1f})")
    rates = [v for _, v in series(records, "train/tokens_per_second")]
    waits = [v for _, v in series(records, "train/data_wait_share")]
    if rates:
        speed = f"median {statistics.median(rates):,.0f} tokens/s"
        lines.append(speed + (f", {statistics.median(waits):.1%} of the time waiting for data" if waits else ""))
    for record in predictions[:SHOWN_EXAMPLES]:
        source = record.get("input", record.get("prompt", ""))
        lines += [f"input:      {_clip(source)}", f"target:     {_clip(record.get('target', ''))}"]
        lines.append(f"prediction: {_clip(record['prediction'])}")
    return lines


def _clip(text: str, width: int = 100) -> str:
    """`text` on one line, cut to `width` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def plot_curves(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Train and eval loss against the step, into `path`."""
    import matplotlib  # pylint: disable=import-outside-toplevel (slow to import)

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    figure, panel = pyplot.subplots(figsize=(6, 4))
    for name, style in (("train/loss", "-"), ("eval/loss", "o-")):
        points = series(records, name)
        if points:
            panel.plot(*zip(*points), style, label=name)
    panel.set_xlabel("step")
    panel.set_ylabel("loss (nats per token)")
    panel.legend()
    panel.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def report(model_dir: str | Path) -> list[str]:
    """Writes MODEL_DIR/curves.png and prints (and returns) the summary lines of the run folder."""
    folder = Path(model_dir)
    metrics_file = folder / METRICS_FILE_NAME
    if not metrics_file.is_file():
        raise RunFolderError(f"report: {folder} has no metrics.jsonl: train it first (littlehelp train ...)")
    records = read_jsonl(metrics_file)
    predictions_file = folder / "inference.jsonl"
    predictions = read_jsonl(predictions_file) if predictions_file.is_file() else []
    plot_curves(records, folder / CURVES_NAME)
    lines = [*summary_lines(records, predictions), f"learning curves: {folder / CURVES_NAME}"]
    print("\n".join(lines), flush=True)
    return lines
