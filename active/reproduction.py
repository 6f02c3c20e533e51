"""Active-learning selectors, large batches and low-churn retraining on bundled tables (`littlehelp study active`).

The protocol of arXiv 2210.03822 on scikit-learn's digits, breast_cancer and wine (no download): each
seed draws its own stratified 70/30 split (standardised with the pool's statistics) and random seed
set; labels are revealed only for selected examples. Model: an MLP (one hidden layer of 128, AdamW
for `model_steps` steps) retrained from the same initialisation every round (`active.loop.run`).
An arm is a selector, or margin retrained with distillation weight a; its metrics are per data set.
Three comparisons, each paired by seed:
1. every selector with small batches (seed set, batch, rounds per data set in the settings): the
   area under the accuracy curve (mean test accuracy over the labelled range) and the seconds a
   selector spends per round (building its pool fields and selecting; clustering included);
2. large batches (about 8% of the pool) on digits and breast_cancer: random, margin, Cluster-Margin;
3. low-churn retraining on digits and breast_cancer: margin with the loss (1 - a) CE(labels) +
   a CE(previous round's model); churn (the share of test predictions that change, mean over
   rounds) next to final accuracy. The a = 0 run is the margin arm itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study

DATASETS = ("digits", "breast_cancer", "wine")
LARGER = ("digits", "breast_cancer")  # the pools large enough for large batches and the churn runs
SELECTORS = ("random", "margin", "entropy", "least_confidence", "coreset", "badge", "cluster_margin", "iwes_ent")
LARGE_BATCH_SELECTORS = ("random", "margin", "cluster_margin")
ALPHAS = (0.25, 0.5, 0.75, 0.9)
CLAIM_ALPHA, ACCURACY_MARGIN = 0.5, 0.01  # the distillation weight the churn claims test; the accuracy it may lose
CHURN_ARMS = tuple(f"margin_a{a:g}" for a in ALPHAS)


def run_loop(context: ArmContext, dataset: str, schedule: list[int], selector: str, alpha: float) -> list:
    """One `active.loop.run` on this seed's split of `dataset`; schedule is (seed set, batch, rounds)."""
    from active import data, loop, models  # pylint: disable=import-outside-toplevel (jax)

    split = data.load(dataset, context.seed)
    seed_size, batch_size, rounds = schedule
    return loop.run(
        split.train_features,
        split.train_labels,
        split.test_features,
        split.test_labels,
        selector=selector,
        seed_size=seed_size,
        batch_size=batch_size,
        rounds=rounds,
        seed=context.seed,
        churn_alpha=alpha,
        num_classes=split.num_classes,
        model_config=models.ModelConfig(steps=context.settings["model_steps"]),
    )


def summary(records: list, key: str) -> dict[str, float]:
    """A run's area under the accuracy curve, final accuracy and mean churn, named after `key`."""
    from active import loop  # pylint: disable=import-outside-toplevel

    return {
        f"area_{key}": loop.area_under_curve(records),
        f"final_accuracy_{key}": records[-1].accuracy,
        f"churn_{key}": float(np.mean([r.churn for r in records[1:]])),
    }


def arm_outcome(context: ArmContext, runs: dict[str, list[int]], selector: str, alpha: float = 0.0) -> dict[str, Any]:
    """Every run of an arm ({key: schedule}, key "large_NAME" for data set NAME with large batches):
    its values, accuracy curves and the small-batch runs' mean selection seconds per round."""
    values, curves, seconds = {}, {}, []
    for key, schedule in runs.items():
        records = run_loop(context, key.removeprefix("large_"), schedule, selector, alpha)
        values.update(summary(records, key))
        curves[key] = [[r.labelled for r in records], [r.accuracy for r in records]]
        seconds += [r.selection_seconds for r in records[1:]] if key in DATASETS else []
    return {"values": {**values, "selection_seconds": float(np.mean(seconds))}, "accuracy": curves}


def selector_arm(selector: str) -> Arm:
    """A selector on every data set with small batches, and with large ones when it is compared there."""

    def run(context: ArmContext) -> dict[str, Any]:
        large = context.settings["large_batch"] if selector in LARGE_BATCH_SELECTORS else {}
        runs = {**context.settings["schedules"], **{f"large_{d}": s for d, s in large.items()}}
        return arm_outcome(context, runs, selector)

    return Arm(selector, run=run)


