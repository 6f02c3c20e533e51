"""Cluster-Margin where it can differ from margin: Fashion-MNIST, 1,000 labels a round (`study cluster_margin`).

Cluster-Margin (Citovsky et al. 2021, arXiv 2107.14263) takes the k_m = 10 k_t lowest-margin pool
examples and draws the batch of k_t round-robin over their average-linkage clusters. It can differ
from margin only when the k_m candidates are a small share of the unlabelled pool; on the bundled
tables (`littlehelp study active`) they are 82-100% of it, so there it is cluster-stratified random
sampling. Here the pool is Fashion-MNIST's 60,000 training images (pixels / 255) and the test set its
10,000 test images (Debian package `dataset-fashion-mnist`, no download). Each seed draws a random
seed set of 1,000 (the same for every arm), then 8 rounds label 1,000 each: N = 9,000 labels, and
the candidates are 16.9% of the unlabelled pool in round 1 and 19.2% in round 8 (the margin
candidate share below). Cluster-Margin clusters the pool once, on the seed model's embeddings:
2,000 k-means cells joined by weighted average linkage (`active.clustering`; exact linkage needs at
most 20,000 points), cut at 1,000 clusters, one per label of a batch (ours: the paper cuts at a
distance threshold). Model: an MLP (784-128-10, AdamW, 1,000 steps of 64) retrained from the same
initialisation every round (`active.loop.run`); its hidden layer is the embedding Cluster-Margin,
coreset and BADGE read (the paper's are a network's embeddings too). It is far from saturated here
(about 0.81 test accuracy after 1,000 labels), and a CNN would not fit the time on 2 CPU cores.
Arms: random, margin, cluster_margin, badge, coreset, paired by seed. Metrics: test accuracy after
the last round, area under the accuracy curve, seconds a selector spends per round (its pool fields
and selection; Cluster-Margin's clustering included), and the candidate share in the first and last
round (descriptive). --quick: a 3,000-image pool (exact linkage), 1,000 test images, 50 labels a
round, 2 rounds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from active import data
from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study, StudyError

SELECTORS = ("random", "margin", "cluster_margin", "badge", "coreset")
MAX_CANDIDATE_SHARE = 0.2  # the largest share of the unlabelled pool the margin candidates may be, any round
NON_INFERIORITY = 0.005  # how far below margin's accuracy "at least margin's" still allows
SETTINGS = {
    "pool": None,
    "test": None,
    "seed_size": 1000,
    "batch_size": 1000,
    "rounds": 8,
    "clusters": 1000,
    "margin_multiplier": 10.0,
    "hidden": [128],
    "model_steps": 1000,
}
QUICK = {"pool": 3000, "test": 1000, "seed_size": 50, "batch_size": 50, "rounds": 2, "clusters": 50, "model_steps": 100}


def candidate_shares(pool_size: int, settings: Mapping[str, Any]) -> list[float]:
    """Per round, Cluster-Margin's margin candidates over the unlabelled pool U before the round:
    min(U, ceil(margin_multiplier x batch)) / U, as `ClusterMarginSelector` counts its candidates."""
    batch = settings["batch_size"]
    unlabelled = [pool_size - settings["seed_size"] - r * batch for r in range(settings["rounds"])]
    return [min(u, math.ceil(settings["margin_multiplier"] * batch)) / u for u in unlabelled]


@functools.cache
def fashion_mnist() -> data.LabelledData:
    """Fashion-MNIST, read once per process: every arm and seed subsamples (copies) it."""
    return data.load_fashion_mnist()


def run_selector(context: ArmContext, selector: str) -> dict[str, Any]:
    """One `active.loop.run` of `selector` on this seed's pool: its values, accuracy curve and candidate
    shares. Refuses settings whose candidates exceed `MAX_CANDIDATE_SHARE` of the pool in any round."""
    from active import loop, models  # pylint: disable=import-outside-toplevel (jax)

    settings = context.settings
    split = data.subsample(fashion_mnist(), context.seed, settings["pool"], settings["test"])
    shares = candidate_shares(len(split.train_labels), settings)
    if max(shares) > MAX_CANDIDATE_SHARE:
        raise StudyError(
            f"margin candidates would be {max(shares):.0%} of the unlabelled pool in a round; "
            f"this study needs at most {MAX_CANDIDATE_SHARE:.0%} (a larger pool or a smaller batch)"
        )
    kwargs = {"margin_multiplier": settings["margin_multiplier"]} if selector == "cluster_margin" else None
    records = loop.run(
        split.train_features,
        split.train_labels,
        split.test_features,
        split.test_labels,
        selector=selector,
        seed_size=settings["seed_size"],
        batch_size=settings["batch_size"],
        rounds=settings["rounds"],
        seed=context.seed,
        num_classes=split.num_classes,
        num_clusters=settings["clusters"],
        selector_kwargs=kwargs,
        model_config=models.ModelConfig(hidden=tuple(settings["hidden"]), steps=settings["model_steps"]),
    )
    labelled = [r.labelled for r in records]
    return {
        "values": {
            "final_accuracy": records[-1].accuracy,
            "area": loop.area_under_curve(records),
            "selection_seconds": float(np.mean([r.selection_seconds for r in records[1:]])),
            "first_candidate_share": shares[0],
            "last_candidate_share": shares[-1],
        },
        "accuracy": [labelled, [r.accuracy for r in records]],
        "candidate_share": [labelled[:-1], shares],
        "rounds": loop.records_as_dicts(records),
    }


def selector_arm(selector: str) -> Arm:
    """`selector` on this seed's Fashion-MNIST pool with the study's schedule."""

    def run(context: ArmContext) -> dict[str, Any]:
        return run_selector(context, selector)

    return Arm(selector, run=run)


def series(key: str) -> Callable[[ArmContext], tuple[list[float], list[float]]]:
    """Reads the (xs, ys) an arm's outcome stores under `key`."""

    def read(context: ArmContext) -> tuple[list[float], list[float]]:
        xs, ys = context.outcome()[key]
        return xs, ys

    return read


