"""SALT against plain pre-training: a weaker small LM's soft labels early in a 4x larger LM's training.

A teacher (`salt/teacher.gin`, a seventh of the student's parameters) is trained once on the
Shakespeare plays for as many steps as a student (so it has seen no more data than one), keeping a
half-way checkpoint. The paper's regime is a small model clearly worse than the large one, so the study
checks it: the teacher's final validation loss must be above every seed's baseline student's by more
than TEACHER_GAP nats. Per seed (initialisation and data order) three students train the same steps:
the baseline (`salt/baseline.gin`, plain LM); SALT (`salt/salt.gin`: (1 - omega) CE + omega FKL from
the final teacher for the first n_KD steps, then plain LM); SALT_DS (`salt/salt_ds.gin`: the same, its
KD stage on the half of the training sequences the teacher's earliest kept checkpoint scores highest).
Scored: validation cross-entropy on held-out plays (final, and at step n_KD, linear between
evaluations), the final students' cross-entropy on held-out standard-library code, the first step
(linear between evaluations) at which a run reaches its seed's baseline's final validation loss as a
share of the student steps, and the training FLOPs to it as a share of the baseline's: the teacher's
forward passes during KD counted, and for SALT_DS the teacher's scoring pass over the whole training
split too. The teacher's own training FLOPs are reported apart, as a share of the baseline's (the
paper leaves them out of SALT's cost too). A run that never reaches the baseline's final loss counts as
reaching it at twice the student steps (step share 2). The quick mode also shrinks both models and the
plays (64 passages).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from littlehelp.features import DECODER_INPUT_TOKENS, TARGETS
from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study

STUDENT_GIN, HELD_OUT_TASK, LENGTH, BATCH = "salt/baseline.gin", "code_lm", 128, 16
TEACHER_GAP = 0.1  # nats: how much worse than the baseline student the teacher must end
NEVER = 2.0  # a run that never reaches the baseline's final loss counts as reaching it at NEVER x the steps
# --quick: tiny models, no measurement of the peak matmul rate (it only sets the logged MFU)
QUICK_BINDINGS = {
    "trainer.train.peak_flops_per_device": 1e9,
    **{
        f"{scope}/decoder.DecoderConfig.{name}": value
        for scope, width in (("teacher", 16), ("student", 32))
        for name, value in {
            "emb_dim": width,
            "num_layers": 1,
            "num_heads": 2,
            "num_kv_heads": 1,
            "head_dim": 8,
            "mlp_dim": 2 * width,
        }.items()
    },
}


def plays_head_task(documents: int) -> str:
    """A decoder LM Task on the first `documents` passages of each split of the plays (registered once)."""
    # pylint: disable=import-outside-toplevel
    from littlehelp.data import corpus, tasks, vocab

    name = f"shakespeare_head{documents}"
    source = tasks.TextSource(lambda split: corpus.shakespeare_documents(split)[:documents])
    tasks.register_text_tasks(name, source, vocab.default_vocabulary())
    return f"{name}_lm"


def run_bindings(settings: Mapping[str, Any], steps: int, save_every: int) -> dict[str, Any]:
    """What every run binds: its steps, checkpoint interval, evaluation and logging, the extra bindings
    and, when `plays_documents` is set, the Task of that many passages of the plays."""
    task = {"TASK": plays_head_task(settings["plays_documents"])} if settings["plays_documents"] else {}
    return {
        "TRAIN_STEPS": steps,
        "checkpoints.CheckpointConfig.save_interval_steps": save_every,
        "trainer.train.eval_every": settings["eval_every"],
        "trainer.train.eval_batches": settings["eval_batches"],
        "trainer.train.log_every": settings["eval_every"],
        **task,
        **settings["bindings"],
    }


def teacher_bindings(context: ArmContext) -> dict[str, Any]:
    """The teacher: its steps, a checkpoint half-way (SALT_DS scores with it)."""
    steps = context.settings["teacher_steps"]
    return run_bindings(context.settings, steps, max(1, steps // 2))


def scoring_checkpoint(teacher: Path) -> Path:
    """The early teacher checkpoint SALT_DS scores with: the earliest step kept (half-way)."""
    from littlehelp import checkpoints  # pylint: disable=import-outside-toplevel

    return teacher / "checkpoints" / str(checkpoints.finished_steps(teacher / "checkpoints")[0])


def student_bindings(kind: str) -> Callable[[ArmContext], dict[str, Any]]:
    """A student's bindings: `kind` 'baseline', 'salt' (+ the teacher) or 'salt_ds' (+ the scoring)."""

    def bindings(context: ArmContext) -> dict[str, Any]:
        settings, teacher = context.settings, context.folder_of("teacher")
        values = {**run_bindings(settings, settings["student_steps"], settings["student_steps"]), "SEED": context.seed}
        if kind != "baseline":
            values |= {"TEACHER_DIR": teacher, "N_KD": settings["n_kd"], "OMEGA": settings["omega"]}
        if kind == "salt_ds":
            values |= {
                "SCORING_TEACHER_DIR": scoring_checkpoint(teacher),
                "SCORES_DIR": context.work_dir / "teacher_scores",
            }
        return values

    return bindings