def churn_arm(alpha: float) -> Arm:
    """Margin distilled from the previous round's model with weight `alpha`, on the larger pools."""

    def run(context: ArmContext) -> dict[str, Any]:
        return arm_outcome(context, {d: context.settings["schedules"][d] for d in LARGER}, "margin", alpha)

    return Arm(f"margin_a{alpha:g}", run=run, label=f"margin, a = {alpha:g}")


def accuracy_curve(key: str) -> Curve:
    """Test accuracy against labelled examples for the selectors' runs called `key`."""

    def read(context: ArmContext) -> tuple[list[float], list[float]]:
        labelled, accuracy = context.outcome()["accuracy"][key]
        return labelled, accuracy

    dataset = key.removeprefix("large_")
    return Curve(
        f"accuracy_{key}",
        f"test accuracy, {dataset}{', large batches' if key != dataset else ''}",
        "labelled examples",
        read,
        arms=SELECTORS if key == dataset else LARGE_BATCH_SELECTORS,
    )


CHURN_COMPARED = ("margin", *CHURN_ARMS)
METRICS = (
    *(
        Metric(
            f"area_{d}",
            f"area under the accuracy curve, {d}",
            True,
            arms=SELECTORS + (CHURN_ARMS if d in LARGER else ()),
        )
        for d in DATASETS
    ),
    *(
        Metric(f"area_large_{d}", f"area under the curve, {d}, large batches", True, arms=LARGE_BATCH_SELECTORS)
        for d in LARGER
    ),
    *(Metric(f"churn_{d}", f"churn per round, {d}", False, arms=CHURN_COMPARED) for d in LARGER),
    *(Metric(f"final_accuracy_{d}", f"final accuracy, {d}", True, arms=CHURN_COMPARED) for d in LARGER),
    Metric("selection_seconds", "selection seconds per round (small batches)", False, arms=SELECTORS, digits=2),
)
DISTILLED = f"margin_a{CLAIM_ALPHA:g}"
CLAIMS = (
    *(
        Claim(
            f"margin_beats_random_{d}",
            f"margin's area under the accuracy curve on {d} exceeds random's",
            f"area_{d}",
            "margin",
            "random",
        )
        for d in DATASETS
    ),
    *(
        Claim(
            f"cluster_margin_beats_margin_{d}",
            f"with large batches on {d}, Cluster-Margin's area under the curve exceeds margin's",
            f"area_large_{d}",
            "cluster_margin",
            "margin",
        )
        for d in LARGER
    ),
    *(
        Claim(
            f"distillation_lowers_churn_{d}",
            f"distillation (a = {CLAIM_ALPHA:g}) lowers margin's churn on {d}",
            f"churn_{d}",
            DISTILLED,
            "margin",
        )
        for d in LARGER
    ),
    *(
        Claim(
            f"distillation_keeps_accuracy_{d}",
            f"with a = {CLAIM_ALPHA:g}, margin's final accuracy on {d} is at most {ACCURACY_MARGIN:g} below a = 0's",
            f"final_accuracy_{d}",
            DISTILLED,
            "margin",
            threshold=-ACCURACY_MARGIN,
        )
        for d in LARGER
    ),
)

STUDY = Study(
    name="active",
    title="Active-learning selectors, large batches and low-churn retraining on bundled tables",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=(*map(selector_arm, SELECTORS), *map(churn_arm, ALPHAS)),
    metrics=METRICS,
    claims=CLAIMS,
    seeds=5,
    settings={
        "schedules": {"digits": [20, 20, 10], "breast_cancer": [10, 10, 10], "wine": [6, 6, 8]},
        "large_batch": {"digits": [100, 100, 8], "breast_cancer": [30, 30, 8]},
        "model_steps": 300,
    },
    quick={
        "schedules": {"digits": [10, 10, 2], "breast_cancer": [6, 6, 2], "wine": [6, 6, 2]},
        "large_batch": {"digits": [20, 20, 2], "breast_cancer": [20, 20, 2]},
        "model_steps": 20,
    },
    curves=tuple(map(accuracy_curve, (*DATASETS, *(f"large_{d}" for d in LARGER)))),
)
