"""DistillSpec on the paper's kind of pair: T5 drafts for a T5 target fine-tuned on code summarisation.

Target (gin `distillspec/t5_target.gin`, 6.2M parameters) and draft (gin `distillspec/t5_draft.gin`, 1 + 1
layers, 2.5M parameters) are T5 v1.1 models trained from scratch on code_summarisation (a standard-library
function's source -> its docstring's first line), the draft for fewer steps; each is one run shared by every
seed. Each distilled draft continues the draft distill_steps steps towards the frozen target
(gin `distillspec/distill_t5.gin`: both models read the function's source through their encoders, the divergence
is taken over the whole summary, averaged per sequence as in the paper), one per divergence (FKL, RKL, JSD, TVD)
x data source named in drafts: by default fixed data (the task's summaries) and on-policy (sampled from the
draft), 8 drafts. A control continues the draft as many steps on the task's own labels (no target), on the
batches the fixed-data distillations read. A seed sets these runs' SEED and draws 2 x examples_per_split
distinct held-out functions (the task's validation modules): the first half (evaluation) is what every metric
is measured on, the second (selection) only chooses the best drafts (of all, of the fixed-data ones, of the
on-policy ones) by greedy block efficiency at gamma 7, so no draft is scored on the inputs that chose it.
Scoring (`distillspec.acceptance`, on the target's greedy and temperature-1 summaries, each ending at its EOS):
the exact replayed greedy block efficiency at gamma 3 and 7 (the paper's primary metric) and alpha =
E[1 - TVD(p, q)]. The speculative engine then decodes every evaluation input greedily with the undistilled and
the best draft at gamma 3 and 7 (`speculative.generate` with encoder inputs): its output must be the target's
greedy output, row for row. The claims follow the paper (arXiv 2310.08461, +10-45% block efficiency for T5
drafts): the best distilled draft reaches 1.1x the undistilled draft's greedy block efficiency at gamma 7;
greedy speculative output equals the target's (a check that must hold). Exploratory: the same at gamma 3, the
best draft against the control, on-policy against fixed data.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distillspec.reproduction import (
    DIVERGENCES,
    FIXED,
    ON_POLICY,
    SOURCE_NAMES,
    best_arm,
    check_drafts,
    ratio,
    tau_by_gamma,
)
from littlehelp.features import ENCODER_INPUT_TOKENS, INPUTS, TARGETS
from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study, trainer_outcome

TARGET_GIN, DRAFT_GIN = "distillspec/t5_target.gin", "distillspec/t5_draft.gin"
DISTILL_GIN = "distillspec/distill_t5.gin"
SOURCES = ("fixed", "draft")
DISTILLED = (*FIXED, *ON_POLICY)
GAMMAS = (3, 7)
SCORES = (*(f"greedy_tau_{g}" for g in GAMMAS), "greedy_acceptance", "alpha")
TASK = "code_summarisation"
Pair = tuple[Any, Any]


def restored(folder: Path) -> Pair:
    """(model, params as jax arrays) of a T5 run folder (`runs.load_run`): its config.gin's model, its newest
    checkpoint's parameters."""
    # pylint: disable=import-outside-toplevel
    import jax
    import jax.numpy as jnp

    from littlehelp import runs

    run = runs.load_run(folder)
    return run.model, jax.tree.map(jnp.asarray, run.params)


@functools.cache
def target_of(folder: str) -> Pair:
    """The target, restored once per process."""
    return restored(Path(folder))


def held_out_sources(vocabulary: Any, count: int, inputs_length: int, seed: int) -> list[tuple[list[int], str]]:
    """(encoder row, summary) of the first `count` held-out examples of the task, in an order shuffled with `seed`,
    whose rows are new: the source's first `inputs_length - 1` tokens and EOS (as the task truncates them)."""
    from littlehelp.data import downstream  # pylint: disable=import-outside-toplevel

    examples = list(downstream.code_summarisation_examples("validation"))
    random.Random(f"{seed}-{TASK}").shuffle(examples)
    drawn: dict[tuple[int, ...], str] = {}
    for example in examples:
        row = (*(int(i) for i in vocabulary.encode(example.inputs)[: inputs_length - 1]), int(vocabulary.eos_id))
        drawn.setdefault(row, example.targets)
        if len(drawn) == count:
            return [(list(row), summary) for row, summary in drawn.items()]
    raise ValueError(f"held-out {TASK} inputs give {len(drawn)} distinct rows, fewer than the {count} asked")