def records(folder: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of each metrics.jsonl record of a run holding `key`."""
    from littlehelp.metrics import read_jsonl  # pylint: disable=import-outside-toplevel

    return [(r["step"], r[key]) for r in read_jsonl(folder / "metrics.jsonl") if key in r]


def validation_curve(context: ArmContext, arm: str | None = None) -> tuple[list[int], list[float]]:
    """(steps, validation cross-entropy) of a run's evaluations (this arm's, or `arm`'s of this seed)."""
    pairs = records(context.folder_of(arm or context.arm.name), "eval/cross_entropy")
    return [s for s, _ in pairs], [v for _, v in pairs]


def first_reach(steps: Sequence[float], losses: Sequence[float], level: float) -> float | None:
    """The first step at which `losses` reach `level`, linear between evaluations (None: never)."""
    for index, (step, loss) in enumerate(zip(steps, losses)):
        if loss <= level:
            if index == 0:
                return float(step)
            previous_step, previous = steps[index - 1], losses[index - 1]
            return previous_step + (previous - level) / (previous - loss) * (step - previous_step)
    return None


def compute_fraction(
    reached: float, run_flops: Sequence[tuple[int, float]], n_kd: int, baseline_flops: float, total_steps: int
) -> float:
    """Training FLOPs up to step `reached` over the baseline's for all `total_steps`: the first logged
    FLOPs per step (the KD objective's, when it differs from the last) for the first n_KD steps."""
    first, last = run_flops[0][1], run_flops[-1][1]
    kd_steps = min(reached, n_kd) if first != last else 0.0
    return (kd_steps * first + (reached - kd_steps) * last) / (total_steps * baseline_flops)


def reach_step(context: ArmContext) -> float:
    """The step at which the run first reaches its seed's baseline's final validation loss (never: NEVER x steps)."""
    level = validation_curve(context, "baseline")[1][-1]
    reached = first_reach(*validation_curve(context), level)
    return NEVER * context.settings["student_steps"] if reached is None else reached


def baseline_flops(context: ArmContext) -> float:
    """The seed's baseline's training FLOPs over all its steps."""
    return records(context.folder_of("baseline"), "train/flops_per_step")[-1][1] * context.settings["student_steps"]


def scoring_flops(context: ArmContext) -> float:
    """FLOPs of the teacher's SALT_DS scoring pass over the training split (0 for the other arms)."""
    from salt_lm import selection  # pylint: disable=import-outside-toplevel

    return (
        selection.read_metadata(context.work_dir / "teacher_scores")["flops"] if context.arm.name == "salt_ds" else 0.0
    )


def flops_share(context: ArmContext) -> float:
    """Training FLOPs to the baseline's final loss (SALT_DS: + its scoring pass), as a share of the
    baseline's for all its steps."""
    n_kd = 0 if context.arm.name == "baseline" else context.settings["n_kd"]
    steps = context.settings["student_steps"]
    training = compute_fraction(
        reach_step(context),
        records(context.folder, "train/flops_per_step"),
        n_kd,
        baseline_flops(context) / steps,
        steps,
    )
    return training + scoring_flops(context) / baseline_flops(context)


def teacher_gap(context: ArmContext) -> float:
    """The teacher's final validation loss minus this seed's baseline student's."""
    return validation_curve(context, "teacher")[1][-1] - validation_curve(context, "baseline")[1][-1]


def teacher_flops_share(context: ArmContext) -> float:
    """The teacher's training FLOPs as a share of the seed's baseline student's."""
    from littlehelp import study  # pylint: disable=import-outside-toplevel

    return study.train_flops(context.folder_of("teacher")) / baseline_flops(context)


@functools.cache
def held_out_evaluator(bindings: tuple[tuple[str, Any], ...]) -> tuple[Any, Any, Any]:
    """(LM objective of the students' model, its evaluator, the held-out data), built once."""
    # pylint: disable=import-outside-toplevel
    from littlehelp import config, models, partitioning, trainer
    from littlehelp.data import DatasetConfig
    from littlehelp.objectives import DecoderObjective

    config.import_configurable_modules()
    config.parse_gin([STUDENT_GIN], ["MODEL_DIR='/unused'", *(f"{k}={v}" for k, v in bindings)])
    try:
        objective = DecoderObjective(models.build_model())
    finally:
        config.gin.clear_config()
    evaluator = trainer.Evaluator(
        partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1)), partitioning.logical_axis_rules()
    )
    return (
        objective,
        evaluator,
        DatasetConfig(
            HELD_OUT_TASK,
            {TARGETS: LENGTH},
            BATCH,
            feature_converter="lm",
            split="validation",
            shuffle=False,
            repeat=False,
        ),
    )


