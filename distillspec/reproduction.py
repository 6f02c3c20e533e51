"""DistillSpec on SmolLM2-135M: distilled against undistilled drafts, on-policy against fixed data, and the speed-up.

Target: SmolLM2-135M-Instruct (its converted run folder), frozen. The undistilled draft
(gin `distillspec/draft_smollm2.gin`, 15.5M parameters, draft_steps plain LM steps) is one run shared by every
seed; each distilled draft continues it distill_steps steps (gin `distillspec/distill_smollm2.gin`, the divergence
averaged per sequence as in the paper), one per divergence (FKL, RKL, JSD, TVD) x data source named in drafts: by
default fixed text and on-policy (draft-generated) data, 8 drafts (adding target-generated data gives the full grid
of 12). A seed sets the distillation runs' SEED (data order, sampling keys) and draws 2 x prompts_per_domain
distinct held-out prompts per domain (Shakespeare's held-out plays, the standard library's held-out modules,
HumanEval): the first half (evaluation) is what every metric is measured on, the second (selection) only chooses
the best drafts (of all distilled drafts, of the fixed-data ones and of the on-policy ones), by greedy block
efficiency at max_gamma and by alpha, so no draft is scored on the prompts that chose it. Scoring
(`distillspec.acceptance`) on the target's greedy and temperature-1 continuations: the exact replayed greedy block
efficiency and alpha = E[1 - TVD(p, q)]. Wall clock (`wall_clock`): target-only and greedy
speculative decoding with the undistilled and the best greedy draft timed in turn (median of timing_repeats) at
batch 1 and 8; the claims read gamma speedup_gamma, fixed in advance. Lossy decoding (lenience p/eps) of the best
greedy draft is drawn against eps. The claims follow the paper (arXiv 2310.08461): distillation aligns the draft
with the target, on-policy data beats fixed data, and the distilled draft speeds speculative decoding up.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from littlehelp.features import TARGETS
from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study, StudyError, trainer_outcome

if TYPE_CHECKING:
    from distillspec.acceptance import References

DIVERGENCES, SOURCES = ("fkl", "rkl", "jsd", "tvd"), ("fixed", "target", "draft")
SOURCE_NAMES = {"fixed": "fixed data", "target": "target-generated", "draft": "on-policy"}
DISTILLED = tuple(f"{d}_{s}" for d in DIVERGENCES for s in SOURCES)
FIXED, ON_POLICY = (tuple(f"{d}_{source}" for d in DIVERGENCES) for source in ("fixed", "draft"))
SCORES = ("greedy_tau", "greedy_acceptance", "alpha", "expected_tau")
SPEEDUPS = {(1, 0.0): "speedup_b1_greedy", (8, 0.0): "speedup_b8_greedy"}
Pair = tuple[Any, Any]


@functools.cache
def smollm2() -> tuple[Pair, Any]:
    """SmolLM2-135M-Instruct as (model, params), from the converted run folder the distillation's frozen target
    reads, and its vocabulary; loaded once per process."""
    from littlehelp import runs  # pylint: disable=import-outside-toplevel
    from littlehelp.models.convert import run_folder  # pylint: disable=import-outside-toplevel

    target = runs.load_run(run_folder.converted("smollm2_135m"))
    return (target.model, target.params), target.vocabulary


def models(folder: Path) -> tuple[Pair, Pair]:
    """(target, draft) with params as jax arrays, the draft read from its run folder."""
    from distillspec import speculative  # pylint: disable=import-outside-toplevel
    from littlehelp import runs  # pylint: disable=import-outside-toplevel

    return speculative.pair(smollm2()[0], runs.load_run(folder))


@functools.cache
def seed_references(seed: int, per_domain: int, prompt_tokens: int, max_new_tokens: int, max_gamma: int) -> dict:
    """This seed's evaluation and selection references (`acceptance.split_references`), built once."""
    from distillspec import acceptance  # pylint: disable=import-outside-toplevel

    return acceptance.split_references(*smollm2(), per_domain, prompt_tokens, max_new_tokens, max_gamma, seed)


def references_of(context: ArmContext) -> dict:
    s = context.settings
    return seed_references(
        context.seed, *(s[k] for k in ("prompts_per_domain", "prompt_tokens", "max_new_tokens", "max_gamma"))
    )


