"""SpacTor(tau) for S steps against span corruption (SC) for 2S, after fine-tuning (`littlehelp study spactor`).

Per seed (initialisation and data order) every run pre-trains a T5 on the plays + standard-library
code mixture (`spactor/gin/spactor/small.gin`): SC for 2S steps, whose step-S checkpoint (copied into its own
folder) is SC(S); the hybrid objective for S steps; SpacTor(tau): the hybrid's checkpoint at tau
(copied) continued with span corruption to S, the state a run with TAU=tau reaches. Each pre-trained
T5 is scored on clean validation span corruption, then fine-tuned `finetune_steps` steps (same
learning rate and batch for all) on genre classification (`littlehelp/gin/runs/downstream/`) and scored by
accuracy on `eval_examples` passages of held-out plays (greedy decoding). Genre accuracy is the
primary metric because it tells SC(S) from SC(2S) at this scale (code-summary ROUGE-L did not). Its
claims, stated before the run: SpacTor(tau) beats the mean of SC(S) and SC(2S) for the same seed
("past the midpoint", a margin of half what doubling SC's steps gains), each untestable unless the
SC controls are separated on that metric (SC(2S) minus SC(S), whose 95% interval must lie above 0).

Hybrid objective (`spactor/gin/spactor/hybrid.gin`): loss = SC + 1 * MLM + 50 * RTD, 15% of the ordinary
encoder tokens masked, a generator as wide as the T5 encoder and a third as deep (1 of 3 layers here).
The SpacTor paper's abstract gives neither the generator size nor the weights, so they are chosen: the
weights are ELECTRA's (arXiv 2003.10555), and the generator makes a hybrid step cost what the
abstract's "50% of the steps, 40% fewer FLOPs" implies: hybrid for tau of S steps against 2S SC steps
costs (tau * r + S - tau) / 2S, which is 0.6 at r = 1.4 with tau = S/2 (T5 v1.1 base with this
generator: r = 1.40; large: 1.30) and at r = 1.8 with tau = S/4 (this study's T5: r = 1.84, so
SpacTor(S/4) costs 0.61 and SpacTor(S/2) 0.71 of SC(2S)). A generator a quarter as wide and as
deep, ELECTRA's size, gives r = 1.10 (base) to 1.22 (here): SpacTor(S/4) at 0.53, too cheap for the
abstract's 40%.

Pre-training FLOPs in two conventions, both from the runs' own per-step counts (matrix multiplies,
3x the forward pass; `littlehelp/flops.py`): ours, the total in FLOPs; the paper's, the total as a
fraction of SC(2S)'s (the abstract's "40% fewer" is a fraction of 0.6). r, a hybrid step's FLOPs
over an SC step's, is measured on the hybrid arm.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from littlehelp import launch, study
from littlehelp.features import INPUTS, TARGETS
from littlehelp.study import Arm, ArmContext, Claim, Metric, Study

PRETRAIN, MODEL, FINETUNE = "spactor/small.gin", "spactor/small_model.gin", "spactor/finetune.gin"
TAUS = (0.25, 0.5)  # tau as fractions of S
TASK = "genre_classification"
# Shorter than the task file's default inputs, to fit the time: a genre is clear from a passage's first 128 tokens.
FINETUNE_LENGTHS = {INPUTS: 128, TARGETS: 4}


def tau_steps(fraction: float, steps: int) -> int:
    """tau in steps: `fraction` of S, at least 1."""
    return max(1, round(fraction * steps))


def pretrain_bindings(context: ArmContext, tau: int | None, span: int = 1, every_tau: bool = False) -> dict[str, Any]:
    """A pre-training run of `span` x S steps with TAU=`tau` (0: SC; None: hybrid throughout), saving
    every S steps (`every_tau`: at every tau too)."""
    steps = context.settings["steps"]
    interval = math.gcd(steps, *(tau_steps(f, steps) for f in TAUS)) if every_tau else steps
    return {
        **context.settings["overrides"],
        "SEED": context.seed,
        "TAU": tau,
        "TRAIN_STEPS": span * steps,
        "checkpoints.CheckpointConfig.save_interval_steps": interval,
        "checkpoints.CheckpointConfig.max_to_keep": len(TAUS) + 2,
    }


def branch(source: Path, step: int, target: Path) -> None:
    """Copies `source`'s checkpoint at `step` into `target`'s own checkpoints, once."""
    from littlehelp import checkpoints  # pylint: disable=import-outside-toplevel

    if not checkpoints.finished_steps(target / "checkpoints"):
        shutil.copytree(source / "checkpoints" / str(step), target / "checkpoints" / str(step), dirs_exist_ok=True)


def sc_half(context: ArmContext) -> dict[str, Any]:
    """SC(S): SC(2S)'s step-S checkpoint, copied into this arm's folder."""
    steps, source = context.settings["steps"], context.folder_of("sc_2s")
    branch(source, steps, context.folder)
    return {"folder": str(context.folder), "last_step": steps, "train_flops": study.train_flops(source, 0, steps)}


def spactor(fraction: float) -> Callable[[ArmContext], dict[str, Any]]:
    """SpacTor(tau): the hybrid's checkpoint at tau, continued with span corruption to S."""

    def run(context: ArmContext) -> dict[str, Any]:
        steps, hybrid = context.settings["steps"], context.folder_of("hybrid")
        tau = tau_steps(fraction, steps)
        branch(hybrid, tau, context.folder)
        result = launch.train([PRETRAIN], pretrain_bindings(context, tau), context.folder)
        flops = study.train_flops(hybrid, 0, tau) + study.train_flops(context.folder, tau, steps)
        return {**study.trainer_outcome(result), "tau": tau, "train_flops": flops}

    return run


