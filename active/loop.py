"""The active-learning loop on labelled arrays: seed set, then rounds of select -> label -> retrain.

    records = active.loop.run(x_train, y_train, x_test, y_test, selector="margin",
                              seed_size=20, batch_size=20, rounds=10, seed=0)

Each round trains a fresh `active.models` network on the labelled set (weighted when the selector
returns weights; distilled from the previous round's model when `churn_alpha` > 0) and records the
test accuracy, the seconds spent selecting, and the churn: the fraction of test examples whose
prediction changed from the previous round's model.

The loop builds the `Pool` fields each selector reads (`pool_fields`): probabilities and
embeddings of the current model, the labelled embeddings (coreset), BADGE's gradient embeddings,
a second model's probabilities (iwes_dis always; iwes_systematic's disagreement with
`second_model=True`), the pool's labels (iwes_dis only: subset selection, where labels are known
before selecting, not active learning), and Cluster-Margin's clusters, computed once from the seed
model's embeddings of the whole pool.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from active import models, validation
from active.clustering import cluster_margin_clusters
from active.selectors import Pool, Selection, Selector, gradient_embeddings, make_selector

# Pool fields beyond probabilities and embeddings that a selector (by name) reads.
EXTRA_FIELDS: dict[str, frozenset[str]] = {
    "badge": frozenset({"gradient_embeddings"}),
    "cluster_margin": frozenset({"cluster_ids"}),
    "iwes_dis": frozenset({"second_probabilities", "labels"}),
}


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """One round: round 0 is the seed set (no selection, no churn).

    `selection_seconds` covers building the selector's Pool (Cluster-Margin's clustering in round
    1, BADGE's gradient embeddings) and `select`; not the model's forward passes.
    """

    round: int
    labelled: int
    accuracy: float
    selection_seconds: float
    churn: float | None


def pool_fields(selector: Selector, second_model: bool = False) -> frozenset[str]:
    """The Pool fields the loop computes for `selector`."""
    fields = {"probabilities", "embeddings", "labelled_embeddings"} | EXTRA_FIELDS.get(selector.name, frozenset())
    return frozenset(fields | ({"second_probabilities"} if second_model else set()))


def build_pool(
    fields: frozenset[str],
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    labelled_embeddings: np.ndarray | None = None,
    second_probabilities: np.ndarray | None = None,
    cluster_ids: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Pool:
    """A Pool with the requested `fields`; gradient embeddings are derived from probabilities and
    embeddings. Raises ValueError naming a requested field that was not supplied."""
    given = {
        "probabilities": probabilities,
        "embeddings": embeddings,
        "labelled_embeddings": labelled_embeddings,
        "second_probabilities": second_probabilities,
        "cluster_ids": cluster_ids,
        "labels": labels,
    }
    if "gradient_embeddings" in fields:
        given["gradient_embeddings"] = gradient_embeddings(probabilities, embeddings)
    missing = sorted(name for name in fields if given.get(name) is None)
    if missing:
        raise ValueError(f"Pool fields {missing} are needed but were not supplied")
    return Pool(**{name: given[name] for name in fields})


def default_num_clusters(pool_size: int, batch_size: int) -> int:
    """Cluster-Margin's flat clusters when none are given: twice the batch, at most the pool."""
    return max(1, min(pool_size, 2 * batch_size))


@dataclasses.dataclass
class _State:
    """What the loop carries between rounds."""

    labelled: np.ndarray  # indices into the training pool, in labelling order
    weights: np.ndarray  # training weight per labelled example
    model: models.Model
    test_probabilities: np.ndarray
    cluster_ids: np.ndarray | None = None


def run(
    features: np.ndarray,
    labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    selector: str | Selector = "margin",
    seed_size: int = 20,
    batch_size: int = 20,
    rounds: int = 10,
    seed: int = 0,
    churn_alpha: float = 0.0,
    model_config: models.ModelConfig = models.ModelConfig(),
    num_classes: int | None = None,
    selector_kwargs: Mapping[str, Any] | None = None,
    num_clusters: int | None = None,
    second_model: bool = False,
) -> list[RoundRecord]:
    """Runs `rounds` rounds of active learning after a random seed set; one record per model trained.

    Bad inputs are refused before anything trains (`check_inputs`).

    Args:
      features, labels: the training pool; labels are revealed only for selected examples (iwes_dis,
        a subset-selection method, also reads the pool's labels).
      test_features, test_labels: held-out evaluation set (accuracy and churn).
      selector: a Selector, or a name in `active.selectors.SELECTORS` built with `selector_kwargs`.
      seed_size: examples labelled uniformly at random before the first round.
      batch_size: examples selected per round.
      churn_alpha: distillation weight a towards the previous round's model (0: plain retraining).
      num_classes: default one more than the largest label in `labels` and `test_labels`.
      num_clusters: Cluster-Margin's flat clusters (default `default_num_clusters`).
      second_model: also train a second network (another init) each round and pass its
        probabilities as `Pool.second_probabilities` (iwes_systematic's disagreement; iwes_dis
        always gets one).
    """
    if isinstance(selector, str):
        selector = make_selector(selector, **dict(selector_kwargs or {}))
    num_classes = check_inputs(features, labels, test_features, test_labels, num_classes, seed_size, batch_size, rounds)
    rng = np.random.default_rng(seed)
    train = _Trainer(features, labels, test_features, num_classes, model_config, seed, churn_alpha)
    state = train.first(rng.choice(len(features), seed_size, replace=False))
    records = [RoundRecord(0, seed_size, models.accuracy(state.test_probabilities, test_labels), 0.0, None)]
    fields = pool_fields(selector, second_model)
    for round_index in range(1, rounds + 1):
        probabilities, embeddings = state.model.predict(features)
        second = train.fit(state, init_offset=1).probabilities(features) if "second_probabilities" in fields else None
        started = time.perf_counter()
        if "cluster_ids" in fields and state.cluster_ids is None:  # round 1: the seed model's embeddings
            count = num_clusters or default_num_clusters(len(features), batch_size)
            state.cluster_ids = cluster_margin_clusters(embeddings, count, seed=seed)
        unlabelled = np.setdiff1d(np.arange(len(features)), state.labelled)
        pool = build_pool(
            fields,
            probabilities[unlabelled],
            embeddings[unlabelled],
            labelled_embeddings=embeddings[state.labelled],
            second_probabilities=None if second is None else second[unlabelled],
            cluster_ids=None if state.cluster_ids is None else state.cluster_ids[unlabelled],
            labels=labels[unlabelled] if "labels" in fields else None,
        )
        chosen = selector.select(pool, batch_size, rng)
        seconds = time.perf_counter() - started
        new_state = train.next(state, unlabelled, chosen)
        churn = models.churn(state.test_probabilities, new_state.test_probabilities)
        accuracy = models.accuracy(new_state.test_probabilities, test_labels)
        records.append(RoundRecord(round_index, len(new_state.labelled), accuracy, seconds, churn))
        state = new_state
    return records


