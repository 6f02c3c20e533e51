"""SpacTor(tau) for S steps against span corruption (SC) for 2S, after fine-tuning (`littlehelp study spactor`).

Per seed (initialisation and data order) every run pre-trains a T5 on the plays + standard-library
code mixture (`gin/spactor/small.gin`): SC for 2S steps, whose step-S checkpoint (copied into its own
folder) is SC(S); the hybrid objective (SC + generator MLM + replaced-token detection) for S steps;
SpacTor(tau): the hybrid's checkpoint at tau (copied) continued with span corruption to S, the state a
run with TAU=tau reaches. Each pre-trained T5 is scored on clean validation span corruption, then
fine-tuned `finetune_steps` steps (same learning rate and batch for all) on each downstream task
(`gin/runs/downstream/`) and scored with the task's metrics on its held-out split (greedy decoding).
Pre-training FLOPs come from the runs' own per-step counts. "Past the midpoint" is an arm's value
minus the mean of SC(S)'s and SC(2S)'s for the same seed.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from littlehelp import launch, study
from littlehelp.study import Arm, ArmContext, Claim, Metric, Study

PRETRAIN, MODEL, FINETUNE = "spactor/small.gin", "spactor/small_model.gin", "spactor/finetune.gin"
TAUS = (0.25, 0.5)  # tau as fractions of S
# Shorter than the task files' defaults, to fit the time: a genre is clear from a passage's first 128
# tokens, and 32 target tokens hold most summaries' first line.
FINETUNE_LENGTHS = {"genre_classification": {"inputs": 128, "targets": 4},
                    "code_summarisation": {"inputs": 192, "targets": 32}}


def tau_steps(fraction: float, steps: int) -> int:
    """tau in steps: `fraction` of S, at least 1."""
    return max(1, round(fraction * steps))


def pretrain_bindings(context: ArmContext, tau: int | None, span: int = 1, every_tau: bool = False) -> dict[str, Any]:
    """A pre-training run of `span` x S steps with TAU=`tau` (0: SC; None: hybrid throughout), saving
    every S steps (`every_tau`: at every tau too)."""
    steps = context.settings["steps"]
    interval = math.gcd(steps, *(tau_steps(f, steps) for f in TAUS)) if every_tau else steps
    return {**context.settings["overrides"], "SEED": context.seed, "TAU": tau, "TRAIN_STEPS": span * steps,
            "checkpoints.CheckpointConfig.save_interval_steps": interval,
            "checkpoints.CheckpointConfig.max_to_keep": len(TAUS) + 2}


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
    bindings = {**context.settings["overrides"], "TAU": 0, "TRAIN_STEPS": 1,
                "EVAL_BATCHES": context.settings["eval_batches"]}
    return launch.evaluate([PRETRAIN, "runs/eval.gin"], bindings, context.folder)["cross_entropy"]


def finetuned(context: ArmContext, task: str) -> dict[str, float]:
    """The task's metrics after fine-tuning the arm's T5 on it (kept in the fine-tune folder's task_eval.json)."""
    from littlehelp import checkpoints  # pylint: disable=import-outside-toplevel

    folder, settings = context.folder / f"finetune_{task}", context.settings
    path = folder / "task_eval.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    pretrained = context.folder / "checkpoints"
    gin_files = [MODEL, "runs/finetune.gin", f"runs/downstream/{task}.gin", FINETUNE]
    bindings = {**settings["overrides"], "INITIAL_CHECKPOINT_PATH": repr(str(pretrained)),
                "TASK_FEATURE_LENGTHS": FINETUNE_LENGTHS[task],
                "TRAIN_STEPS": checkpoints.finished_steps(pretrained)[-1] + settings["finetune_steps"]}
    launch.train(gin_files, bindings, folder)
    scores = launch.evaluate([*gin_files, "runs/eval.gin"], {**bindings, "EVAL_BATCHES": 1,
                             "inference.task_metrics.max_examples": settings["eval_examples"]}, folder)
    values = {k.removeprefix("task/"): float(v) for k, v in scores.items() if k.startswith("task/")}
    path.write_text(json.dumps(values) + "\n", encoding="utf-8")
    return values


def task_metric(name: str, label: str, task: str, key: str) -> Metric:
    """A downstream task's metric after fine-tuning."""
    return Metric(name, label, True, compute=lambda context: finetuned(context, task)[key], digits=3)


def past_midpoint(raw: Metric) -> Metric:
    """`raw` minus the mean of SC(S)'s and SC(2S)'s for the same seed (declared after `raw`, so that
    `raw` is measured, and cached, first)."""
    def compute(context: ArmContext) -> float:
        low, high = (study.measure(context.replace(a), raw) for a in ("sc_s", "sc_2s"))
        return study.measure(context, raw) - (low + high) / 2
    return Metric(f"{raw.name}_past_midpoint", f"{raw.label} past the SC midpoint", raw.higher_is_better,
                  compute=compute, digits=raw.digits)


HEADLINE = (Metric("sc_loss", "val SC loss", False, compute=sc_loss),
            task_metric("genre_accuracy", "genre accuracy %", "genre_classification", "accuracy"),
            task_metric("code_rouge_l", "code ROUGE-L", "code_summarisation", "rougeL"))
FLOPS_METRIC = Metric("pretraining_flops", "pre-training FLOPs", False,
                      compute=lambda context: context.outcome()["train_flops"], digits=3)
ARMS = (Arm("sc_2s", gin_files=(PRETRAIN,), bindings=lambda context: pretrain_bindings(context, 0, span=2),
            label="SC(2S)"),
        Arm("sc_s", run=sc_half, label="SC(S)"),
        Arm("hybrid", gin_files=(PRETRAIN,), bindings=lambda context: pretrain_bindings(context, None, every_tau=True),
            label="hybrid (S)"),
        *(Arm(f"spactor_{f:g}", run=spactor(f), label=f"SpacTor(tau = {f:g} S)") for f in TAUS))
CLAIMS = tuple(
    Claim(f"spactor_{f:g}_{m.name}", f"SpacTor(tau = {f:g} S) at S steps is at least as good as SC at 2S on "
          f"{m.label}, read as: better than the mean of SC(S) and SC(2S) (a margin of half what doubling SC's "
          "steps gains)", f"{m.name}_past_midpoint", f"spactor_{f:g}", separation=("sc_2s", "sc_s"))
    for f in TAUS for m in HEADLINE)

STUDY = Study(
    name="spactor",
    title="SpacTor at S steps vs span corruption at S and 2S, after fine-tuning",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=ARMS,
    metrics=(*HEADLINE, task_metric("code_exact_match", "code exact match %", "code_summarisation", "exact_match"),
             FLOPS_METRIC, *map(past_midpoint, HEADLINE)),
    claims=CLAIMS,
    seeds=3,
    settings={"steps": 200, "finetune_steps": 50, "eval_examples": 256, "eval_batches": 8, "overrides": {}},
    quick={"steps": 4, "finetune_steps": 2, "eval_examples": 4, "eval_batches": 1,
           "overrides": {"t5.T5Config.emb_dim": 32, "t5.T5Config.mlp_dim": 64, "t5.T5Config.num_heads": 2,
                         "t5.T5Config.num_encoder_layers": 1, "t5.T5Config.num_decoder_layers": 1,
                         "BATCH_SIZE": 4, "partitioning.MeshConfig.data": 1}},
    quick_seeds=1,
)