def sc_loss(context: ArmContext) -> float:
    """Validation span-corruption cross-entropy (clean inputs) of the arm's newest T5."""
    bindings = {
        **context.settings["overrides"],
        "TAU": 0,
        "TRAIN_STEPS": 1,
        "EVAL_BATCHES": context.settings["eval_batches"],
    }
    return launch.evaluate([PRETRAIN, "runs/eval.gin"], bindings, context.folder)["cross_entropy"]


def finetuned(context: ArmContext) -> dict[str, float]:
    """The downstream task's metrics after fine-tuning the arm's T5 on it (kept in the fine-tune folder's
    task_eval.json)."""
    from littlehelp import checkpoints  # pylint: disable=import-outside-toplevel

    folder, settings = context.folder / f"finetune_{TASK}", context.settings
    path = folder / "task_eval.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    pretrained = context.folder / "checkpoints"
    gin_files = [MODEL, "runs/finetune.gin", f"runs/downstream/{TASK}.gin", FINETUNE]
    bindings = {
        **settings["overrides"],
        "INITIAL_CHECKPOINT_PATH": repr(str(pretrained)),
        "TASK_FEATURE_LENGTHS": FINETUNE_LENGTHS,
        "TRAIN_STEPS": checkpoints.finished_steps(pretrained)[-1] + settings["finetune_steps"],
    }
    launch.train(gin_files, bindings, folder)
    scores = launch.evaluate(
        [*gin_files, "runs/eval.gin"],
        {**bindings, "EVAL_BATCHES": 1, "inference.task_metrics.max_examples": settings["eval_examples"]},
        folder,
    )
    values = {k.removeprefix("task/"): float(v) for k, v in scores.items() if k.startswith("task/")}
    path.write_text(json.dumps(values) + "\n", encoding="utf-8")
    return values


def hybrid_step_cost(context: ArmContext) -> float:
    """r: the FLOPs of the hybrid run's first step over those of the SC run's first step (same seed)."""
    return study.train_flops(context.folder, 0, 1) / study.train_flops(context.folder_of("sc_2s"), 0, 1)


