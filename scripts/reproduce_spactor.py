"""Reproduces SpacTor's downstream claim (methods.md section 1) at small scale: does SpacTor(tau)
pre-training for S steps fine-tune as well as plain span corruption (SC) for 2S steps?

Per seed (initialisation and data order), every run pre-trains T5 on the plays + standard-library code
mixture (`gin/spactor/small.gin`):
  - SC: span corruption for 2S steps; its step-S checkpoint is the matched-steps arm SC(S);
  - hybrid: the hybrid objective (SC + generator MLM + replaced-token detection) for S steps;
  - SpacTor(tau): the hybrid run's checkpoint at tau continued with span corruption to S, exactly the
    state a separate run with TAU=tau reaches (same seed, data and steps).
Each of the five pre-trained T5s is evaluated on clean validation span corruption, then fine-tuned
--finetune_steps steps (same learning rate and batch for all) on each downstream task
(`gin/runs/downstream/`) and scored with the task's metrics on its held-out split (`littlehelp eval`).
Pre-training FLOPs come from the runs' own per-step counts. Writes results/spactor.{json,md,png};
run folders under --work_dir are reused, so a stopped reproduction resumes.

    .venv/bin/python scripts/reproduce_spactor.py            # default settings
    .venv/bin/python scripts/reproduce_spactor.py --quick    # smoke test (about 3 minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from littlehelp import checkpoints, main as cli, metrics  # noqa: E402
from littlehelp.metrics import machine_load, matmul_rates, report_header, write_report  # noqa: E402
from littlehelp.runs import train  # noqa: E402

RESULT_NAME = "spactor"
PRETRAIN = "spactor/small.gin"
MODEL = "spactor/small_model.gin"
TASKS = {"genre_classification": "accuracy", "code_summarisation": "rougeL"}  # task -> headline metric
# Shorter than the task files' defaults, to fit the time: a genre is clear from a passage's first 128
# tokens, and 32 target tokens hold most summaries' first line.
FINETUNE_LENGTHS = {"genre_classification": {"inputs": 128, "targets": 4},
                    "code_summarisation": {"inputs": 192, "targets": 32}}
EXTRA_METRICS = {"code_summarisation": ["exact_match"]}
QUICK = dict(seeds=1, steps=4, taus=[0.5], finetune_steps=2, eval_examples=4, eval_batches=1,
             overrides=["t5.T5Config.emb_dim=32", "t5.T5Config.mlp_dim=64", "t5.T5Config.num_heads=2",
                        "t5.T5Config.num_encoder_layers=1", "t5.T5Config.num_decoder_layers=1", "BATCH_SIZE=4"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring); --quick overrides the sizes with QUICK."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "spactor"))
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="S: the SpacTor runs' steps; SC runs 2S")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.25, 0.5], help="tau as fractions of S")
    parser.add_argument("--finetune_steps", type=int, default=50)
    parser.add_argument("--eval_examples", type=int, default=256, help="held-out examples scored per task")
    parser.add_argument("--eval_batches", type=int, default=8, help="validation batches of the SC loss")
    parser.add_argument("--overrides", nargs="*", default=[], help="gin bindings for every run, NAME=VALUE")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


def _taus(args: argparse.Namespace) -> list[int]:
    return sorted({max(1, round(f * args.steps)) for f in args.taus})


def _bindings(args: argparse.Namespace) -> dict[str, str]:
    return dict(o.split("=", 1) for o in args.overrides)


# ----- pre-training -----

def branch(source: Path, step: int, target: Path) -> None:
    """Copies `source`'s checkpoint at `step` into `target` (a run that continues from it), once."""
    if not checkpoints.finished_steps(target / "checkpoints"):
        shutil.copytree(source / "checkpoints" / str(step), target / "checkpoints" / str(step))


