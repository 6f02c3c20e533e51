"""Reproduces SALT (methods.md section 2) on this machine: a small LM's soft labels early in a 4x larger
LM's pre-training, with and without small-LM data selection (SALT_DS).

Stages (a run folder that already holds its final step is reused, so a stopped run resumes):
  1. the teacher: `littlehelp train --gin_file=salt/teacher.gin` (~1.0M parameters, --teacher_steps)
     on the Shakespeare plays;
  2. per seed, in turn: the baseline student (`salt/baseline.gin`, ~4.0M parameters, plain LM),
     SALT (`salt/salt.gin`: (1 - omega) CE + omega FKL from the final teacher for --n_kd steps, then
     plain LM) and SALT_DS (`salt/salt_ds.gin`: the same, the KD stage on the half of the training
     sequences an early teacher checkpoint scores highest), all --student_steps steps;
  3. evaluation: validation cross-entropy curves on held-out plays (logged by the runs), the step
     at which SALT and SALT_DS first reach the baseline's final validation loss (per seed, linear
     between evaluations), and the final students' loss on a held-out domain (standard-library code).
Writes results/salt.{json,md} and results/salt.png; run folders under --work_dir.

    .venv/bin/python scripts/reproduce_salt.py            # default: about 45 min on 2 idle CPU cores
    .venv/bin/python scripts/reproduce_salt.py --quick    # smoke test: a few minutes
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from littlehelp import checkpoints, config, partitioning, trainer  # noqa: E402
from littlehelp.data import DatasetConfig  # noqa: E402
from littlehelp.metrics import machine_load, matmul_rates, read_jsonl, report_header, write_report  # noqa: E402
from littlehelp.objectives import DecoderObjective  # noqa: E402
from littlehelp.runs import train  # noqa: E402

RESULT_NAME = "salt"
ARMS = ("baseline", "salt", "salt_ds")
ARM_NAMES = {"baseline": "baseline (LM)", "salt": "SALT", "salt_ds": "SALT_DS"}
HELD_OUT_TASK = "code_lm"
QUICK = dict(teacher_steps=20, student_steps=12, n_kd=4, seeds=1, eval_every=4, eval_batches=2, held_out_batches=2)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring); --quick overrides the sizes with QUICK."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "salt"), help="run folders")
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    parser.add_argument("--teacher_steps", type=int, default=400)
    parser.add_argument("--student_steps", type=int, default=300)
    parser.add_argument("--n_kd", type=int, default=100, help="distillation steps of SALT and SALT_DS")
    parser.add_argument("--omega", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval_every", type=int, default=25)
    parser.add_argument("--eval_batches", type=int, default=8)
    parser.add_argument("--held_out_batches", type=int, default=16, help="batches of 16 x 128 tokens of code")
    parser.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


# ----- stages 1 and 2: training -----

def scoring_checkpoint(teacher: Path) -> Path:
    """The early teacher checkpoint SALT_DS scores with: the earliest step kept (half-way by default)."""
    return teacher / "checkpoints" / str(checkpoints.finished_steps(teacher / "checkpoints")[0])


def train_all(args: argparse.Namespace) -> dict[str, float]:
    """The teacher, then baseline, SALT and SALT_DS per seed; the seconds of each run."""
    work = Path(args.work_dir).resolve()
    evaluation = {"trainer.train.eval_every": args.eval_every, "trainer.train.eval_batches": args.eval_batches,
                  "trainer.train.log_every": args.eval_every}
    print(f"stage 1: the teacher ({args.teacher_steps} steps)", flush=True)
    save_every = max(1, args.teacher_steps // 2)
    seconds = {"teacher": train(work / "teacher", "salt/teacher.gin",
                                {**evaluation, "checkpoints.CheckpointConfig.save_interval_steps": save_every},
                                args.teacher_steps)}
    distil = {"TEACHER_DIR": work / "teacher", "N_KD": args.n_kd, "OMEGA": args.omega}
    select = {**distil, "SCORING_TEACHER_DIR": scoring_checkpoint(work / "teacher"), "SCORES_DIR": work / "teacher_scores"}
    arms = {"baseline": ("salt/baseline.gin", {}), "salt": ("salt/salt.gin", distil), "salt_ds": ("salt/salt_ds.gin", select)}
    print(f"stage 2: {args.seeds} seeds x {', '.join(ARMS)} ({args.student_steps} steps, n_kd {args.n_kd})", flush=True)
    for seed in range(args.seeds):
        for arm, (gin_file, bindings) in arms.items():
            seconds[f"{arm}/{seed}"] = train(work / f"{arm}_{seed}", gin_file, {**bindings, **evaluation, "SEED": seed,
                                             "checkpoints.CheckpointConfig.save_interval_steps": args.student_steps},
                                             args.student_steps)
    return seconds


# ----- stage 3: evaluation -----

def curve(folder: Path) -> tuple[list[int], list[float]]:
    """(steps, validation cross-entropy) of a run's evaluations."""
    records = [r for r in read_jsonl(folder / "metrics.jsonl") if "eval/cross_entropy" in r]
    return [r["step"] for r in records], [r["eval/cross_entropy"] for r in records]