@functools.cache
def seed_references(target_folder: str, seed: int, per_split: int, inputs_length: int, max_new_tokens: int) -> dict:
    """This seed's evaluation and selection references (the target's summaries of held-out sources, decoder
    prompt the start token 0) and the evaluation inputs' summaries; built once."""
    # pylint: disable=import-outside-toplevel
    from distillspec import acceptance
    from distillspec.speculative import padded_prompts
    from littlehelp.data import vocab

    drawn = held_out_sources(vocab.default_vocabulary(), 2 * per_split, inputs_length, seed)
    sources, _ = padded_prompts([row for row, _ in drawn], None)
    prompts, lengths = np.zeros((len(drawn), 1), np.int32), np.ones(len(drawn), np.int32)
    refs = acceptance.references(
        target_of(target_folder),
        prompts,
        lengths,
        [TASK] * len(drawn),
        max_new_tokens,
        max(GAMMAS),
        seed,
        {ENCODER_INPUT_TOKENS: sources},
    )
    return {
        "evaluation": refs.subset(range(per_split)),
        "selection": refs.subset(range(per_split, 2 * per_split)),
        "summaries": [summary for _, summary in drawn[:per_split]],
    }


def references_of(context: ArmContext) -> dict:
    s = context.settings
    return seed_references(
        str(context.folder_of("target")), context.seed, s["examples_per_split"], s["inputs_length"], s["max_new_tokens"]
    )


def pair_of(context: ArmContext, draft: str) -> tuple[Pair, Pair]:
    """(target, the draft of arm `draft`)."""
    return target_of(str(context.folder_of("target"))), restored(context.folder_of(draft))


def eos_id() -> int:
    """The task vocabulary's EOS id."""
    from littlehelp.data import vocab  # pylint: disable=import-outside-toplevel

    return int(vocab.default_vocabulary().eos_id)


def scored(context: ArmContext, pair: tuple[Pair, Pair]) -> dict[str, Any]:
    """A draft's scores on the evaluation inputs (its values: SCORES) and on the selection inputs."""
    from distillspec import acceptance  # pylint: disable=import-outside-toplevel

    refs, n = references_of(context), context.settings["max_new_tokens"]
    (evaluation, agreement), (selection, _) = (
        acceptance.score(*pair, refs[split], n, max(GAMMAS), eos_id()) for split in ("evaluation", "selection")
    )

    def headline(scores):
        return {
            **{f"greedy_tau_{g}": scores["greedy_tau"][g - 1] for g in GAMMAS},
            "greedy_acceptance": scores["greedy_acceptance"],
            "alpha": scores["alpha"],
        }

    return {
        "values": headline(evaluation),
        "scores": evaluation,
        "selection": headline(selection),
        "agreement": agreement.tolist(),
    }


def greedy_check(context: ArmContext, pair: tuple[Pair, Pair], agreement: list[list[bool]]) -> dict[str, Any]:
    """Greedy speculative decoding of every evaluation input at each of GAMMAS (one batched call each) against
    the target's greedy output: per gamma, the share of rows equal, the engine's block efficiency and the one
    replayed from `agreement`; the value greedy_output_equal is the share of rows equal at every gamma."""
    # pylint: disable=import-outside-toplevel
    from distillspec import acceptance, speculative

    refs, n, eos = references_of(context)["evaluation"], context.settings["max_new_tokens"], eos_id()
    expected = acceptance.until_eos(refs.greedy[:, 1 : 1 + n], eos)
    output_tokens, records, equal = acceptance.output_lengths(expected, eos), [], np.ones(len(expected), bool)
    for gamma in GAMMAS:
        decoded = speculative.generate(
            *pair,
            refs.prompts,
            prompt_lengths=refs.lengths,
            gamma=gamma,
            max_new_tokens=n,
            eos_id=eos,
            inputs=refs.inputs,
        )
        rows = np.all(decoded.tokens == expected, axis=1)
        equal &= rows
        records.append(
            {
                "gamma": gamma,
                "rows_equal": float(rows.mean()),
                "block_efficiency": decoded.stats.block_efficiency,
                "replayed_block_efficiency": acceptance.greedy_block_efficiency(
                    np.array(agreement), gamma, output_tokens
                ),
            }
        )
    return {"greedy_check": records, "greedy_output_equal": float(equal.mean())}