def scored(context: ArmContext, pair: tuple[Pair, Pair]) -> dict[str, Any]:
    """A draft's scores on the evaluation prompts (its values: SCORES at max_gamma) and the selection prompts."""
    from distillspec import acceptance  # pylint: disable=import-outside-toplevel

    s, refs = context.settings, references_of(context)
    (evaluation, agreement), (selection, _) = (
        acceptance.score(*pair, refs[split], s["max_new_tokens"], s["max_gamma"])
        for split in ("evaluation", "selection")
    )
    headline = lambda scores: {k: scores[k][-1] if k == "greedy_tau" else scores[k] for k in SCORES}  # noqa: E731
    return {
        "values": headline(evaluation),
        "scores": evaluation,
        "selection": headline(selection),
        "agreement": agreement.tolist(),
    }


def decoded(context: ArmContext, pair: tuple[Pair, Pair], outcome: dict[str, Any], lossy: bool) -> dict[str, Any]:
    """Wall clock on the evaluation prompts (values gain the speed-ups at speedup_gamma); lossy decoding."""
    s, refs = context.settings, references_of(context)["evaluation"]
    timing = wall_clock(
        *pair,
        refs,
        np.array(outcome["agreement"], bool),
        s["decoding"],
        s["timing_gammas"],
        s["max_new_tokens"],
        s["timing_repeats"],
        context.seed,
    )
    measured = {(r["batch"], r["temperature"]): r["speedup"] for r in timing if r["gamma"] == s["speedup_gamma"]}
    extra = (
        {
            "lossy": lossy_decoding(
                *pair, refs, s["lenience_eps"], s["lossy_gamma"], s["max_new_tokens"], s["timing_repeats"], context.seed
            )
        }
        if lossy
        else {}
    )
    return {
        "timing": timing,
        "values": {**outcome["values"], **{n: measured.get(k) for k, n in SPEEDUPS.items()}},
        **extra,
    }


