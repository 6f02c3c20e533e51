"""Live active learning for word segmentation (arXiv 1907.00038) -> results/live_al.{json,md,png}.

    python scripts/reproduce_live_al.py            # default: 5 seeds, ~10-20 minutes on 2 shared CPU cores
    python scripts/reproduce_live_al.py --quick    # 3 seeds, tiny budgets, under a minute
    python scripts/reproduce_live_al.py --aggregation min --name live_al_min   # min-margin ranking

English with its spaces removed is segmented by a character tagger (`active.tagger`). Two streams
annotate concurrently from one pool (`active.live`): one ranked by aggregated token margin, one
random; each retrains its own tagger, warm-started, every `--batch_size` sentences. The pool holds
lines of Shakespeare's plays (training works) until the shift, then docstring sentences of the
standard library (training modules). Word-start F1 is measured on held-out plays and held-out
modules' docstrings after every update; the tables give it at several amounts of annotation effort
(characters annotated by the stream), mean ± standard error over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from active import live, sequence, tagger  # noqa: E402
from littlehelp import metrics  # noqa: E402

DATA_SEED = 20260  # draws the pools and test sets, the same for every seed
EFFORT_FRACTIONS = (0.125, 0.25, 0.5, 1.0)  # of each phase's characters, where the tables read F1


@dataclasses.dataclass(frozen=True)
class Settings:
    """One mode's sizes."""

    seeds: int
    pool_size: int
    test_size: int
    config: live.LiveConfig


def settings(args: argparse.Namespace) -> Settings:
    """The quick or default mode's sizes, with the command line's aggregation and batch."""
    if args.quick:
        config = live.LiveConfig(batch_size=args.batch_size, chars_before_shift=1200, chars_after_shift=1200,
                                 aggregation=args.aggregation, tagger=tagger.TaggerConfig(channels=32, steps=30))
        return Settings(args.seeds or 3, 400, 150, config)
    config = live.LiveConfig(batch_size=args.batch_size, chars_before_shift=6000, chars_after_shift=6000,
                             aggregation=args.aggregation, tagger=tagger.TaggerConfig(channels=48, steps=80))
    return Settings(args.seeds or 5, 3000, 400, config)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds and tiny budgets (under a minute)")
    parser.add_argument("--seeds", type=int, default=0, help="seeds (default 5; 3 with --quick)")
    parser.add_argument("--aggregation", default="mean", choices=sequence.AGGREGATIONS,
                        help="how the ranked stream aggregates token margins per sentence")
    parser.add_argument("--batch_size", type=int, default=10, help="sentences per stream between model updates")
    parser.add_argument("--output_dir", default="results", help="where NAME.{json,md,png} go")
    parser.add_argument("--name", default="live_al", help="file name of the outputs, without suffix")
    return parser.parse_args()


def sample(sentences: list[list[str]], count: int, rng: np.random.Generator) -> sequence.SentenceSet:
    """`count` sentences (all of them when fewer), drawn without replacement and encoded."""
    chosen = rng.choice(len(sentences), min(count, len(sentences)), replace=False)
    return sequence.encode([sentences[i] for i in sorted(chosen)])


def load_data(pool_size: int, test_size: int) -> tuple[tuple, tuple]:
    """((plays pool, docstrings pool), (plays test, docstrings test)): pools from training works and
    modules, tests from the held-out ones."""
    rng = np.random.default_rng(DATA_SEED)
    pools = (sample(sequence.play_sentences("train"), pool_size, rng),
             sample(sequence.docstring_sentences("train"), pool_size, rng))
    tests = (sample(sequence.play_sentences("validation"), test_size, rng),
             sample(sequence.docstring_sentences("validation"), test_size, rng))
    return pools, tests


def f1_at(run: live.LiveRun, stream: str, chars: int, field: str) -> float:
    """`field` F1 of the stream's latest model trained on at most `chars` annotated characters."""
    values = [getattr(v, field) for v in run.evaluations if v.stream == stream and v.chars <= chars]
    return values[-1] if values else math.nan