def pretrain(seed: int, args: argparse.Namespace) -> dict[str, Path]:
    """The five pre-trained arms of one seed: {arm name: run folder whose newest step is the arm's}."""
    root, s, taus = Path(args.work_dir).resolve() / f"seed{seed}", args.steps, _taus(args)
    common = {**_bindings(args), "SEED": seed, "checkpoints.CheckpointConfig.max_to_keep": len(taus) + 2}
    train(root / "sc", [PRETRAIN], {**common, "TAU": 0, "checkpoints.CheckpointConfig.save_interval_steps": s}, 2 * s)
    branch(root / "sc", s, root / "sc_half")
    interval = math.gcd(s, *taus)
    train(root / "hybrid", [PRETRAIN], {**common, "TAU": None,
                                        "checkpoints.CheckpointConfig.save_interval_steps": interval}, s)
    arms = {"SC(S)": root / "sc_half", "SC(2S)": root / "sc", "hybrid": root / "hybrid"}
    for tau in taus:
        folder = root / f"spactor_{tau}"
        branch(root / "hybrid", tau, folder)
        train(folder, [PRETRAIN], {**common, "TAU": tau, "checkpoints.CheckpointConfig.save_interval_steps": s}, s)
        arms[f"SpacTor({tau})"] = folder
    return arms


def flops_per_step(folder: Path) -> dict[str, float]:
    """{"first": FLOPs of the run's first logged step, "last": of its last} (hybrid, then SC after tau)."""
    records = [r for r in metrics.read_jsonl(folder / "metrics.jsonl") if "train/flops_per_step" in r]
    return {"first": records[0]["train/flops_per_step"], "last": records[-1]["train/flops_per_step"]}


def pretraining_flops(arm: str, s: int, sc: float, hybrid: float) -> float:
    """An arm's pre-training FLOPs from the SC and hybrid steps' counts."""
    if arm.startswith("SpacTor("):
        tau = int(arm[len("SpacTor("):-1])
        return tau * hybrid + (s - tau) * sc
    return {"SC(S)": s * sc, "SC(2S)": 2 * s * sc, "hybrid": s * hybrid}[arm]


# ----- evaluation and fine-tuning -----

def cached(path: Path, compute) -> dict[str, float]:
    """`compute()`'s metrics, kept in `path` (JSON) so a rerun reuses them."""
    if path.is_file():
        return json.loads(path.read_text())
    result = {k: float(v) for k, v in compute().items()}
    path.write_text(json.dumps(result) + "\n")
    return result


def sc_loss(folder: Path, args: argparse.Namespace) -> float:
    """Validation span-corruption cross-entropy (clean inputs) of the folder's newest T5."""
    bindings = [f"--gin.{k}={v}" for k, v in _bindings(args).items()]
    run = lambda: cli.main(["eval", f"--gin_file={PRETRAIN}", "--gin_file=runs/eval.gin", *bindings,  # noqa: E731
                            f"--gin.MODEL_DIR={folder}", "--gin.TAU=0", "--gin.TRAIN_STEPS=1",
                            f"--gin.EVAL_BATCHES={args.eval_batches}"])
    return cached(folder / "sc_eval.json", run)["cross_entropy"]