def held_out_loss(context: ArmContext) -> float:
    """The final student's mean cross-entropy on the held-out domain's validation split."""
    from littlehelp import checkpoints, trainer  # pylint: disable=import-outside-toplevel

    objective, evaluator, data = held_out_evaluator(tuple(context.settings["bindings"].items()))
    example = {DECODER_INPUT_TOKENS: np.zeros((1, LENGTH), np.int32)}
    params, step = trainer.restore_run_params(
        str(context.folder),
        lambda rng: objective.init_params(rng, example),
        evaluator.mesh,
        evaluator.rules,
        checkpoints.CheckpointConfig(),
    )
    return evaluator(objective, params, step, data, context.settings["held_out_batches"])["cross_entropy"]


TEACHER_WEAKER = Claim(
    "teacher_weaker",
    f"the teacher ends more than {TEACHER_GAP} nats of validation loss above "
    "the baseline student (the paper's regime: a small model clearly worse than the large one)",
    "teacher_gap",
    "baseline",
    threshold=TEACHER_GAP,
)


def claims(arm: str, title: str) -> tuple[Claim, ...]:
    """The paper's claims for SALT or SALT_DS against the baseline, paired by seed."""
    return (
        Claim(
            f"{arm}_faster",
            f"{title} reaches the baseline's final validation loss in at most 75% of the "
            "baseline's steps (paper: about 70%)",
            "reach_share",
            arm,
            threshold=-0.75,
        ),
        Claim(
            f"{arm}_final_loss",
            f"{title} ends with a lower validation loss than the baseline",
            "final_loss",
            arm,
            "baseline",
        ),
        Claim(
            f"{arm}_held_out",
            f"{title}'s final student has a lower held-out code loss than the baseline",
            "held_out_loss",
            arm,
            "baseline",
        ),
    )


STUDY = Study(
    name="salt",
    title="SALT: a weaker 0.56M teacher's soft labels early in a 4.0M student's pre-training",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=(
        Arm("teacher", ("salt/teacher.gin",), teacher_bindings, per_seed=False),
        Arm("baseline", ("salt/baseline.gin",), student_bindings("baseline"), label="baseline (LM)"),
        Arm("salt", ("salt/salt.gin",), student_bindings("salt"), label="SALT"),
        Arm("salt_ds", ("salt/salt_ds.gin",), student_bindings("salt_ds"), label="SALT_DS"),
    ),
    metrics=(
        Metric(
            "loss_at_n_kd",
            "val loss at step n_KD",
            False,
            compute=lambda c: float(np.interp(c.settings["n_kd"], *validation_curve(c))),
        ),
        Metric("final_loss", "final val loss", False, compute=lambda c: validation_curve(c)[1][-1]),
        Metric("held_out_loss", "held-out code loss", False, compute=held_out_loss),
        Metric(
            "reach_share",
            "steps to the baseline's final loss (share; never: 2)",
            False,
            compute=lambda c: reach_step(c) / c.settings["student_steps"],
            digits=3,
        ),
        Metric(
            "flops_share",
            "FLOPs to it (share of the baseline's; SALT_DS: + scoring)",
            False,
            compute=flops_share,
            digits=3,
        ),
        Metric(
            "scoring_share",
            "SALT_DS scoring pass (share of the baseline's FLOPs)",
            None,
            compute=lambda c: scoring_flops(c) / baseline_flops(c),
            arms=("salt_ds",),
            digits=3,
        ),
        Metric(
            "teacher_gap",
            "teacher's final val loss minus the baseline's",
            True,
            compute=teacher_gap,
            arms=("baseline",),
        ),
        Metric(
            "teacher_flops_share",
            "teacher's training FLOPs (share of the baseline's)",
            None,
            compute=teacher_flops_share,
            arms=("baseline",),
            digits=3,
        ),
    ),
    claims=(TEACHER_WEAKER,) + claims("salt", "SALT") + claims("salt_ds", "SALT_DS"),
    seeds=3,
    settings={
        "teacher_steps": 300,
        "student_steps": 300,
        "n_kd": 100,
        "omega": 0.5,
        "eval_every": 25,
        "eval_batches": 8,
        "held_out_batches": 16,
        "plays_documents": None,
        "bindings": {},
    },
    quick={
        "teacher_steps": 8,
        "student_steps": 8,
        "n_kd": 4,
        "eval_every": 4,
        "eval_batches": 1,
        "held_out_batches": 1,
        "plays_documents": 64,
        "bindings": QUICK_BINDINGS,
    },
    quick_seeds=1,
    curves=(
        Curve(
            "validation cross-entropy (held-out plays)", "validation cross-entropy", "student step", validation_curve
        ),
    ),
)