LABELS_SPENT = SETTINGS["seed_size"] + SETTINGS["rounds"] * SETTINGS["batch_size"]  # N, after the last round
METRICS = (
    Metric("final_accuracy", "test accuracy after the last round", True),
    Metric("area", "area under the accuracy curve", True),
    Metric("selection_seconds", "selection seconds per round", False, digits=2),
    Metric(
        "first_candidate_share",
        "margin candidate share of the unlabelled pool, round 1",
        None,
        arms=("cluster_margin",),
        digits=3,
    ),
    Metric(
        "last_candidate_share",
        "margin candidate share of the unlabelled pool, last round",
        None,
        arms=("cluster_margin",),
        digits=3,
    ),
)
AFTER_N = f"Cluster-Margin's accuracy after {LABELS_SPENT:,} labels"
CLAIMS = (
    Claim(
        "cluster_margin_at_least_margin",
        f"{AFTER_N} is at least margin's (to within {NON_INFERIORITY:g})",
        "final_accuracy",
        "cluster_margin",
        "margin",
        threshold=-NON_INFERIORITY,
    ),
    Claim("cluster_margin_beats_random", f"{AFTER_N} is above random's", "final_accuracy", "cluster_margin", "random"),
)

STUDY = Study(
    name="cluster_margin",
    title="Cluster-Margin against margin, random, BADGE and coreset on Fashion-MNIST with batches of 1,000",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=tuple(map(selector_arm, SELECTORS)),
    metrics=METRICS,
    claims=CLAIMS,
    seeds=5,
    settings=SETTINGS,
    quick=QUICK,
    curves=(
        Curve("accuracy", "test accuracy", "labelled examples", series("accuracy")),
        Curve(
            "candidate_share",
            "margin candidates / unlabelled pool",
            "labelled before the round",
            series("candidate_share"),
            arms=("cluster_margin",),
        ),
    ),
)