def flops_per_step(folder: Path) -> list[tuple[int, float]]:
    """(step, train FLOPs per step) as logged."""
    return [(r["step"], r["train/flops_per_step"]) for r in read_jsonl(folder / "metrics.jsonl")
            if "train/flops_per_step" in r]


def first_reach(steps: Sequence[int], losses: Sequence[float], level: float) -> float | None:
    """The first step at which `losses` reach `level`, linear between evaluations (None: never)."""
    for index, (step, loss) in enumerate(zip(steps, losses)):
        if loss <= level:
            if index == 0:
                return float(step)
            previous_step, previous = steps[index - 1], losses[index - 1]
            return previous_step + (previous - level) / (previous - loss) * (step - previous_step)
    return None


@functools.cache
def lm_objective(gin_file: str) -> DecoderObjective:
    """The plain LM objective of the model `gin_file` trains (its MODEL_CONFIG), built once per file."""
    return DecoderObjective(student_model(gin_file))


def student_model(gin_file: str) -> Any:
    """The model `gin_file` trains (its MODEL_CONFIG), built without a run."""
    from littlehelp import models

    config.import_configurable_modules()
    config.parse_gin([gin_file], ["MODEL_DIR='/unused'"])
    try:
        return models.build_model()
    finally:
        config.gin.clear_config()


def held_out_loss(folder: Path, gin_file: str, batches: int) -> float:
    """A run's final model's mean cross-entropy on the held-out domain's validation split."""
    objective = lm_objective(gin_file)
    data = DatasetConfig(HELD_OUT_TASK, {"targets": 128}, 16, feature_converter="lm", split="validation",
                         shuffle=False, repeat=False)
    mesh, rules = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1)), partitioning.logical_axis_rules()
    example = {"decoder_input_tokens": np.zeros((1, 128), np.int32)}
    params, step = trainer.restore_run_params(str(folder), lambda rng: objective.init_params(rng, example), mesh, rules,
                                              checkpoints.CheckpointConfig())
    return trainer.Evaluator(mesh, rules)(objective, params, step, data, batches)["cross_entropy"]


def mean_and_error(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (nan for one value)."""
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def compute_fraction(reached: float | None, run_flops: list[tuple[int, float]], n_kd: int, baseline_flops: float,
                     total_steps: int) -> float | None:
    """Training FLOPs up to step `reached` over the baseline's for all `total_steps` (KD steps cost more)."""
    if reached is None:
        return None
    first, last = run_flops[0][1], run_flops[-1][1]  # the first logged step's objective, then the last's
    kd_steps = min(reached, n_kd) if first != last else 0.0
    return (kd_steps * first + (reached - kd_steps) * last) / (total_steps * baseline_flops)


def evaluate_run(folder: Path, arm: str, seed: int, level: float, baseline_flops: float,
                 args: argparse.Namespace) -> dict[str, Any]:
    """One student's curve, the step and compute at which it reaches `level`, and its held-out loss."""
    steps, losses = curve(folder)
    reached = first_reach(steps, losses, level)
    return {"arm": arm, "seed": seed, "steps": steps, "losses": losses, "final_loss": losses[-1],
            "reach_step": reached, "reach_fraction": None if reached is None else reached / args.student_steps,
            "compute_fraction": compute_fraction(reached, flops_per_step(folder), args.n_kd if arm != "baseline" else 0,
                                                 baseline_flops, args.student_steps),
            "held_out_loss": held_out_loss(folder, "salt/baseline.gin", args.held_out_batches)}


def evaluate_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every run's evaluation (`evaluate_run`, against its seed's baseline) and the teacher's losses."""
    work = Path(args.work_dir).resolve()
    runs: dict[str, Any] = {}
    for seed in range(args.seeds):
        level = curve(work / f"baseline_{seed}")[1][-1]
        baseline_flops = flops_per_step(work / f"baseline_{seed}")[-1][1]
        for arm in ARMS:
            run = evaluate_run(work / f"{arm}_{seed}", arm, seed, level, baseline_flops, args)
            runs[f"{arm}/{seed}"] = run
            reached = "never" if run["reach_step"] is None else f"{run['reach_step']:.0f}"
            print(f"  {arm} seed {seed}: final {run['final_loss']:.4f}, the baseline's final loss reached at step "
                  f"{reached}, held-out {run['held_out_loss']:.4f}", flush=True)
    teacher = work / "teacher"
    return {"runs": runs, "teacher": {"final_loss": curve(teacher)[1][-1],
                                      "held_out_loss": held_out_loss(teacher, "salt/teacher.gin", args.held_out_batches)}}