def effort_points(config: live.LiveConfig) -> list[tuple[str, int, int, str]]:
    """(phase, stream clock, characters since the phase began, F1 field) where the tables read the curves."""
    shift, after = config.chars_before_shift, config.chars_after_shift
    before = [("before shift (plays test)", round(f * shift), round(f * shift), "f1_source") for f in EFFORT_FRACTIONS]
    target = [("after shift (docstrings test)", shift + round(f * after), round(f * after), "f1_target")
              for f in (0.0, *EFFORT_FRACTIONS)]
    return before + target + [("after shift (plays test)", shift + after, after, "f1_source")]


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (0 for one value); NaN when any value is (a stream without a model)."""
    array = np.asarray(values, np.float64)
    error = array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else 0.0
    return float(array.mean()), float(error)


def summarise(runs: list[live.LiveRun], config: live.LiveConfig) -> list[dict]:
    """One row per effort point: each stream's F1 and the paired difference ranked - random."""
    rows = []
    for phase, chars, chars_in_phase, field in effort_points(config):
        per_stream = {s: [f1_at(r, s, chars, field) for r in runs] for s in live.STREAMS}
        difference = [a - b for a, b in zip(per_stream["ranked"], per_stream["random"])]
        rows.append({"phase": phase, "chars": chars, "chars_in_phase": chars_in_phase,
                     **{s: mean_and_error(v) for s, v in per_stream.items()},
                     "difference": mean_and_error(difference),
                     "ranked_wins": int(sum(d > 0 for d in difference)), "seeds": len(runs)})
    return rows


def annotation_stats(runs: list[live.LiveRun]) -> dict:
    """Per stream and domain: sentences annotated and their mean length, averaged over seeds."""
    stats = {}
    for stream in live.STREAMS:
        for domain in live.DOMAINS:
            lengths = [[e.end - e.start for e in r.events if e.stream == stream and e.domain == domain] for r in runs]
            stats[f"{stream}/{domain}"] = {"sentences": float(np.mean([len(x) for x in lengths])),
                                           "mean_chars": float(np.mean([np.mean(x) for x in lengths if x]))}
    return stats


def compact_curves(runs: list[live.LiveRun]) -> list[dict]:
    """Per seed and stream: the update points (chars, F1 on both tests), rounded."""
    return [{"seed": seed, "stream": stream,
             "chars": [v.chars for v in run.evaluations if v.stream == stream],
             "f1_source": [round(v.f1_source, 4) for v in run.evaluations if v.stream == stream],
             "f1_target": [round(v.f1_target, 4) for v in run.evaluations if v.stream == stream]}
            for seed, run in enumerate(runs) for stream in live.STREAMS]


