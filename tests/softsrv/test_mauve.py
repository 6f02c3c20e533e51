"""softsrv.mauve against references: MAUVE of known histograms equals the published divergence-curve
area computed in numpy, identical samples score 1 under every seed, disjoint clouds the formula's
floor, MAUVE falls as one Gaussian cloud moves away, the seed statistics are numpy's, refusals name the
culprit, and on MiniLM features same-topic texts score far above code."""

import itertools
import math
import sys

import numpy as np
import pytest

from littlehelp.errors import LittlehelpError
from softsrv.mauve import (
    MauveInputError,
    mauve_of_texts,
    mauve_over_seeds,
    mauve_score,
    small_sample_warning,
    text_features,
)


def reference_mauve(p_hist, q_hist, scaling_factor: float = 5.0, points: int = 25) -> float:
    """Area under the divergence curve (1, 0), (exp(-c KL(Q||R_w)), exp(-c KL(P||R_w))) for w rising
    over `points` mixtures, (0, 1); float64 trapezoids in w order, no sorting."""
    p, q = np.asarray(p_hist, np.float64), np.asarray(q_hist, np.float64)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        support = a > 0
        return float(np.sum(a[support] * np.log(a[support] / b[support])))

    weights = np.linspace(1e-6, 1 - 1e-6, points)
    curve = (
        [(1.0, 0.0)]
        + [
            (
                math.exp(-scaling_factor * kl(q, w * p + (1 - w) * q)),
                math.exp(-scaling_factor * kl(p, w * p + (1 - w) * q)),
            )
            for w in weights
        ]
        + [(0.0, 1.0)]
    )
    x, y = np.array(curve).T
    return float(np.sum((x[:-1] - x[1:]) * (y[:-1] + y[1:]) / 2))


def clusters(counts, width: int = 6, seed: int = 0) -> np.ndarray:
    """counts[j] points around 10 e_j (noise 0.05): clusters k-means cannot split otherwise."""
    rng = np.random.default_rng(seed)
    rows = [10 * np.eye(width)[j] + 0.05 * rng.standard_normal((count, width)) for j, count in enumerate(counts)]
    return np.concatenate(rows)


@pytest.mark.parametrize("p_counts, q_counts", [((20, 20, 0), (10, 10, 20)), ((30, 6, 4), (5, 15, 20))])
def test_known_histograms_match_the_published_formula(p_counts, q_counts):
    score = mauve_score(clusters(p_counts, seed=1), clusters(q_counts, seed=2), num_buckets=3)
    p_hist, q_hist = np.array(p_counts) / sum(p_counts), np.array(q_counts) / sum(q_counts)
    assert score.mauve == pytest.approx(reference_mauve(p_hist, q_hist), abs=1e-9)
    assert 0.01 < score.mauve < 0.99
    assert (score.num_buckets, score.num_p, score.num_q, score.seed) == (3, sum(p_counts), sum(q_counts), 0)


def test_identical_samples_score_one_under_every_seed():
    features = np.random.default_rng(0).standard_normal((60, 8))
    values = [mauve_score(features, features, num_buckets=4, seed=seed).mauve for seed in range(10)]
    assert min(values) > 0.99, values  # mauve-text alone returns 0.75 under some seeds here


def test_disjoint_clouds_score_the_floor_of_the_formula():
    rng = np.random.default_rng(0)
    away = 5 * np.eye(8)[0]
    score = mauve_score(rng.standard_normal((200, 8)) + away, rng.standard_normal((200, 8)) - away)
    assert score.num_buckets == 20  # "auto": 200 / 10
    assert score.mauve == pytest.approx(reference_mauve([1, 0], [0, 1]), abs=1e-9)
    assert score.mauve < 0.05


def test_mauve_falls_as_one_cloud_moves_away():
    rng = np.random.default_rng(0)
    p, noise = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    means = [mauve_over_seeds(p, noise + shift * np.eye(8)[0])["mean"] for shift in (0, 1, 2, 3, 4)]
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert means[0] > 0.9 and means[-1] < 0.05, means