def summarise(runs: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per arm: means and standard errors over seeds, and differences from the same seed's baseline."""
    summary = {}
    for arm in ARMS:
        rows = [runs[f"{arm}/{seed}"] for seed in range(args.seeds)]
        baseline = [runs[f"baseline/{seed}"] for seed in range(args.seeds)]
        reached = [r["reach_fraction"] for r in rows if r["reach_fraction"] is not None]
        computed = [r["compute_fraction"] for r in rows if r["compute_fraction"] is not None]
        summary[arm] = {
            "final_loss": mean_and_error([r["final_loss"] for r in rows]),
            "final_loss_difference": mean_and_error([r["final_loss"] - b["final_loss"] for r, b in zip(rows, baseline)]),
            "held_out_loss": mean_and_error([r["held_out_loss"] for r in rows]),
            "held_out_difference": mean_and_error([r["held_out_loss"] - b["held_out_loss"] for r, b in zip(rows, baseline)]),
            "loss_at_n_kd": mean_and_error([loss_at(r, args.n_kd) for r in rows]),
            "reached": len(reached), "reach_fraction": mean_and_error(reached) if reached else None,
            "compute_fraction": mean_and_error(computed) if computed else None}
    return summary


def loss_at(run: dict[str, Any], step: int) -> float:
    """A run's validation loss at `step`, linear between evaluations."""
    return float(np.interp(step, run["steps"], run["losses"]))


def _cell(value: tuple[float, float] | None, digits: int = 4, percent: bool = False) -> str:
    if value is None:
        return "never"
    mean, error = value
    if percent:
        return f"{mean:.1%} ± {error:.1%}" if not math.isnan(error) else f"{mean:.1%}"
    return f"{mean:.{digits}f} ± {error:.{digits}f}" if not math.isnan(error) else f"{mean:.{digits}f}"


def table(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The markdown table of the summary (± one standard error over seeds)."""
    lines = [f"| arm | val loss at step {args.n_kd} | final val loss | minus baseline | steps to baseline's final "
             f"(share of {args.student_steps}) | FLOPs to it (share of baseline's) | held-out code loss | minus baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        row = summary[arm]
        reach = f"{_cell(row['reach_fraction'], percent=True)} ({row['reached']}/{args.seeds} seeds)"
        lines.append(f"| {ARM_NAMES[arm]} | {_cell(row['loss_at_n_kd'])} | {_cell(row['final_loss'])} | "
                     f"{_cell(row['final_loss_difference']) if arm != 'baseline' else ''} | {reach} | "
                     f"{_cell(row['compute_fraction'], percent=True)} | {_cell(row['held_out_loss'])} | "
                     f"{_cell(row['held_out_difference']) if arm != 'baseline' else ''} |")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    """Validation loss against step per arm (mean over seeds, seeds faint), and the held-out losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args = report["config"]
    figure, (curves, held_out) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for colour, arm in zip(("tab:gray", "tab:blue", "tab:orange"), ARMS):
        rows = [report["runs"][f"{arm}/{seed}"] for seed in range(args["seeds"])]
        for row in rows:
            curves.plot(row["steps"], row["losses"], color=colour, alpha=0.25, linewidth=0.8)
        curves.plot(rows[0]["steps"], np.mean([r["losses"] for r in rows], axis=0), color=colour, label=ARM_NAMES[arm])
        held_out.scatter([ARM_NAMES[arm]] * len(rows), [r["held_out_loss"] for r in rows], color=colour)
    curves.axvline(args["n_kd"], color="black", linestyle=":", linewidth=0.8, label="n_KD")
    curves.set(xlabel="student step", ylabel="validation cross-entropy (held-out plays)",
               ylim=(None, min(report["runs"]["baseline/0"]["losses"][1:] or [None]) + 1.0))
    curves.legend()
    held_out.set(ylabel="cross-entropy on held-out code (final students)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    """results/salt.md: set-up and the table; the verdict is written beside it by hand."""
    rates = report["matmul_flops_per_second"]
    teacher = report["evaluation"]["teacher"]
    return "\n".join([
        "# SALT on 2 CPU cores: a 1.0M-parameter teacher's soft labels early in a 4.0M-parameter student's training", "",
        f"Date {report['date']}, jax {report['jax_version']} ({report['backend']}), {report['machine']['cpu_count']} CPUs. "
        f"Command: `{report['command']}` ({report['seconds'] / 60:.0f} min). Load at start `{report['load']['start']['uptime']}`, "
        f"at end `{report['load']['end']['uptime']}`; float32 matmul GFLOP/s before "
        f"{', '.join(f'{k}: {v / 1e9:.0f}' for k, v in rates['before'].items())}, after "
        f"{', '.join(f'{k}: {v / 1e9:.0f}' for k, v in rates['after'].items())}.", "",
        f"Models and data: `gin/salt/models.gin` (Llama-style decoders, default 8192-id vocabulary, tied embeddings). "
        f"Teacher trained {args.teacher_steps} steps by `gin/salt/teacher.gin` (final validation loss "
        f"{teacher['final_loss']:.4f}, held-out code {teacher['held_out_loss']:.4f}); students {args.student_steps} "
        f"steps, batch 16 x 128 tokens of the Shakespeare plays, {args.seeds} seeds (the seed sets the initialisation "
        f"and the data order). SALT: omega {args.omega:g}, n_KD {args.n_kd}, abrupt transition, the final teacher. "
        f"SALT_DS: the same, its KD stage on the 50% of the training sequences the teacher's step "
        f"{report['scoring_step']} checkpoint scores highest (median loss over the tokens in its top 10), then the whole task. "
        f"Validation: {args.eval_batches} batches of held-out plays every {args.eval_every} steps; held-out domain: "
        f"{args.held_out_batches} batches of the standard library's held-out modules (`{HELD_OUT_TASK}`).", "",
        "± : one standard error over seeds; 'minus baseline' pairs each run with the same seed's baseline. Steps to "
        "the baseline's final loss: the first step, linear between evaluations, at which the run's validation loss is "
        "at or below its seed's baseline's final loss (the paper: SALT about 70%). FLOPs to it count the teacher's "
        "forward passes during the KD stage.", "",
        *table(report["summary"], args), "", "![validation curves](salt.png)", "",
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Trains, evaluates and writes the report; returns its JSON content."""
    args = parse_args(argv)
    started = time.perf_counter()
    load_start, rates_before = machine_load(), matmul_rates([2048])
    seconds = train_all(args)
    print("stage 3: evaluation", flush=True)
    evaluation = evaluate_all(args)
    rates_after, load_end = matmul_rates([2048]), machine_load()
    report = {**report_header({k: v for k, v in vars(args).items() if k != "out_dir"}, (load_start, load_end),
                              (rates_before, rates_after)),
              "command": " ".join(["python scripts/reproduce_salt.py", *(argv if argv is not None else sys.argv[1:])]),
              "seconds": time.perf_counter() - started, "train_seconds": seconds,
              "scoring_step": int(scoring_checkpoint(Path(args.work_dir).resolve() / "teacher").name),
              "evaluation": evaluation, "runs": evaluation["runs"], "summary": summarise(evaluation["runs"], args)}
    write_report(args.out_dir, RESULT_NAME, report, markdown(report, args))
    plot(report, Path(args.out_dir) / f"{RESULT_NAME}.png")
    return report


if __name__ == "__main__":
    main()