def checked(outcome: dict[str, Any], check: dict[str, Any], **extra: float) -> dict[str, Any]:
    """`outcome` with the greedy check's records and its value (and `extra` values)."""
    values = {**outcome["values"], "greedy_output_equal": check["greedy_output_equal"], **extra}
    return {**outcome, "values": values, "greedy_check": check["greedy_check"]}


def target_rouge_l(context: ArmContext) -> float:
    """ROUGE-L of the target's greedy summaries of the evaluation inputs (how well the target does the task)."""
    # pylint: disable=import-outside-toplevel
    from distillspec import acceptance
    from littlehelp.data import downstream, vocab

    refs, n, eos = references_of(context), context.settings["max_new_tokens"], eos_id()
    vocabulary = vocab.default_vocabulary()
    greedy = acceptance.until_eos(refs["evaluation"].greedy[:, 1 : 1 + n], eos)
    predictions = [vocabulary.decode([int(t) for t in row if t not in (0, eos)]) for row in greedy]
    return downstream.rouge_l(refs["summaries"], predictions)["rougeL"]


def sizes(context: ArmContext, model: str, scope: str = "") -> dict[str, Any]:
    """The settings' T5Config overrides of `model` ("target" or "draft"), as bindings in gin `scope`."""
    prefix = f"{scope}/" if scope else ""
    return {f"{prefix}t5.T5Config.{name}": value for name, value in context.settings["sizes"][model].items()}


def lengths(context: ArmContext) -> dict[str, int]:
    return {INPUTS: context.settings["inputs_length"], TARGETS: context.settings["targets_length"]}


def trained_bindings(model: str) -> Callable[[ArmContext], dict[str, Any]]:
    """The bindings of the shared target or draft run, once the drafts setting is checked."""

    def bindings(context: ArmContext) -> dict[str, Any]:
        check_drafts(context.settings["drafts"], DISTILLED, "distillspec_t5")
        return {
            "TRAIN_STEPS": context.settings[f"{model}_steps"],
            "TASK_FEATURE_LENGTHS": lengths(context),
            **sizes(context, model),
            **context.settings["train_bindings"],
        }

    return bindings


def undistilled(context: ArmContext) -> dict[str, Any]:
    """The shared undistilled draft, scored and checked on this seed's inputs; the target's ROUGE-L beside it."""
    pair = pair_of(context, "draft")
    outcome = scored(context, pair)
    return checked(outcome, greedy_check(context, pair, outcome["agreement"]), target_rougeL=target_rouge_l(context))


def continuation_bindings(context: ArmContext) -> dict[str, Any]:
    """What every run that continues the shared draft binds: distill_steps more steps at the distillation's
    constant learning rate, SEED the study's seed, the draft's sizes."""
    s = context.settings
    return {
        "TASK_FEATURE_LENGTHS": lengths(context),
        "optimizers.constant_schedule.learning_rate": s["distill_learning_rate"],
        "checkpoints.CheckpointConfig.save_interval_steps": s["distill_steps"],
        "TRAIN_STEPS": context.outcome("draft")["last_step"] + s["distill_steps"],
        "SEED": context.seed,
        **sizes(context, "draft"),
        **s["train_bindings"],
    }