def test_over_seeds_statistics_are_numpys():
    rng = np.random.default_rng(3)
    p, q = rng.standard_normal((120, 8)), rng.standard_normal((120, 8)) + 0.8 * np.eye(8)[0]
    report = mauve_over_seeds(p, q, seeds=(0, 1, 2, 3), kmeans_num_redo=1)
    values = np.array([mauve_score(p, q, seed=seed, kmeans_num_redo=1).mauve for seed in (0, 1, 2, 3)])
    assert report["seeds"] == [0, 1, 2, 3]
    np.testing.assert_allclose(report["mauve"], values, rtol=0, atol=1e-12)
    assert np.ptp(values) > 1e-4  # the seeds do differ, so the spread below is not trivially 0
    assert report["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert report["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert report["stderr"] == pytest.approx(np.std(values, ddof=1) / 2, abs=1e-12)
    assert (report["num_buckets"], report["num_p"], report["kmeans_num_redo"]) == (12, 120, 1)
    single = mauve_over_seeds(p, q, seeds=(5,))
    assert math.isnan(single["std"]) and math.isnan(single["stderr"]) and single["mean"] == single["mauve"][0]


def test_mauve_text_never_loads_its_own_featuriser():
    features = np.random.default_rng(0).standard_normal((40, 4))
    mauve_score(features, features + 0.1)
    module = sys.modules["mauve.compute_mauve"]
    assert module.MODEL is None and module.TOKENIZER is None and module.MODEL_NAME is None


def test_faiss_warnings_are_silenced_unless_verbose(capfd):
    features = np.random.default_rng(0).standard_normal((40, 4))
    mauve_score(features, features + 0.1)
    assert "WARNING clustering" not in capfd.readouterr().err
    mauve_score(features, features + 0.1, verbose=True)
    assert "WARNING clustering" in capfd.readouterr().err  # the check above can fail


GOOD = np.random.default_rng(0).standard_normal((30, 4))
NAN = GOOD.copy()
NAN[3, 1] = np.nan
INF = GOOD.copy()
INF[7, 0] = -np.inf


@pytest.mark.parametrize(
    "p, q, settings, message",
    [
        (np.zeros((0, 4)), GOOD, {}, r"^p_features: empty, shape \(0, 4\)$"),
        (GOOD, np.zeros((30, 0)), {}, r"^q_features: empty"),
        (GOOD, GOOD[0], {}, r"^q_features: expected a 2-D \[rows, width\] array, got shape \(4,\)$"),
        (None, GOOD, {}, r"^p_features: expected a 2-D"),
        (GOOD[None], GOOD, {}, r"^p_features: expected a 2-D .* shape \(1, 30, 4\)$"),
        (np.array([["a"] * 4] * 30), GOOD, {}, r"^p_features: dtype <U1 is not numeric$"),
        (GOOD, np.ones((30, 5)), {}, r"^p_features is 4 wide but q_features 5$"),
        (GOOD, NAN, {}, r"^q_features: 1 NaN or Inf values, the first in row 3$"),
        (INF, GOOD, {}, r"^p_features: 1 NaN or Inf values, the first in row 7$"),
        (GOOD, GOOD[:8], {"num_buckets": 10}, r"^num_buckets=10 needs at least 10 rows per sample; q_features has 8$"),
        (GOOD[:1], GOOD, {}, r"^num_buckets=2 needs at least 2 rows per sample; p_features has 1$"),
        (GOOD, GOOD, {"num_buckets": "many"}, r"^num_buckets='many': expected 'auto' or an integer >= 2$"),
        (GOOD, GOOD, {"num_buckets": 1}, r"^num_buckets=1:"),
        (GOOD, GOOD, {"num_buckets": True}, r"^num_buckets=True:"),
        (GOOD, GOOD, {"kmeans_num_redo": 0}, r"^kmeans_num_redo=0: expected an integer >= 1$"),
        (GOOD, GOOD, {"kmeans_max_iter": 2.5}, r"^kmeans_max_iter=2.5: expected an integer >= 1$"),
        (GOOD, GOOD, {"kmeans_explained_var": 1.0}, r"^kmeans_explained_var=1.0: expected a value in \(0, 1\)$"),
        (GOOD, GOOD, {"scaling_factor": 0}, r"^scaling_factor=0: expected a positive value$"),
        (GOOD, GOOD, {"seed": -1}, r"^seed=-1: expected an integer"),
    ],
)
def test_mauve_score_refuses_by_name(p, q, settings, message):
    with pytest.raises(MauveInputError, match=message) as caught:
        mauve_score(p, q, **settings)
    assert isinstance(caught.value, LittlehelpError) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "seeds, settings, message",
    [
        ((), {}, r"^seeds=\[\]: expected one or more distinct integers$"),
        ((1, 1), {}, r"^seeds=\[1, 1\]:"),
        ((0,), {"seed": 3}, r"^seed: pass seeds=\(\.\.\.\) to mauve_over_seeds, not seed$"),
    ],
)
def test_mauve_over_seeds_refuses_by_name(seeds, settings, message):
    with pytest.raises(MauveInputError, match=message):
        mauve_over_seeds(GOOD, GOOD, seeds, **settings)