def finetune(arm_folder: Path, task: str, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """Fine-tunes the arm's T5 on `task` --finetune_steps steps and returns the task's metrics."""
    step = checkpoints.finished_steps(arm_folder / "checkpoints")[-1]
    gin_files = [MODEL, "runs/finetune.gin", f"runs/downstream/{task}.gin", "spactor/finetune.gin"]
    common = {**_bindings(args), "INITIAL_CHECKPOINT_PATH": arm_folder / "checkpoints",
              "TASK_FEATURE_LENGTHS": FINETUNE_LENGTHS[task]}
    final = step + args.finetune_steps
    train(folder, gin_files, common, final, in_process=True)
    flags = [*(f"--gin_file={f}" for f in gin_files), *(f"--gin.{k}={v}" for k, v in common.items())]
    run = lambda: cli.main(["eval", *flags, "--gin_file=runs/eval.gin", f"--gin.MODEL_DIR={folder}",  # noqa: E731
                            f"--gin.TRAIN_STEPS={final}", "--gin.EVAL_BATCHES=1",
                            f"--gin.inference.task_metrics.max_examples={args.eval_examples}"])
    return cached(folder / "task_eval.json", run)


def seed_results(seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """{arm: {"sc_loss", "flops", "<task>/<metric>"...}} for one seed."""
    arms = pretrain(seed, args)
    sc, hybrid = flops_per_step(arms["SC(2S)"])["last"], flops_per_step(arms["hybrid"])["first"]
    results = {}
    for arm, folder in arms.items():
        row = {"sc_loss": sc_loss(folder, args), "flops": pretraining_flops(arm, args.steps, sc, hybrid)}
        for task in TASKS:
            tuned = finetune(folder, task, folder.parent / "finetune" / f"{task}.{folder.name}", args)
            row |= {f"{task}/{name.removeprefix('task/')}": v for name, v in tuned.items() if name.startswith("task/")}
        results[arm] = row
        print(f"seed {seed} {arm}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    return results


# ----- report -----

def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for one value)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def sc_at_flops(seed: dict[str, dict[str, float]], key: str, flops: float) -> float:
    """SC's `key` at `flops`, linear between SC(S) and SC(2S) (nan outside them)."""
    low, high = seed["SC(S)"], seed["SC(2S)"]
    if not low["flops"] <= flops <= high["flops"]:
        return float("nan")
    return float(np.interp(flops, [low["flops"], high["flops"]], [low[key], high[key]]))


def _cell(values: Sequence[float], digits: int) -> str:
    mean, se = mean_se([v for v in values if not math.isnan(v)] or [float("nan")])
    return f"{mean:+.{digits}f} ± {se:.{digits}f}" if values else "-"


def table(seeds: list[dict], key: str, digits: int) -> list[str]:
    """Markdown: each arm's `key` (mean ± se over seeds) and its paired differences from SC(S) (same
    steps), from SC at the same FLOPs and from SC(2S) (the paper's claim: equal at half the steps)."""
    lines = [f"| arm | FLOPs / SC(2S) | {key} | minus SC(S) | minus SC, same FLOPs | minus SC(2S) |",
             "|---|---|---|---|---|---|"]
    for arm in seeds[0]:
        ratio = mean_se([s[arm]["flops"] / s["SC(2S)"]["flops"] for s in seeds])[0]
        value = mean_se([s[arm][key] for s in seeds])
        diffs = [[s[arm][key] - ref(s) for s in seeds] for ref in
                 (lambda s: s["SC(S)"][key], lambda s: sc_at_flops(s, key, s[arm]["flops"]),
                  lambda s: s["SC(2S)"][key])]
        cells = ["-"] * 3 if arm.startswith("SC(") else [_cell(d, digits) for d in diffs]
        lines.append(f"| {arm} | {ratio:.3f} | {value[0]:.{digits}f} ± {value[1]:.{digits}f} | {' | '.join(cells)} |")
    return lines


def metric_keys() -> list[tuple[str, int]]:
    """(result key, digits) of every reported measure: the SC loss first, then each task's metrics."""
    keys = [("sc_loss", 4)]
    for task, metric in TASKS.items():
        keys += [(f"{task}/{name}", 2) for name in [metric, *EXTRA_METRICS.get(task, [])]]
    return keys


def plot(seeds: list[dict], path: Path) -> None:
    """Each headline measure against pre-training FLOPs, one point per arm (mean ± se over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("sc_loss", 4)] + [(f"{t}/{m}", 2) for t, m in TASKS.items()]
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
    for axis, (key, _) in zip(axes, keys):
        for arm in seeds[0]:
            x = mean_se([s[arm]["flops"] for s in seeds])[0]
            y, se = mean_se([s[arm][key] for s in seeds])
            axis.errorbar([x], [y], yerr=[se], fmt="o", capsize=3, label=arm)
        axis.set(xlabel="pre-training FLOPs", ylabel=key)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _paired(seeds: list[dict], arm: str, base: str, key: str) -> tuple[float, float]:
    """Mean ± standard error over seeds of `arm`'s `key` minus `base`'s."""
    return mean_se([s[arm][key] - s[base][key] for s in seeds])


def _standing(to_full: tuple[float, float], to_half: tuple[float, float]) -> str:
    """Where an arm stands against SC(2S) and SC(S), from its paired differences (two standard errors)."""
    (full, full_se), (half, half_se) = to_full, to_half
    if full > 2 * full_se:
        return "is ahead of SC(2S)"
    if full < -2 * full_se:
        return "falls short of SC(2S)"
    if half > 2 * half_se:
        return "reaches SC(2S): within two standard errors of it and above SC(S)"
    return "is inconclusive: within two standard errors of both SC(2S) and SC(S)"


def verdict(seeds: list[dict]) -> list[str]:
    """Per task: whether the metric separates SC(S) from SC(2S) at all (else it cannot test the claim),
    then each SpacTor(tau)'s paired differences from SC(2S) and SC(S)."""
    if len(seeds) < 2:
        return ["- One seed: no standard errors, no verdict."]
    lines = []
    for task, metric in TASKS.items():
        key = f"{task}/{metric}"
        gain = _paired(seeds, "SC(2S)", "SC(S)", key)
        separates = "separates" if abs(gain[0]) > 2 * gain[1] else "does not separate"
        lines.append(f"- {task}: doubling SC's pre-training changes {metric} by {gain[0]:+.2f} ± {gain[1]:.2f}, "
                     f"so this metric {separates} SC(S) from SC(2S) at this scale.")
        for arm in (a for a in seeds[0] if a.startswith("SpacTor(")):
            to_full, to_half = _paired(seeds, arm, "SC(2S)", key), _paired(seeds, arm, "SC(S)", key)
            ratio = mean_se([s[arm]["flops"] / s["SC(2S)"]["flops"] for s in seeds])[0]
            lines.append(f"  - {arm}, half the steps and {ratio:.0%} of the FLOPs: {_standing(to_full, to_half)} "
                         f"({to_full[0]:+.2f} ± {to_full[1]:.2f} against SC(2S), {to_half[0]:+.2f} ± {to_half[1]:.2f} "
                         "against SC(S)).")
    return lines


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    """results/spactor.md."""
    rates, seeds = report["matmul_flops_per_second"], report["seeds"]
    tables = []
    for key, digits in metric_keys():
        tables += [f"### {key}", "", *table(seeds, key, digits), ""]
    return "\n".join([
        "# SpacTor on 2 CPU cores: downstream quality after fine-tuning, against span corruption", "",
        f"Date {report['date']}, jax {report['jax_version']} ({report['backend']}). Command: `{report['command']}` "
        f"({report['seconds'] / 60:.0f} min). Load at start `{report['load']['start']['uptime']}`, at end "
        f"`{report['load']['end']['uptime']}`; float32 matmul GFLOP/s before "
        f"{', '.join(f'{k}: {v / 1e9:.0f}' for k, v in rates['before'].items())}, after "
        f"{', '.join(f'{k}: {v / 1e9:.0f}' for k, v in rates['after'].items())}.", "",
        f"{args.seeds} seeds (initialisation and data order); S = {args.steps} pre-training steps (SC runs 2S), "
        f"taus {_taus(args)}; pre-training `gin/{PRETRAIN}` {' '.join(args.overrides)}; every pre-trained T5 "
        f"fine-tuned {args.finetune_steps} steps per task (`gin/spactor/finetune.gin`) and scored on "
        f"{args.eval_examples} held-out examples with greedy decoding. Values: mean ± standard error over "
        "seeds; differences are paired by seed. 'Same FLOPs': SC's value interpolated between SC(S) and "
        "SC(2S) at the arm's pre-training FLOPs. sc_loss: validation span-corruption cross-entropy, nats/token.",
        "", *tables, "SpacTor against SC at twice the steps (the paper's claim):", "", *verdict(seeds), "",
        f"![downstream metric against pre-training FLOPs]({RESULT_NAME}.png)", ""])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs every seed's arms and fine-tunes, and writes the report."""
    args = parse_args(argv)
    started = time.perf_counter()
    load_start, rates_before = machine_load(), matmul_rates([2048])
    seeds = [seed_results(seed, args) for seed in range(args.seeds)]
    rates_after, load_end = matmul_rates([2048]), machine_load()
    report = {**report_header({k: v for k, v in vars(args).items() if k != "out_dir"}, (load_start, load_end),
                              (rates_before, rates_after)),
              "command": " ".join(["python scripts/reproduce_spactor.py", *(argv if argv is not None else sys.argv[1:])]),
              "seconds": time.perf_counter() - started, "seeds": seeds}
    write_report(args.out_dir, RESULT_NAME, report, markdown(report, args))
    plot(seeds, Path(args.out_dir) / f"{RESULT_NAME}.png")
    return report


if __name__ == "__main__":
    main()