def distill_bindings(context: ArmContext, divergence: str, source: str) -> dict[str, Any]:
    """The distillation run from the shared draft towards the shared target."""
    return {
        "INITIAL_CHECKPOINT_PATH": repr(str(context.folder_of("draft"))),
        "TARGET_DIR": repr(str(context.folder_of("target"))),
        "DIVERGENCE": repr(divergence),
        "DATA_SOURCE": repr(source),
        "GENERATION_LENGTH": context.settings["targets_length"],
        **continuation_bindings(context),
        **sizes(context, "target", scope="target"),
    }


def continued(context: ArmContext) -> dict[str, Any]:
    """The control: the shared draft trained as long as a distillation on the task's own labels (cross-entropy, no
    target), on the batches the fixed-data distillations read (same SEED, unpacked), scored."""
    from littlehelp import launch  # pylint: disable=import-outside-toplevel

    bindings = {
        "checkpoints.CheckpointConfig.restore_path": repr(str(context.folder_of("draft"))),
        "optimizers.adafactor.learning_rate": "@optimizers.constant_schedule()",
        "pipeline.DatasetConfig.pack": False,
        **continuation_bindings(context),
    }
    result = launch.require_finished(launch.train(DRAFT_GIN, bindings, context.folder))
    return {**trainer_outcome(result), **scored(context, pair_of(context, "continued"))}


def distilled_arm(divergence: str, source: str) -> Arm:
    """The draft distilled with `divergence` on `source` data, scored; skipped unless named in settings["drafts"]."""
    name = f"{divergence}_{source}"

    def run(context: ArmContext) -> dict[str, Any]:
        from littlehelp import launch  # pylint: disable=import-outside-toplevel

        if name not in context.settings["drafts"]:
            return {"skipped": True, "values": dict.fromkeys(SCORES)}
        result = launch.require_finished(
            launch.train(DISTILL_GIN, distill_bindings(context, divergence, source), context.folder)
        )
        return {**trainer_outcome(result), **scored(context, pair_of(context, name))}

    return Arm(name, run=run, label=f"{divergence.upper()}, {SOURCE_NAMES[source]}")


def best_checked_arm() -> Arm:
    """The best distilled draft by greedy block efficiency at gamma 7 on the selection inputs, with its
    evaluation values and the greedy check."""
    choose = best_arm("best_greedy", "greedy_tau_7", DISTILLED, "best distilled")

    def run(context: ArmContext) -> dict[str, Any]:
        outcome = choose.run(context)
        return checked(outcome, greedy_check(context, pair_of(context, outcome["chosen"]), outcome["agreement"]))

    return Arm(choose.name, run=run, label=choose.label)


CHOSEN = "chosen on the selection inputs"
CLAIMS = (
    Claim(
        "block_efficiency_1.1x",
        f"Greedy: the best distilled draft ({CHOSEN}) reaches 1.1x the undistilled "
        "draft's block efficiency at gamma 7 (the paper: +10-45%)",
        "greedy_tau_7_ratio",
        "best_greedy",
        threshold=1.1,
    ),
    Claim(
        "greedy_output_identical",
        "Greedy speculative decoding with the best distilled draft emits the target's "
        "greedy output on every evaluation input at gamma 3 and 7 (a check that must hold)",
        "greedy_output_equal",
        "best_greedy",
        threshold=0.999,
    ),
    Claim(
        "greedy_output_identical_undistilled",
        "Greedy speculative decoding with the undistilled draft emits the "
        "target's greedy output on every evaluation input at gamma 3 and 7 (a check that must hold)",
        "greedy_output_equal",
        "undistilled",
        threshold=0.999,
    ),
    Claim(
        "block_efficiency_1.1x_gamma_3",
        f"Greedy: the best distilled draft ({CHOSEN} at gamma 7) reaches 1.1x the "
        "undistilled draft's block efficiency at gamma 3",
        "greedy_tau_3_ratio",
        "best_greedy",
        threshold=1.1,
        exploratory=True,
    ),
    Claim(
        "distillation_beats_training_as_long",
        f"Greedy: the best distilled draft ({CHOSEN}) has a higher block "
        "efficiency at gamma 7 than the undistilled draft trained as many more steps on the task's own labels",
        "greedy_tau_7",
        "best_greedy",
        "continued",
        exploratory=True,
    ),
    Claim(
        "on_policy_beats_fixed",
        f"Greedy: the best on-policy draft has a higher block efficiency at gamma 7 than "
        f"the best fixed-data draft (each {CHOSEN})",
        "greedy_tau_7",
        "best_on_policy_greedy",
        "best_fixed_greedy",
        exploratory=True,
    ),
)
RATIO_ARMS, CHECKED_ARMS = ("continued", *DISTILLED, "best_greedy"), ("undistilled", "best_greedy")