def check_inputs(
    features: np.ndarray,
    labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int | None,
    seed_size: int,
    batch_size: int,
    rounds: int,
) -> int:
    """Refuses bad `run` arguments with a `SelectionInputError` naming them; returns the number of classes.

    Refused: a schedule without a seed set, with an empty batch or negative rounds; empty or
    non-finite features; labels that are not one integer per row, outside [0, num_classes) or of
    a single class; a schedule that needs more examples than the pool holds.
    """
    validation.check_schedule(seed_size, batch_size, rounds)
    for name, array in (("features", features), ("test_features", test_features)):
        validation.check_rows(name, len(array))
        validation.check_finite(name, array)
    train = validation.check_labels("labels", labels, len(features), "features")
    test = validation.check_labels("test_labels", test_labels, len(test_features), "test_features")
    if num_classes is None:
        num_classes = int(max(train.max(), test.max())) + 1
    else:
        validation.check_integer("num_classes", num_classes, 2)
    validation.check_label_range("labels", train, num_classes)
    validation.check_label_range("test_labels", test, num_classes)
    validation.check_classes("labels", train)
    validation.check_schedule_fits(seed_size, batch_size, rounds, len(features), "the pool (features)")
    return num_classes


class _Trainer:
    """Trains the round models on the labelled subset of one pool."""

    def __init__(self, features, labels, test_features, num_classes, config, seed, churn_alpha):
        self.features, self.labels, self.test_features = features, labels, test_features
        self.num_classes, self.config, self.seed, self.churn_alpha = num_classes, config, seed, churn_alpha

    def fit(self, state: _State, init_offset: int = 0, teacher: models.Model | None = None) -> models.Model:
        """A fresh network on `state.labelled`, distilled from `teacher` when given.

        Every round starts from the same initialisation (`init_offset` 0), so churn measures what
        the new labels and the distillation change, not a new random start.
        """
        x = self.features[state.labelled]
        teacher_probabilities = None if teacher is None else teacher.probabilities(x)
        return models.fit(
            x,
            self.labels[state.labelled],
            self.num_classes,
            self.config,
            seed=self.seed * 100_003 + init_offset,
            weights=state.weights,
            teacher_probabilities=teacher_probabilities,
            alpha=self.churn_alpha if teacher is not None else 0.0,
        )

    def first(self, seed_indices: np.ndarray) -> _State:
        """The seed-set state."""
        state = _State(np.asarray(seed_indices, np.int64), np.ones(len(seed_indices), np.float32), None, None)
        return self._with_model(state, self.fit(state))

    def next(self, state: _State, unlabelled: np.ndarray, chosen: Selection) -> _State:
        """Labels the chosen pool examples and retrains (distilling from the previous model)."""
        new_weights = np.ones(len(chosen.indices)) if chosen.weights is None else chosen.weights
        grown = _State(
            np.concatenate([state.labelled, unlabelled[chosen.indices]]),
            np.concatenate([state.weights, new_weights]).astype(np.float32),
            None,
            None,
            state.cluster_ids,
        )
        teacher = state.model if self.churn_alpha > 0 else None
        return self._with_model(grown, self.fit(grown, teacher=teacher))

    def _with_model(self, state: _State, model: models.Model) -> _State:
        return dataclasses.replace(state, model=model, test_probabilities=model.probabilities(self.test_features))


def area_under_curve(records: list[RoundRecord]) -> float:
    """Mean test accuracy over the labelled-count range (trapezoid area / range)."""
    counts = np.array([r.labelled for r in records], np.float64)
    accuracies = np.array([r.accuracy for r in records])
    if len(records) == 1:
        return float(accuracies[0])
    return float(np.trapezoid(accuracies, counts) / (counts[-1] - counts[0]))


def records_as_dicts(records: list[RoundRecord]) -> list[dict[str, Any]]:
    """Records as JSON-ready dicts (churn None at round 0)."""
    return [dataclasses.asdict(r) for r in records]