def format_table(rows: list[dict]) -> str:
    """The Markdown table of F1 at each effort point."""
    lines = ["| phase | characters annotated (in phase) | ranked F1 | random F1 | ranked - random | ranked wins |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[s][0]:.3f} ± {row[s][1]:.3f}" if math.isfinite(row[s][0]) else "no model yet"
                 for s in (*live.STREAMS, "difference")]
        lines.append(f"| {row['phase']} | {row['chars']} ({row['chars_in_phase']}) | {' | '.join(cells)} | "
                     f"{row['ranked_wins']}/{row['seeds']} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """A paragraph, from the numbers, on whether the ranked stream beats random, per phase."""
    sentences = []
    for phase in ("before shift (plays test)", "after shift (docstrings test)"):
        phase_rows = [r for r in rows if r["phase"] == phase and r["chars_in_phase"] > 0
                      and math.isfinite(r["difference"][0])]
        significant = [r for r in phase_rows if abs(r["difference"][0]) > 2 * r["difference"][1]]
        mean_gap = float(np.mean([r["difference"][0] for r in phase_rows]))
        final = phase_rows[-1]
        direction = "above" if mean_gap > 0 else "below"
        sentences.append(
            f"{phase}: the ranked stream is {direction} random by {abs(mean_gap):.3f} F1 on average over the "
            f"{len(phase_rows)} effort points ({final['difference'][0]:+.3f} ± {final['difference'][1]:.3f} at the "
            f"end of the phase, ranked ahead in {final['ranked_wins']} of {final['seeds']} seeds); the gap exceeds "
            f"two standard errors at {len(significant)} of {len(phase_rows)} points "
            f"({sum(r['difference'][0] > 0 for r in significant)} with ranked ahead)"
            + ("; at this scale the two streams are not distinguishable." if not significant else "."))
    return " ".join(sentences)


def length_note(stats: dict) -> str:
    """How the lengths of the sentences each stream picked compare, per domain."""
    parts = [f"{stats[f'ranked/{d}']['mean_chars']:.1f} vs {stats[f'random/{d}']['mean_chars']:.1f} characters "
             f"per sentence ({name})" for d, name in zip(live.DOMAINS, ("plays", "docstrings"))]
    return (f"The ranked stream's sentences against the random stream's: {'; '.join(parts)}. Effort is counted in "
            "characters, so a stream that picks shorter sentences annotates more of them in the same time.")


def plot(runs: list[live.LiveRun], config: live.LiveConfig, path: Path) -> bool:
    """Mean F1 over seeds against characters annotated, per stream and test set, the shift marked."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    end = config.chars_before_shift + config.chars_after_shift
    grid = np.linspace(0, end, 161)
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, (field, title) in zip(axes, (("f1_source", "held-out plays"), ("f1_target", "held-out docstrings"))):
        for colour, stream in zip(("C0", "C1"), live.STREAMS):
            curves = np.array([[f1_at(r, stream, int(x), field) for x in grid] for r in runs])
            axis.plot(grid, np.mean(curves, axis=0), color=colour, label=stream)
        axis.axvline(config.chars_before_shift, color="grey", linestyle="--", label="shift to docstrings")
        axis.set(title=f"word-start F1 on {title}", xlabel="characters annotated by the stream")
    axes[0].set_ylabel("F1 (mean over seeds)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def markdown(rows: list[dict], report: dict, command: str, plot_name: str | None) -> str:
    """The results page."""
    config, stats = report["config"], report["annotation"]
    stat_lines = [f"| {key} | {value['sentences']:.1f} | {value['mean_chars']:.1f} |" for key, value in stats.items()]
    parts = [
        "# Live active learning for word segmentation (arXiv 1907.00038)", "",
        f"Generated by `{command}` in {report['minutes']:.1f} minutes on {report['machine']['cpu_count']} CPU cores "
        f"(load average {report['load']['start']['load_average']} at the start, "
        f"{report['load']['end']['load_average']} at the end).", "",
        "Task: English lower-cased to letters a-z (apostrophes deleted, other characters separate words) with the "
        "spaces removed; a word-start label per character; word-start precision/recall/F1 over positions 1..n-1. "
        "Two streams annotate concurrently from one pool (a sentence is annotated at most once over both), each "
        "annotation taking as long as the sentence has characters; the ranked stream takes the unclaimed sentence "
        f"with the lowest {config['aggregation']} token margin under its own tagger, the other takes one at random. "
        f"Each stream retrains its own tagger every {config['batch_size']} sentences, warm-started. "
        f"The pool is {config['pool_size']} lines of the training plays until {config['chars_before_shift']} "
        f"characters, then {config['pool_size']} docstring sentences of the training standard-library modules for "
        f"{config['chars_after_shift']} more. Test sets: {config['test_sizes'][0]} lines of the held-out plays and "
        f"{config['test_sizes'][1]} docstring sentences of the held-out modules. Seeds: {config['seeds']} (stream "
        "generators, tagger initialisation and minibatches; pools and test sets are fixed).", "",
        f"Tagger: {config['tagger']}.", "",
        "## Word-start F1 (mean ± standard error over seeds) by annotation effort", "",
        "Effort is the characters a stream has annotated (its clock); F1 is that of the stream's latest model at that "
        "effort. 'ranked - random' is the paired difference over seeds.", "",
        format_table(rows), "",
        "## Does model-ranked selection beat random here?", "", verdict(rows), "", length_note(stats), "",
        "## What each stream annotated (mean over seeds)", "",
        "| stream/domain | sentences | mean characters per sentence |", "|---|---|---|", *stat_lines, "",
    ]
    parts.append(f"![F1 against characters annotated]({plot_name})" if plot_name else "(plot skipped: no matplotlib)")
    return "\n".join(parts) + "\n"


def main() -> None:
    args = parse_args()
    mode = settings(args)
    output_dir = Path(args.output_dir)
    load_start, started = metrics.machine_load(), time.perf_counter()
    pools, tests = load_data(mode.pool_size, mode.test_size)
    runs = []
    for seed in range(mode.seeds):
        runs.append(live.run(pools, tests, mode.config, seed))
        final = {s: f1_at(runs[-1], s, 10**9, "f1_target") for s in live.STREAMS}
        print(f"seed {seed}: final docstrings F1 {final} ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    rows = summarise(runs, mode.config)
    config = {**{k: v for k, v in dataclasses.asdict(mode.config).items() if k != "tagger"},
              "tagger": dataclasses.asdict(mode.config.tagger), "seeds": mode.seeds, "pool_size": mode.pool_size,
              "test_sizes": [len(t) for t in tests], "data_seed": DATA_SEED}
    report = {"config": config, "minutes": (time.perf_counter() - started) / 60,
              "machine": {"cpu_count": os.cpu_count()},
              "load": {"start": load_start, "end": metrics.machine_load()},
              "table": rows, "verdict": verdict(rows), "annotation": annotation_stats(runs),
              "curves": compact_curves(runs)}
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_name = f"{args.name}.png" if plot(runs, mode.config, output_dir / f"{args.name}.png") else None
    command = "python scripts/reproduce_live_al.py" + " ".join([""] + sys.argv[1:])
    metrics.write_report(output_dir, args.name, report, markdown(rows, report, command, plot_name))


if __name__ == "__main__":
    main()