def flops_fraction_of_sc_2s(context: ArmContext) -> float:
    """The arm's pre-training FLOPs over SC(2S)'s (same seed): the paper's convention."""
    return context.outcome()["train_flops"] / context.outcome("sc_2s")["train_flops"]


def past_midpoint(raw: Metric) -> Metric:
    """`raw` minus the mean of SC(S)'s and SC(2S)'s for the same seed (declared after `raw`, so that
    `raw` is measured, and cached, first)."""

    def compute(context: ArmContext) -> float:
        low, high = (study.measure(context.replace(a), raw) for a in ("sc_s", "sc_2s"))
        return study.measure(context, raw) - (low + high) / 2

    return Metric(
        f"{raw.name}_past_midpoint",
        f"{raw.label} past the SC midpoint",
        raw.higher_is_better,
        compute=compute,
        digits=raw.digits,
    )


GENRE_ACCURACY = Metric(
    "genre_accuracy", "genre accuracy %", True, compute=lambda context: finetuned(context)["accuracy"], digits=3
)
PRIMARY = past_midpoint(GENRE_ACCURACY)
METRICS = (
    GENRE_ACCURACY,
    Metric("sc_loss", "val SC loss", False, compute=sc_loss),
    Metric(
        "pretraining_flops",
        "pre-training FLOPs",
        None,
        compute=lambda context: context.outcome()["train_flops"],
        digits=3,
    ),
    Metric(
        "pretraining_flops_vs_sc_2s", "pre-training FLOPs / SC(2S)'s", None, compute=flops_fraction_of_sc_2s, digits=3
    ),
    Metric(
        "hybrid_step_cost",
        "r: hybrid step FLOPs / SC step FLOPs",
        None,
        compute=hybrid_step_cost,
        arms=("hybrid",),
        digits=3,
    ),
    PRIMARY,
)
ARMS = (
    Arm("sc_2s", gin_files=(PRETRAIN,), bindings=lambda context: pretrain_bindings(context, 0, span=2), label="SC(2S)"),
    Arm("sc_s", run=sc_half, label="SC(S)"),
    Arm(
        "hybrid",
        gin_files=(PRETRAIN,),
        bindings=lambda context: pretrain_bindings(context, None, every_tau=True),
        label="hybrid (S)",
    ),
    *(Arm(f"spactor_{f:g}", run=spactor(f), label=f"SpacTor(tau = {f:g} S)") for f in TAUS),
)
CLAIMS = tuple(
    Claim(
        f"spactor_{f:g}_{PRIMARY.name}",
        f"SpacTor(tau = {f:g} S) at S steps is at least as good as SC at 2S on "
        f"{GENRE_ACCURACY.label}, read as: better than the mean of SC(S) and SC(2S) (a margin of half what doubling "
        "SC's steps gains)",
        PRIMARY.name,
        f"spactor_{f:g}",
        separation=("sc_2s", "sc_s"),
    )
    for f in TAUS
)

STUDY = Study(
    name="spactor",
    title="SpacTor at S steps vs span corruption at S and 2S, after fine-tuning",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=ARMS,
    metrics=METRICS,
    claims=CLAIMS,
    # 5 seeds and 1024 of the 1248 held-out passages: 3 seeds and 256 passages separated SC(S) from SC(2S) by
    # 5.7 +- 1.0 points, a 95% interval of [1.3, 10.1] with 2 degrees of freedom.
    seeds=5,
    settings={"steps": 200, "finetune_steps": 50, "eval_examples": 1024, "eval_batches": 8, "overrides": {}},
    quick={
        "steps": 4,
        "finetune_steps": 2,
        "eval_examples": 4,
        "eval_batches": 1,
        "overrides": {
            "t5.T5Config.emb_dim": 32,
            "t5.T5Config.mlp_dim": 64,
            "t5.T5Config.num_heads": 2,
            "t5.T5Config.num_encoder_layers": 1,
            "t5.T5Config.num_decoder_layers": 1,
            "BATCH_SIZE": 4,
            "partitioning.MeshConfig.data": 1,
        },
    },
    quick_seeds=1,
)