class FakeEmbedder:
    """Rows of `width` numbers per text (its length, then zeros), or `rows` rows whatever the input."""

    def __init__(self, width: int = 3, rows: int | None = None):
        self.width, self.rows, self.calls = width, rows, []

    def embed(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((self.rows if self.rows is not None else len(texts), self.width))
        out[:, 0] = [len(text) for text in texts][: len(out)]
        return out


def test_text_features_refuses_by_name():
    with pytest.raises(MauveInputError, match=r"^real: empty$"):
        mauve_of_texts(["a", "b"], [], FakeEmbedder())
    with pytest.raises(MauveInputError, match=r"^synthetic\[1\]: a int, not a string$"):
        mauve_of_texts(["a", 3], ["a", "b"], FakeEmbedder())
    with pytest.raises(MauveInputError, match=r"^texts: a single string, expected a sequence of strings$"):
        text_features("one text", FakeEmbedder())
    with pytest.raises(MauveInputError, match=r"^embedder: returned shape \(1, 3\) for 2 texts$"):
        text_features(["a", "bb"], FakeEmbedder(rows=1))


def test_text_features_are_the_embedders_rows_in_order():
    embedder = FakeEmbedder()
    features = text_features(["abc", "", "z"], embedder)
    assert embedder.calls == [["abc", "", "z"]]  # the empty text is embedded, not dropped
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features[:, 0], [3, 0, 1])


@pytest.fixture(scope="session")
def minilm_embedder(minilm_dir):
    """The real all-MiniLM-L6-v2 SentenceEmbedder, loaded once per session."""
    from littlehelp.embed import SentenceEmbedder

    return SentenceEmbedder.load(minilm_dir, batch_size=32)


def cooking_sentences() -> list[str]:
    """64 templated sentences about cooking, shuffled (the first 32 and the last 32 share a topic)."""
    parts = (
        ["My aunt", "The chef", "A neighbour", "Grandpa"],
        ["bakes", "fries", "slices", "roasts"],
        ["bread", "potatoes", "fish", "onions"],
    )
    sentences = [f"{who} {verb} the {food} for dinner." for who, verb, food in itertools.product(*parts)]
    return [sentences[i] for i in np.random.default_rng(0).permutation(len(sentences))]


def test_minilm_features_rank_same_topic_above_code(minilm_embedder):
    cooking = cooking_sentences()
    real, same_topic = cooking[:32], cooking[32:]
    code = [
        f"def {name}(x): return x {op} {n}"
        for name, op, n in itertools.product(["add", "scale", "clip", "shift"], ["+", "*", "-", "//"], "127")
    ][:32]
    features = text_features(real, minilm_embedder)
    assert features.shape == (32, 384) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    identical, close, far = (
        mauve_of_texts(synthetic, real, minilm_embedder, num_buckets=4) for synthetic in (real, same_topic, code)
    )
    assert identical["mauve"] == [1.0, 1.0, 1.0]
    assert close["mean"] > 0.5 and far["mean"] < 0.05, (close, far)
    assert far["mean"] == pytest.approx(reference_mauve([1, 0], [0, 1]), abs=1e-9)  # code shares no bucket


def test_a_score_of_fewer_than_50_texts_a_side_is_flagged_unreliable():
    assert small_sample_warning(50, 50) is None and small_sample_warning(400, 128) is None
    assert small_sample_warning(49, 400) == (
        "MAUVE of 400 samples against 49 real examples is unreliable: it needs "
        "at least 50 of each (here k-means compares them over 5 clusters)"
    )
    assert small_sample_warning(4, 16).endswith("over 2 clusters)")