STUDY = Study(
    name="distillspec_t5",
    title="DistillSpec: distilled T5 drafts for a T5 fine-tuned on code summarisation",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=(
        Arm(
            "target",
            gin_files=(TARGET_GIN,),
            per_seed=False,
            label="target, trained",
            bindings=trained_bindings("target"),
        ),
        Arm(
            "draft",
            gin_files=(DRAFT_GIN,),
            per_seed=False,
            label="undistilled draft, trained",
            bindings=trained_bindings("draft"),
        ),
        Arm("undistilled", run=undistilled, label="undistilled"),
        Arm("continued", run=continued, label="undistilled, trained as long on the labels"),
        *itertools.starmap(distilled_arm, itertools.product(DIVERGENCES, SOURCES)),
        best_checked_arm(),
        best_arm("best_fixed_greedy", "greedy_tau_7", FIXED, "best fixed-data"),
        best_arm("best_on_policy_greedy", "greedy_tau_7", ON_POLICY, "best on-policy"),
    ),
    metrics=(
        *(Metric(f"greedy_tau_{g}", f"greedy block efficiency, gamma {g}", True) for g in reversed(GAMMAS)),
        Metric("greedy_acceptance", "greedy acceptance (draft argmax = target's)", True),
        Metric("alpha", "alpha = E[1 - TVD] at T=1", True),
        *(
            Metric(
                f"greedy_tau_{g}_ratio",
                f"greedy block efficiency, gamma {g} / undistilled's",
                True,
                ratio(f"greedy_tau_{g}"),
                RATIO_ARMS,
            )
            for g in reversed(GAMMAS)
        ),
        Metric(
            "greedy_output_equal",
            "share of inputs whose greedy speculative output is the target's",
            True,
            arms=CHECKED_ARMS,
        ),
        Metric("target_rougeL", "the target's ROUGE-L on the evaluation inputs", None, arms=("undistilled",), digits=3),
    ),
    claims=CLAIMS,
    seeds=3,
    settings={
        "target_steps": 600,
        "draft_steps": 300,
        "distill_steps": 80,
        "distill_learning_rate": 3e-3,
        "drafts": list(DISTILLED),
        "inputs_length": 128,
        "targets_length": 40,
        "examples_per_split": 64,
        "max_new_tokens": 40,
        "sizes": {"target": {}, "draft": {}},
        "train_bindings": {},
    },
    # A fixed-data and an on-policy draft, narrower models, two inputs a split; one mesh device (the tests fake eight).
    quick={
        "target_steps": 2,
        "draft_steps": 1,
        "distill_steps": 1,
        "drafts": ["jsd_fixed", "jsd_draft"],
        "inputs_length": 16,
        "targets_length": 8,
        "examples_per_split": 2,
        "max_new_tokens": 8,
        "sizes": {
            "target": {
                "emb_dim": 32,
                "mlp_dim": 64,
                "num_heads": 2,
                "head_dim": 16,
                "num_encoder_layers": 1,
                "num_decoder_layers": 1,
                "scan_layers": False,
            },
            "draft": {"emb_dim": 16, "mlp_dim": 32, "num_heads": 1, "head_dim": 16, "scan_layers": False},
        },
        "train_bindings": {"BATCH_SIZE": 2, "partitioning.MeshConfig.data": 1},
    },
    quick_seeds=1,
    curves=(Curve("greedy_tau_by_gamma", "greedy block efficiency (evaluation inputs)", "gamma", tau_by_gamma),),
)
