"""active.loop: records, pools handed to selectors, Cluster-Margin's one-time clustering, weights,
low-churn distillation, area under the curve."""

import dataclasses

import numpy as np
import pytest

from active import loop, models
from active.selectors import Selection, make_selector
from active.validation import SelectionInputError

SMALL = models.ModelConfig(hidden=(16,), steps=100, batch_size=32, learning_rate=1e-2)


def blobs(n_per_class: int, seed: int, classes: int = 3, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    features = np.eye(classes, 4)[labels] * 2.0 + spread * rng.standard_normal((len(labels), 4))
    return features.astype(np.float32), labels.astype(np.int32)


TRAIN = blobs(40, seed=0)
TEST = blobs(30, seed=1)


@dataclasses.dataclass
class Spy:
    """A selector that takes the first `budget` pool entries and remembers every pool it saw."""

    name: str = "spy"
    weights: float | None = None

    def __post_init__(self):
        self.pools = []

    def select(self, pool, budget, rng):
        self.pools.append(pool)
        weights = None if self.weights is None else np.full(budget, self.weights)
        return Selection(np.arange(budget), weights)


def run(selector, **kwargs):
    options = dict(seed_size=10, batch_size=5, rounds=3, seed=0, model_config=SMALL) | kwargs
    return loop.run(*TRAIN, *TEST, selector=selector, **options)


def test_records_count_labels_and_report_churn_from_round_one():
    records = run("margin")
    assert [r.round for r in records] == [0, 1, 2, 3]
    assert [r.labelled for r in records] == [10, 15, 20, 25]
    assert records[0].churn is None and records[0].selection_seconds == 0.0
    assert all(0.0 <= r.churn <= 1.0 and r.selection_seconds > 0 for r in records[1:])
    assert all(0.0 <= r.accuracy <= 1.0 for r in records)


def test_same_seed_gives_the_same_curve_and_another_seed_differs():
    strip = lambda records: [(r.labelled, r.accuracy, r.churn) for r in records]  # noqa: E731
    assert strip(run("random")) == strip(run("random"))
    assert strip(run("random")) != strip(run("random", seed=1))


def test_pool_is_the_unlabelled_examples_scored_by_the_previous_model(monkeypatch):
    fitted = []  # (training features, model) per fit
    real_fit = models.fit

    def recording_fit(features, *args, **kwargs):
        fitted.append((features, real_fit(features, *args, **kwargs)))
        return fitted[-1][1]

    monkeypatch.setattr(models, "fit", recording_fit)
    spy = Spy()
    run(spy)
    assert [p.size for p in spy.pools] == [110, 105, 100]
    assert [len(p.labelled_embeddings) for p in spy.pools] == [10, 15, 20]
    seed_features, seed_model = fitted[0]
    labelled = np.argmax((seed_features[:, None, :] == TRAIN[0][None]).all(axis=2), axis=1)  # labelling order
    unlabelled = np.setdiff1d(np.arange(120), labelled)
    probabilities, embeddings = seed_model.predict(TRAIN[0])
    first = spy.pools[0]
    np.testing.assert_allclose(first.probabilities, probabilities[unlabelled])
    np.testing.assert_allclose(first.embeddings, embeddings[unlabelled])
    np.testing.assert_allclose(first.labelled_embeddings, embeddings[labelled])
    # The spy took pool entries 0..4, i.e. the five lowest unlabelled indices.
    np.testing.assert_array_equal(fitted[1][0], TRAIN[0][np.r_[labelled, unlabelled[:5]]])


def test_selected_weights_reach_training(monkeypatch):
    seen = []
    real_fit = models.fit
    monkeypatch.setattr(models, "fit", lambda *a, **k: seen.append(k["weights"]) or real_fit(*a, **k))
    run(Spy(weights=2.5), rounds=2)
    np.testing.assert_array_equal(seen[0], np.ones(10))
    np.testing.assert_array_equal(seen[2], np.r_[np.ones(10), np.full(10, 2.5)])


def test_cluster_margin_clusters_the_whole_pool_once_from_seed_model_embeddings(monkeypatch):
    calls = []

    def fake_clusters(embeddings, num_clusters, seed=0):
        calls.append((len(embeddings), num_clusters))
        return np.arange(len(embeddings)) % 7

    monkeypatch.setattr(loop, "cluster_margin_clusters", fake_clusters)
    seen = []
    selector = make_selector("cluster_margin")
    original = type(selector).select
    monkeypatch.setattr(
        type(selector), "select", lambda self, pool, b, rng: seen.append(pool) or original(self, pool, b, rng)
    )
    run(selector)
    assert calls == [(120, loop.default_num_clusters(120, 5))]
    assert all(len(p.cluster_ids) == p.size for p in seen) and len(seen) == 3
    assert set(np.unique(np.concatenate([p.cluster_ids for p in seen]))) <= set(range(7))


def test_badge_pool_has_gradient_embeddings_and_iwes_can_use_a_second_model():
    assert loop.pool_fields(make_selector("badge")) >= {"gradient_embeddings", "probabilities"}
    assert "second_probabilities" in loop.pool_fields(make_selector("iwes_systematic"), second_model=True)
    assert "second_probabilities" not in loop.pool_fields(make_selector("iwes_ent"), second_model=False)
    spy = Spy()
    run(spy, rounds=1, second_model=True)
    assert spy.pools[0].second_probabilities.shape == spy.pools[0].probabilities.shape
    assert not np.allclose(spy.pools[0].second_probabilities, spy.pools[0].probabilities)
    assert spy.pools[0].labels is None  # active learning: no pool labels


def test_iwes_dis_gets_a_second_model_and_the_pool_labels_without_asking(monkeypatch):
    fitted = []
    real_fit = models.fit
    monkeypatch.setattr(models, "fit", lambda features, *a, **k: fitted.append(features) or real_fit(features, *a, **k))
    spy = Spy(name="iwes_dis")
    run(spy, rounds=1)
    pool = spy.pools[0]
    assert pool.second_probabilities.shape == pool.probabilities.shape
    labelled = np.argmax((fitted[0][:, None, :] == TRAIN[0][None]).all(axis=2), axis=1)
    np.testing.assert_array_equal(pool.labels, TRAIN[1][np.setdiff1d(np.arange(120), labelled)])
    records = run("iwes_dis", rounds=2)  # the real selector: weighted, at most batch_size per round
    assert all(0 < b.labelled - a.labelled <= 5 for a, b in zip(records, records[1:]))


def test_build_pool_derives_gradient_embeddings_and_names_missing_fields():
    p = np.array([[0.7, 0.3], [0.1, 0.9]])
    e = np.array([[1.0, 2.0], [3.0, 4.0]])
    pool = loop.build_pool(frozenset({"probabilities", "gradient_embeddings"}), p, e)
    expected = np.array([[-0.3 * 1, -0.3 * 2, 0.3 * 1, 0.3 * 2], [0.1 * 3, 0.1 * 4, -0.1 * 3, -0.1 * 4]])
    np.testing.assert_allclose(pool.gradient_embeddings, expected, rtol=1e-6)
    assert pool.embeddings is None
    with pytest.raises(ValueError, match="cluster_ids"):
        loop.build_pool(frozenset({"cluster_ids"}), p, e)


def test_distilling_from_the_previous_model_lowers_churn():
    plain = run("random", rounds=4, churn_alpha=0.0)
    distilled = run("random", rounds=4, churn_alpha=0.9)
    assert [r.labelled for r in plain] == [r.labelled for r in distilled]
    assert np.mean([r.churn for r in distilled[1:]]) < np.mean([r.churn for r in plain[1:]])


def test_area_under_curve_is_the_trapezoid_mean():
    records = [loop.RoundRecord(i, n, a, 0.0, None) for i, (n, a) in enumerate([(10, 0.5), (20, 0.7), (40, 0.8)])]
    assert loop.area_under_curve(records) == pytest.approx((10 * 0.6 + 20 * 0.75) / 30)


def with_rows(array, rows, value):
    """A copy of `array` with `rows` set to `value`."""
    changed = array.copy()
    changed[rows] = value
    return changed


BAD_INPUTS = {
    "empty pool": (
        dict(features=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int32)),
        r"^features is empty: 0 rows$",
    ),
    "empty test set": (
        dict(test_features=np.zeros((0, 4), np.float32), test_labels=np.zeros(0, np.int32)),
        r"^test_features is empty: 0 rows$",
    ),
    "NaN features": (
        dict(features=with_rows(TRAIN[0], [17, 40, 90], np.nan)),
        r"^features has 3 rows with NaN or Inf \(first: row 17\)$",
    ),
    "Inf features": (
        dict(features=with_rows(TRAIN[0], [90], np.inf)),
        r"^features has 1 row with NaN or Inf \(first: row 90\)$",
    ),
    "Inf test features": (
        dict(test_features=with_rows(TEST[0], [2, 3], -np.inf)),
        r"^test_features has 2 rows with NaN or Inf \(first: row 2\)$",
    ),
    "single class": (dict(labels=np.zeros_like(TRAIN[1])), r"^labels hold a single class \(0\); need at least 2$"),
    "label -1": (dict(labels=with_rows(TRAIN[1], [4, 9], -1)), r"^labels must be in \[0, 3\): found -1 at row 4$"),
    "label = num_classes": (
        dict(labels=with_rows(TRAIN[1], [7], 3), num_classes=3),
        r"^labels must be in \[0, 3\): found 3 at row 7$",
    ),
    "test label too large": (
        dict(test_labels=with_rows(TEST[1], [1], 5), num_classes=3),
        r"^test_labels must be in \[0, 3\): found 5 at row 1$",
    ),
    "fractional label": (
        dict(labels=with_rows(TRAIN[1].astype(np.float64), [2], 1.5)),
        r"^labels must be integer classes: found 1.5 at row 2$",
    ),
    "labels too short": (
        dict(labels=TRAIN[1][:-1]),
        r"^labels must hold one label per row of features \(shape \(120,\)\), got shape \(119,\)$",
    ),
    "num_classes 1": (dict(num_classes=1), r"^num_classes must be an integer >= 2, got 1$"),
    "batch_size 0": (dict(batch_size=0), r"^batch_size must be a positive integer, got 0$"),
    "negative batch_size": (dict(batch_size=-5), r"^batch_size must be a positive integer, got -5$"),
    "seed_size 0": (dict(seed_size=0), r"^seed_size must be a positive integer, got 0$"),
    "negative rounds": (dict(rounds=-1), r"^rounds must be a non-negative integer, got -1$"),
    "schedule over the pool": (
        dict(seed_size=100, batch_size=10),
        r"^seed_size 100 \+ rounds 3 x batch_size 10 = 130 exceeds the pool \(features\): "
        r"120 rows$",
    ),
}


@pytest.mark.parametrize("change, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_are_refused_before_anything_trains(change, message, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a model was trained before the input was refused")

    monkeypatch.setattr(models, "fit", no_training)
    arguments = dict(
        features=TRAIN[0],
        labels=TRAIN[1],
        test_features=TEST[0],
        test_labels=TEST[1],
        selector="coreset",
        seed_size=10,
        batch_size=5,
        rounds=3,
        seed=0,
        model_config=SMALL,
    )
    with pytest.raises(SelectionInputError, match=message):
        loop.run(**(arguments | change))