def wall_clock(
    target: tuple[Any, Any],
    draft: tuple[Any, Any],
    refs: References,
    agreement: np.ndarray,
    modes: Sequence[tuple[int, float]],
    gammas: Sequence[int],
    max_new_tokens: int,
    repeats: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Target-only against speculative decoding (`speculative.time_against_target`) of the references' prompts
    at each (batch, temperature) of `modes` (rows by `speculative.batch_rows`) and each gamma; greedy
    records add the block efficiency replayed from `agreement` (the draft's on `refs`) and whether the
    tokens equal target-only decoding's."""
    # pylint: disable=import-outside-toplevel
    from distillspec import acceptance, speculative
    from littlehelp.decoding import Sampling

    records = []
    for (batch, temperature), gamma in itertools.product(modes, gammas):
        calls = speculative.batch_rows(refs.domains, batch)
        plan = speculative.Plan(gamma, max_new_tokens, Sampling(temperature=temperature))
        timing = speculative.time_against_target(
            target, draft, [(refs.prompts[r], refs.lengths[r]) for r in calls], plan, repeats, seed
        )
        record = {"batch": batch, "temperature": temperature, "gamma": gamma, **timing.record()}
        if temperature == 0:
            rows = [i for call in calls for i in call]
            record.update(
                tokens_equal=timing.tokens_equal,
                replayed_block_efficiency=acceptance.greedy_block_efficiency(agreement[rows], gamma, max_new_tokens),
            )
        records.append(record)
    return records


def lossy_decoding(
    target: tuple[Any, Any],
    draft: tuple[Any, Any],
    refs: References,
    eps_values: Sequence[float],
    gamma: int,
    max_new_tokens: int,
    repeats: int,
    seed: int,
) -> list[dict[str, float]]:
    """Lenience p/eps at temperature 1 over the references' prompts in calls of 8, each eps timed in turn with
    target-only decoding: acceptance, block efficiency, speed-up and the target's mean log-likelihood of
    each output."""
    # pylint: disable=import-outside-toplevel
    from distillspec import acceptance, speculative
    from littlehelp.decoding import Sampling

    calls = [(refs.prompts[i : i + 8], refs.lengths[i : i + 8]) for i in range(0, len(refs.lengths), 8)]

    def likelihood(outputs):
        return float(np.mean([acceptance.target_log_likelihood(target, p, n, t) for (p, n), t in zip(calls, outputs)]))

    records = []
    for eps in eps_values:
        plan = speculative.Plan(
            gamma, max_new_tokens, Sampling(temperature=1.0), None, speculative.Lenience("p/eps", eps)
        )
        timing = speculative.time_against_target(target, draft, calls, plan, repeats, seed)
        records.append(
            {
                "eps": eps,
                **timing.record(),
                "target_log_likelihood": likelihood(timing.speculative_tokens),
                "target_only_log_likelihood": likelihood(timing.target_only_tokens),
            }
        )
    return records


def check_drafts(drafts: list[str], known: tuple[str, ...] = DISTILLED, study: str = "distillspec") -> None:
    """Refuses a drafts setting with a name not in `known`, or without a fixed-data and an on-policy draft (the
    claims compare them)."""
    unknown = [d for d in drafts if d not in known]
    if unknown:
        raise StudyError(f"{study}: drafts names {unknown[0]!r}, not one of {', '.join(known)}")
    for pool, source in ((FIXED, "fixed"), (ON_POLICY, "draft")):
        if not set(pool) & set(drafts):
            raise StudyError(
                f"{study}: drafts {drafts} has no {SOURCE_NAMES[source]} draft (one of "
                f"{', '.join(pool)}); the claims compare on-policy with fixed data"
            )


def draft_bindings(context: ArmContext) -> dict[str, Any]:
    """The shared undistilled draft's run, once the drafts setting is checked."""
    check_drafts(context.settings["drafts"])
    return {
        "TRAIN_STEPS": context.settings["draft_steps"],
        **context.settings["draft_bindings"],
        **context.settings["train_bindings"],
    }


def undistilled(context: ArmContext) -> dict[str, Any]:
    """The shared undistilled draft, scored and timed on this seed's prompts."""
    pair = models(context.folder_of("draft"))
    outcome = scored(context, pair)
    return {**outcome, **decoded(context, pair, outcome, lossy=False)}


def distill_bindings(context: ArmContext, divergence: str, source: str) -> dict[str, Any]:
    """The distillation run from the shared draft (the old script's bindings); SEED is the study's seed."""
    s = context.settings
    return {
        "INITIAL_CHECKPOINT_PATH": repr(str(context.folder_of("draft"))),
        "DIVERGENCE": repr(divergence),
        "DATA_SOURCE": repr(source),
        "PROMPT_LENGTH": s["distill_prompt_length"],
        "GENERATION_LENGTH": s["distill_generation_length"],
        "TASK_FEATURE_LENGTHS": {TARGETS: s["distill_prompt_length"] + s["distill_generation_length"]},
        "optimizers.constant_schedule.learning_rate": s["distill_learning_rate"],
        "trainer.train.eval_every": 10**9,
        "trainer.train.log_every": 1,
        "checkpoints.CheckpointConfig.save_interval_steps": s["distill_steps"],
        "TRAIN_STEPS": context.outcome("draft")["last_step"] + s["distill_steps"],
        "SEED": context.seed,
        **s["train_bindings"],
    }


def distilled_arm(divergence: str, source: str) -> Arm:
    """The draft distilled with `divergence` on `source` data, scored; skipped unless named in settings["drafts"]."""
    name = f"{divergence}_{source}"

    def run(context: ArmContext) -> dict[str, Any]:
        from littlehelp import launch  # pylint: disable=import-outside-toplevel

        if name not in context.settings["drafts"]:
            return {"skipped": True, "values": dict.fromkeys(SCORES)}
        result = launch.require_finished(
            launch.train(
                "distillspec/distill_smollm2.gin", distill_bindings(context, divergence, source), context.folder
            )
        )
        return {**trainer_outcome(result), **scored(context, models(context.folder))}

    return Arm(name, run=run, label=f"{divergence.upper()}, {SOURCE_NAMES[source]}")


def best_arm(name: str, criterion: str, pool: tuple[str, ...], label: str, decode: bool = False) -> Arm:
    """The draft of `pool` that ran with the highest `criterion` on the selection prompts, with its evaluation
    values (and, with `decode`, its wall clock and lossy decoding)."""

    def run(context: ArmContext) -> dict[str, Any]:
        ran = [a for a in pool if not context.outcome(a).get("skipped")]
        chosen = max(ran, key=lambda a: context.outcome(a)["selection"][criterion])
        outcome = {"chosen": chosen, **{k: context.outcome(chosen)[k] for k in ("values", "scores", "agreement")}}
        if not decode:
            return outcome
        return {**outcome, **decoded(context, models(context.folder_of(chosen)), outcome, lossy=True)}

    return Arm(name, run=run, label=label)


def ratio(metric: str) -> Callable[[ArmContext], float | None]:
    """The arm's `metric` over the undistilled draft's, same seed (None for a skipped arm)."""

    def compute(context: ArmContext) -> float | None:
        value = context.outcome()["values"][metric]
        return None if value is None else value / context.outcome("undistilled")["values"][metric]

    return compute


def records_curve(name: str, label: str, key: str, x: str, y: str, **where: float) -> Curve:
    """`y` against `x` over the records outcome[key] that match `where` (none for arms without them)."""

    def read(context: ArmContext) -> tuple[list[float], list[float]]:
        records = [r for r in context.outcome().get(key, []) if all(r[k] == v for k, v in where.items())]
        return [r[x] for r in records], [r[y] for r in records]

    return Curve(name, label, x, read)


def tau_by_gamma(context: ArmContext) -> tuple[list[int], list[float]]:
    taus = context.outcome().get("scores", {}).get("greedy_tau", [])
    return list(range(1, len(taus) + 1)), taus


CHOSEN = "chosen on the selection prompts"
CLAIMS = (
    Claim(
        "greedy_block_efficiency",
        f"Greedy: the best distilled draft ({CHOSEN}) has a higher block efficiency at "
        "max_gamma than the undistilled draft",
        "greedy_tau",
        "best_greedy",
        "undistilled",
    ),
    Claim(
        "greedy_block_efficiency_1.3x",
        f"Greedy: the best distilled draft ({CHOSEN}) reaches 1.3x the undistilled "
        "draft's block efficiency at max_gamma",
        "greedy_tau_ratio",
        "best_greedy",
        threshold=1.3,
    ),
    Claim(
        "acceptance",
        f"Temperature 1: the best distilled draft ({CHOSEN}) has a higher alpha = E[1 - TVD] than "
        "the undistilled draft",
        "alpha",
        "best_sampled",
        "undistilled",
    ),
    Claim(
        "expected_block_efficiency_1.3x",
        f"Temperature 1: the best distilled draft ({CHOSEN}) reaches 1.3x the "
        "undistilled draft's expected block efficiency at max_gamma",
        "expected_tau_ratio",
        "best_sampled",
        threshold=1.3,
    ),
    Claim(
        "on_policy_beats_fixed_greedy",
        f"Greedy: the best on-policy draft has a higher block efficiency at "
        f"max_gamma than the best fixed-data draft (each {CHOSEN})",
        "greedy_tau",
        "best_on_policy_greedy",
        "best_fixed_greedy",
    ),
    Claim(
        "on_policy_beats_fixed_alpha",
        f"Temperature 1: the best on-policy draft has a higher alpha than the best fixed-data draft (each {CHOSEN})",
        "alpha",
        "best_on_policy_sampled",
        "best_fixed_sampled",
    ),
    Claim(
        "faster_than_undistilled",
        "Greedy, batch 1: speculative decoding is faster with the best greedy draft "
        "than with the undistilled draft (speed-up over target-only, gamma speedup_gamma)",
        "speedup_b1_greedy",
        "best_greedy",
        "undistilled",
    ),
    Claim(
        "speedup_batch_1",
        "Greedy speculative decoding with the best greedy draft is at least 2x as fast as "
        "target-only decoding at batch 1 (gamma speedup_gamma)",
        "speedup_b1_greedy",
        "best_greedy",
        threshold=2.0,
    ),
    Claim(
        "speedup_batch_8",
        "Greedy speculative decoding with the best greedy draft is faster than target-only "
        "decoding at batch 8 (gamma speedup_gamma)",
        "speedup_b8_greedy",
        "best_greedy",
        threshold=1.0,
    ),
)
RATIO_ARMS, TIMED_ARMS = (*DISTILLED, "best_greedy", "best_sampled"), ("undistilled", "best_greedy")

STUDY = Study(
    name="distillspec",
    title="DistillSpec: distilled drafts and speculative decoding with SmolLM2-135M",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=(
        Arm(
            "draft",
            gin_files=("distillspec/draft_smollm2.gin",),
            per_seed=False,
            label="undistilled draft, trained",
            bindings=draft_bindings,
        ),
        Arm("undistilled", run=undistilled, label="undistilled"),
        *itertools.starmap(distilled_arm, itertools.product(DIVERGENCES, SOURCES)),
        best_arm("best_greedy", "greedy_tau", DISTILLED, "best distilled, greedy", decode=True),
        best_arm("best_sampled", "alpha", DISTILLED, "best distilled, T=1"),
        best_arm("best_fixed_greedy", "greedy_tau", FIXED, "best fixed-data, greedy"),
        best_arm("best_on_policy_greedy", "greedy_tau", ON_POLICY, "best on-policy, greedy"),
        best_arm("best_fixed_sampled", "alpha", FIXED, "best fixed-data, T=1"),
        best_arm("best_on_policy_sampled", "alpha", ON_POLICY, "best on-policy, T=1"),
    ),
    metrics=(
        Metric("greedy_tau", "greedy block efficiency at max_gamma", True),
        Metric("greedy_acceptance", "greedy acceptance (draft argmax = target's)", True),
        Metric("alpha", "alpha = E[1 - TVD] at T=1", True),
        Metric("expected_tau", "expected block efficiency at T=1, max_gamma", True),
        Metric("greedy_tau_ratio", "greedy block efficiency / undistilled's", True, ratio("greedy_tau"), RATIO_ARMS),
        Metric(
            "expected_tau_ratio", "expected block efficiency / undistilled's", True, ratio("expected_tau"), RATIO_ARMS
        ),
        *(
            Metric(name, f"speed-up over target-only, batch {b}, greedy", True, arms=TIMED_ARMS, digits=3)
            for (b, _), name in SPEEDUPS.items()
        ),
    ),
    claims=CLAIMS,
    seeds=3,
    # The full grid: "drafts": list(DISTILLED), adding the four target-generated drafts to the best drafts' pool.
    settings={
        "draft_steps": 200,
        "distill_steps": 30,
        "distill_learning_rate": 1e-2,
        "distill_prompt_length": 32,
        "distill_generation_length": 32,
        "drafts": [*FIXED, *ON_POLICY],
        "prompts_per_domain": 8,
        "prompt_tokens": 64,
        "max_new_tokens": 32,
        "max_gamma": 7,
        "decoding": [list(k) for k in SPEEDUPS],
        "timing_gammas": [1, 3],
        "timing_repeats": 3,
        "speedup_gamma": 3,
        "lossy_gamma": 5,
        "lenience_eps": [1.0, 0.2, 0.05],
        "draft_bindings": {},
        "train_bindings": {},
    },
    # A fixed-data and an on-policy draft, three prompts, batch-1 greedy timing only, no lossy decoding (the
    # tests of wall_clock and lossy_decoding cover the rest on tiny models); one mesh device (the tests fake eight).
    quick={
        "draft_steps": 1,
        "distill_steps": 1,
        "distill_prompt_length": 8,
        "distill_generation_length": 8,
        "drafts": ["jsd_fixed", "jsd_draft"],
        "prompts_per_domain": 1,
        "prompt_tokens": 8,
        "max_new_tokens": 4,
        "max_gamma": 2,
        "decoding": [[1, 0.0]],
        "timing_gammas": [2],
        "timing_repeats": 1,
        "speedup_gamma": 2,
        "lossy_gamma": 2,
        "lenience_eps": [],
        "draft_bindings": {"TASK_FEATURE_LENGTHS": {TARGETS: 32}},
        "train_bindings": {"BATCH_SIZE": 2, "partitioning.MeshConfig.data": 1},
    },
    quick_seeds=1,
    curves=(
        Curve("greedy_tau_by_gamma", "greedy block efficiency (evaluation prompts)", "gamma", tau_by_gamma),
        records_curve(
            "speedup_by_gamma",
            "speed-up over target-only, batch 1, greedy",
            "timing",
            "gamma",
            "speedup",
            batch=1,
            temperature=0.0,
        ),
        records_curve("lossy_acceptance", "lossy decoding (p/eps, T=1): acceptance", "lossy", "eps", "acceptance"),
        records_curve(
            "lossy_log_likelihood",
            "lossy decoding: target's log-likelihood of the output",
            "lossy",
            "eps",
            "target_log_likelihood",
        ),
    ),
)
