"""Selectors: each one's defining behaviour on constructed pools, against references computed another way."""

import dataclasses
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import softmax
from scipy.stats import binom, entropy

from active import selectors
from active.selectors import Pool, make_selector
from active.validation import SelectionInputError


def _probabilities(n: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(scale=2.0, size=(n, classes)), axis=1)


def _generic_pool(n: int = 60) -> Pool:
    rng = np.random.default_rng(0)
    probabilities = _probabilities(n, 4, 1)
    embeddings = rng.normal(size=(n, 5)).astype(np.float32)
    return Pool(
        probabilities=probabilities,
        embeddings=embeddings,
        labelled_embeddings=rng.normal(size=(3, 5)).astype(np.float32),
        second_probabilities=_probabilities(n, 4, 2),
        cluster_ids=np.arange(n) % 7,
        scores=rng.normal(size=n),
        labels=rng.integers(0, 4, n),
    )


STREAMED = {"iwes_dis", "iwes_ent"}  # one Bernoulli draw per example: at most `budget` come back


@pytest.mark.parametrize("name", sorted(selectors.SELECTORS))
def test_every_selector_returns_distinct_in_range_indices(name):
    pool = _generic_pool()
    selection = make_selector(name).select(pool, 12, np.random.default_rng(3))
    assert selection.indices.dtype == np.int64
    assert len(np.unique(selection.indices)) == len(selection.indices)
    assert len(selection.indices) == 12 or (name in STREAMED and 0 < len(selection.indices) < 12)
    assert selection.indices.min() >= 0 and selection.indices.max() < pool.size
    assert (selection.weights is not None) == name.startswith("iwes")


def test_margin_picks_the_examples_closest_to_the_boundary():
    probabilities = _probabilities(200, 5, 4)
    top2 = np.sort(probabilities.astype(np.float64), axis=1)[:, -2:]
    expected = np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:15]
    chosen = make_selector("margin").select(Pool(probabilities=probabilities), 15, np.random.default_rng(0))
    np.testing.assert_array_equal(chosen.indices, expected)


def test_highest_score_takes_the_highest_scores_lower_index_first_on_ties():
    scores = np.random.default_rng(6).integers(0, 10, 120).astype(np.float32)  # about 12 of each value
    expected = np.lexsort((np.arange(120), -scores))[:25]
    assert scores[expected[-1]] in np.delete(scores, expected)  # the cut falls inside a tie
    chosen = make_selector("highest_score").select(Pool(scores=scores), 25, np.random.default_rng(0))
    np.testing.assert_array_equal(chosen.indices, expected)
    with pytest.raises(SelectionInputError, match=r"^selector 'highest_score' needs Pool.scores, which is None$"):
        make_selector("highest_score").select(Pool(probabilities=_probabilities(4, 2, 0)), 2, np.random.default_rng(0))


@pytest.mark.parametrize(
    "name, reference",
    [
        ("entropy", lambda p: entropy(p, axis=1)),
        ("least_confidence", lambda p: 1.0 - p.max(axis=1)),
    ],
)
def test_uncertainty_selectors_take_the_highest_scores(name, reference):
    probabilities = _probabilities(150, 6, 5)
    expected = np.argsort(-reference(probabilities.astype(np.float64)), kind="stable")[:10]
    chosen = make_selector(name).select(Pool(probabilities=probabilities), 10, np.random.default_rng(0))
    assert set(chosen.indices) == set(expected)


def test_random_selector_is_reproducible_and_covers_the_pool():
    pool = Pool(probabilities=np.full((50, 2), 0.5))
    first = make_selector("random").select(pool, 20, np.random.default_rng(7)).indices
    again = make_selector("random").select(pool, 20, np.random.default_rng(7)).indices
    np.testing.assert_array_equal(first, again)
    hits = np.zeros(50)
    for seed in range(200):
        hits[make_selector("random").select(pool, 20, np.random.default_rng(seed)).indices] += 1
    np.testing.assert_allclose(hits / 200, 0.4, atol=0.15)


def test_min_squared_distances_matches_cdist_across_blocks(monkeypatch):
    monkeypatch.setattr(selectors, "_BLOCK_ELEMENTS", 64)  # forces many point and centre blocks
    rng = np.random.default_rng(0)
    points, centres = rng.normal(size=(101, 3)), rng.normal(size=(13, 3))
    expected = cdist(points, centres, "sqeuclidean").min(axis=1)
    np.testing.assert_allclose(selectors.min_squared_distances(points, centres), expected, rtol=1e-6, atol=1e-9)


def _kcenter_radius(points: np.ndarray, centres: np.ndarray) -> float:
    return float(cdist(points, centres).min(axis=1).max())


@pytest.mark.parametrize("seed", range(4))
def test_coreset_radius_within_twice_the_brute_force_optimum(seed):
    points = np.random.default_rng(seed).normal(size=(14, 2)).astype(np.float32)
    optimum = min(_kcenter_radius(points, points[list(c)]) for c in itertools.combinations(range(14), 3))
    chosen = make_selector("coreset").select(Pool(embeddings=points), 3, np.random.default_rng(seed)).indices
    assert _kcenter_radius(points, points[chosen]) <= 2.0 * optimum + 1e-6


def test_coreset_takes_farthest_points_from_labelled_set_and_jax_agrees():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(40, 4)).astype(np.float32)
    labelled = rng.normal(size=(5, 4)).astype(np.float32)
    centres, expected = list(labelled), []
    for _ in range(6):  # farthest-point traversal written out with explicit distances
        far = int(np.argmax(cdist(points, np.array(centres)).min(axis=1)))
        expected.append(far)
        centres.append(points[far])
    pool = Pool(embeddings=points, labelled_embeddings=labelled)
    for backend in ("numpy", "jax"):
        chosen = make_selector("coreset", backend=backend).select(pool, 6, np.random.default_rng(0))
        np.testing.assert_array_equal(chosen.indices, expected)


def test_blocked_coreset_makes_the_same_picks_as_plain_greedy():
    rng = np.random.default_rng(4)
    centres = rng.normal(scale=4.0, size=(6, 8))
    points = (centres[rng.integers(0, 6, 600)] + rng.normal(size=(600, 8))).astype(np.float32)
    for labelled in (None, points[:4] + 0.5):
        pool = Pool(embeddings=points, labelled_embeddings=labelled)
        plain = make_selector("coreset").select(pool, 40, np.random.default_rng(5)).indices
        blocked = make_selector("coreset", num_blocks=12).select(pool, 40, np.random.default_rng(5)).indices
        np.testing.assert_array_equal(blocked, plain)


def test_gradient_embeddings_equal_the_last_layer_gradient_at_the_predicted_label():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(6, 5)).astype(np.float32)
    weights = rng.normal(size=(3, 5)).astype(np.float32)

    def loss(w, x, label):
        return -jax.nn.log_softmax(w @ x)[label]

    probabilities = softmax(features @ weights.T, axis=1)
    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))
    grads = per_example(jnp.asarray(weights), features, np.argmax(probabilities, axis=1))
    np.testing.assert_allclose(
        selectors.gradient_embeddings(probabilities, features), np.asarray(grads).reshape(6, -1), rtol=1e-5, atol=1e-6
    )


def _badge_pool() -> np.ndarray:
    """Gradient embeddings: two tight high-norm groups (along e1, e2) and a low-norm group near 0."""
    rng = np.random.default_rng(0)
    group_a = 10.0 * np.eye(4)[0] + 1e-3 * rng.normal(size=(10, 4))
    group_b = 9.0 * np.eye(4)[1] + 1e-3 * rng.normal(size=(10, 4))
    low = 0.1 * rng.normal(size=(10, 4))
    return np.concatenate([group_a, group_b, low]).astype(np.float32)


def test_badge_starts_at_the_largest_gradient_and_samples_by_squared_distance():
    grads = _badge_pool()
    pool = Pool(gradient_embeddings=grads)
    first = int(np.argmax(np.linalg.norm(grads, axis=1)))
    sq = cdist(grads, grads[first : first + 1], "sqeuclidean")[:, 0]
    expected = np.array([sq[10:20].sum(), sq[20:].sum()]) / sq.sum()  # group b vs low group; a ~ 0
    second_group = np.zeros(3)
    for seed in range(400):
        chosen = make_selector("badge").select(pool, 2, np.random.default_rng(seed)).indices
        assert chosen[0] == first
        second_group[chosen[1] // 10] += 1
    assert second_group[0] == 0  # never a near-duplicate of the first pick
    np.testing.assert_allclose(second_group[1:] / 400, expected, atol=0.07)


def test_badge_computes_gradient_embeddings_from_probabilities_and_features():
    pool = _generic_pool()
    grads = selectors.gradient_embeddings(pool.probabilities, pool.embeddings)
    from_fields = make_selector("badge").select(pool, 5, np.random.default_rng(0)).indices
    given = make_selector("badge").select(Pool(gradient_embeddings=grads), 5, np.random.default_rng(0)).indices
    np.testing.assert_array_equal(from_fields, given)


def _cluster_margin_case():
    """400 examples, margins 0..1 by index, 12 clusters of distinct sizes among the 10 * 10 lowest margins."""
    margin = np.linspace(0.0, 1.0, 400)
    probabilities = np.stack([(1 + margin) / 2, (1 - margin) / 2], axis=1)
    rng = np.random.default_rng(0)
    sizes = np.arange(1, 13)[rng.permutation(12)]  # candidate clusters of sizes 1..12 (sum 78)
    candidate_clusters = np.repeat(np.arange(12), sizes)
    clusters = np.concatenate(
        [rng.permutation(np.pad(candidate_clusters, (0, 22), constant_values=12)), rng.integers(0, 13, 300)]
    )
    return probabilities, clusters


@pytest.mark.parametrize("budget", [5, 10, 30, 60])
def test_cluster_margin_round_robin_over_clusters_smallest_first(budget):
    probabilities, clusters = _cluster_margin_case()
    candidates = np.arange(min(400, 10 * budget))  # margins increase with the index
    sizes = np.bincount(clusters[candidates], minlength=13)
    pool = Pool(probabilities=probabilities, cluster_ids=clusters)
    for seed in range(5):
        chosen = make_selector("cluster_margin").select(pool, budget, np.random.default_rng(seed)).indices
        assert np.isin(chosen, candidates).all()
        taken = np.bincount(clusters[chosen], minlength=13)
        not_exhausted = taken < sizes
        # No cluster gives a (c+1)-th example while a non-exhausted candidate cluster has given fewer than c.
        assert taken.max() - 1 <= taken[not_exhausted & (sizes > 0)].min(initial=taken.max())
        if budget < np.count_nonzero(sizes):  # one pass: the smallest candidate clusters, one each
            assert taken.max() == 1
            assert sizes[taken > 0].max() <= sizes[(taken == 0) & (sizes > 0)].min()


def test_cluster_margin_clusters_embeddings_when_no_ids_are_given():
    rng = np.random.default_rng(0)
    centres = 20.0 * np.eye(4)
    embeddings = np.repeat(centres, 25, axis=0) + rng.normal(size=(100, 4))
    probabilities = np.full((100, 2), 0.5)
    pool = Pool(probabilities=probabilities, embeddings=embeddings)
    selector = make_selector("cluster_margin", num_clusters=4, margin_multiplier=25)  # all 100 are candidates
    chosen = selector.select(pool, 4, np.random.default_rng(0)).indices
    assert sorted(chosen // 25) == [0, 1, 2, 3]  # one from each blob
    with pytest.raises(ValueError, match="cluster_ids"):
        make_selector("cluster_margin").select(pool, 4, np.random.default_rng(0))


def test_iwes_systematic_weights_are_inverse_inclusion_probabilities_capped():
    probabilities = _probabilities(30, 3, 6)
    scores = entropy(probabilities, axis=1)
    mix, budget = 0.1, 6
    expected_p = budget * ((1 - mix) * scores / scores.sum() + mix / 30)
    assert expected_p.max() < 1  # no capping of probabilities in this case
    selection = make_selector("iwes_systematic", max_weight=8.0, uniform_mix=mix).select(
        Pool(probabilities=probabilities), budget, np.random.default_rng(0)
    )
    np.testing.assert_allclose(selection.weights, np.minimum(1.0 / expected_p[selection.indices], 8.0))
    assert (1.0 / expected_p > 8.0).any()  # the cap is active for some examples


def test_iwes_systematic_sampler_includes_each_example_with_its_probability():
    scores = np.array([5.0, 1.0, 1.0, 0.5, 0.5, 0.2, 0.1, 0.0])
    p = selectors.inclusion_probabilities(scores, 3, uniform_mix=0.05)
    assert p[0] == 1.0 and np.isclose(p.sum(), 3.0) and (p > 0).all()
    rng = np.random.default_rng(0)
    counts = np.zeros(8)
    for _ in range(4000):
        drawn = selectors.systematic_sample(p, rng)
        assert len(np.unique(drawn)) == 3
        counts[drawn] += 1
    np.testing.assert_allclose(counts / 4000, p, atol=0.03)


def test_iwes_systematic_uses_two_model_total_variation():
    first = _probabilities(20, 3, 7)
    second = first.copy()
    second[:5] = second[:5, ::-1]  # models disagree only on the first five examples
    p = selectors.inclusion_probabilities(selectors.total_variations(first, second), 4, uniform_mix=0.0)
    assert (p[5:] == 0).all()
    selection = make_selector("iwes_systematic", uniform_mix=0.0).select(
        Pool(probabilities=first, second_probabilities=second), 4, np.random.default_rng(0)
    )
    assert (selection.indices < 5).all()
    more_than_disagree = selectors.inclusion_probabilities(selectors.total_variations(first, second), 7, 0.0)
    np.testing.assert_allclose(more_than_disagree, np.r_[np.ones(5), np.full(15, 2 / 15)])


# IWeS as the paper defines it (iwes_dis, iwes_ent): references in float64 with log2 written out.


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0), axis=1)


def _reference_iwes_ent(f: np.ndarray) -> np.ndarray:
    """p(x) = -sum_y f_y log2 f_y / log2(classes)."""
    return _entropy_bits(f) / np.log2(f.shape[1])


def _reference_iwes_dis(f: np.ndarray, g: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p(x, y) = |f_y log2 f_y - g_y log2 g_y| at the true label y."""
    fy, gy = (np.asarray(q, np.float64)[np.arange(len(y)), y] for q in (f, g))
    term = lambda q: np.where(q > 0, q * np.log2(np.where(q > 0, q, 1.0)), 0.0)  # noqa: E731
    return np.abs(term(fy) - term(gy))


def _with_certain_rows(probabilities: np.ndarray) -> np.ndarray:
    """`probabilities` (float32) with row 0 one-hot and row 1 uniform: p = 0 and exactly 1 for iwes_ent
    (over 4 classes, where 1/4 and log2 4 are exact)."""
    changed = probabilities.astype(np.float32)
    changed[0] = np.eye(changed.shape[1])[0]
    changed[1] = 1.0 / changed.shape[1]
    return changed


def test_iwes_sampling_probabilities_match_a_float64_reference():
    f = _with_certain_rows(_probabilities(40, 4, 11))
    g = _with_certain_rows(_probabilities(40, 4, 12))
    y = np.random.default_rng(13).integers(0, 4, 40)
    ent, dis = _reference_iwes_ent(f), _reference_iwes_dis(f, g, y)
    np.testing.assert_allclose(selectors.normalised_entropies(f), ent, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(selectors.entropy_disagreements(f, g, y), dis, rtol=1e-12, atol=1e-15)
    assert ent[0] == 0 and ent[1] == 1 and 0 < ent[2:].min() and ent[2:].max() < 1
    assert dis.max() <= 1 / (np.e * np.log(2)) and dis[0] == dis[1] == 0  # identical rows: no disagreement
    # The selectors draw with these probabilities and weight by their inverse (no cap: max_weight=inf).
    rng = np.random.default_rng(0)
    for name, pool, p in [
        ("iwes_ent", Pool(probabilities=f), ent),
        ("iwes_dis", Pool(probabilities=f, second_probabilities=g, labels=y), dis),
    ]:
        chosen = make_selector(name, max_weight=np.inf).select(pool, 40, rng)
        assert len(chosen.indices) > 0 and (p[chosen.indices] > 0).all()
        np.testing.assert_allclose(chosen.weights, 1.0 / p[chosen.indices], rtol=1e-12)


# Draws per statistical test, and the family-wise false-failure rate each test allows (union bound).
DRAWS, FALSE_FAILURE = 20_000, 1e-6


def _binomial_bounds(draws: int, p: np.ndarray, tests: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts outside [low, high] have probability at most FALSE_FAILURE / tests under Binomial(draws, p)."""
    return binom.interval(1.0 - FALSE_FAILURE / tests, draws, p)


def test_iwes_keeps_each_example_independently_with_its_probability():
    """Over DRAWS independent selections (budget = pool, so never reached) example i is kept
    Binomial(DRAWS, p_i) times and each pair together Binomial(DRAWS, p_i p_j) times; all 8 + 28
    counts lie within exact binomial bounds, so a correct sampler fails with probability < 1e-6.
    A budget-exact sampler (fixed count) breaks the pair counts."""
    f = _with_certain_rows(_probabilities(8, 4, 21))  # p includes 0 (row 0) and 1 (row 1)
    p = _reference_iwes_ent(f)
    selector, pool, rng = make_selector("iwes_ent"), Pool(probabilities=f), np.random.default_rng(22)
    kept = np.zeros((DRAWS, 8), bool)
    for draw in range(DRAWS):
        kept[draw, selector.select(pool, 8, rng).indices] = True
    pairs = np.triu_indices(8, 1)
    counts = np.r_[kept.sum(axis=0), (kept.T.astype(np.int64) @ kept)[pairs]]
    expected = np.r_[p, np.outer(p, p)[pairs]]
    low, high = _binomial_bounds(DRAWS, expected, len(counts))
    assert ((low <= counts) & (counts <= high)).all(), (counts, DRAWS * expected)
    assert counts[0] == 0 and counts[1] == DRAWS


def test_iwes_stops_once_the_budget_is_kept_and_returns_fewer_when_the_pool_ends():
    certain = np.full((50, 4), 0.25)  # iwes_ent p = 1 everywhere: the first `budget` visited are kept
    rng = np.random.default_rng(5)
    hits = np.zeros(50)
    for _ in range(DRAWS // 10):
        chosen = make_selector("iwes_ent").select(Pool(probabilities=certain), 10, rng)
        assert len(chosen.indices) == 10 and (chosen.weights == 1.0).all()
        hits[chosen.indices] += 1
    low, high = _binomial_bounds(DRAWS // 10, np.full(50, 10 / 50), 50)  # random order: each kept w.p. 10/50
    assert ((low <= hits) & (hits <= high)).all()
    confident = np.tile([0.997, 0.001, 0.001, 0.001], (50, 1))  # p = 0.017 each: about 0.9 kept per pass
    chosen = make_selector("iwes_ent").select(Pool(probabilities=confident), 10, np.random.default_rng(7))
    assert len(chosen.indices) < 10  # the pass ends before the budget is kept


def _iwes_ent_pool_with(p: np.ndarray) -> Pool:
    """A two-class pool whose iwes_ent probabilities are `p` (solved row by row for the entropy)."""
    from scipy.optimize import brentq

    def binary_entropy(q):
        return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))

    q = np.array([brentq(lambda x, t=target: binary_entropy(x) - t, 1e-15, 0.5) for target in p])
    return Pool(probabilities=np.stack([q, 1 - q], axis=1))


def _weighted_loss_draws(pool: Pool, losses: np.ndarray, max_weight: float, draws: int) -> np.ndarray:
    """The importance-weighted loss sum over the kept examples, once per independent selection."""
    selector, rng = make_selector("iwes_ent", max_weight=max_weight), np.random.default_rng(31)
    sums = np.empty(draws)
    for draw in range(draws):
        chosen = selector.select(pool, pool.size, rng)
        sums[draw] = np.sum(chosen.weights * losses[chosen.indices])
    return sums


def test_iwes_weighted_loss_is_unbiased_for_the_full_pool_loss_and_the_cap_biases_it_as_stated():
    """Sum_kept w_i l_i over independent draws: with no cap its mean is the full-pool loss sum_i l_i,
    variance sum_i l_i^2 (1 - p_i) / p_i; with the cap it is sum_i min(1, cap p_i) l_i, variance
    sum_i (w_i l_i)^2 p_i (1 - p_i). The mean of 4000 draws lies within 5 standard errors
    (normal approximation: false failure 6e-7 per check)."""
    rng = np.random.default_rng(30)
    p = np.r_[rng.uniform(0.02, 0.09, 10), rng.uniform(0.1, 1.0, 20)]  # 10 examples with 1/p above the cap
    pool = _iwes_ent_pool_with(p)
    np.testing.assert_allclose(_reference_iwes_ent(pool.probabilities), p, rtol=1e-9)
    losses = rng.uniform(0.1, 3.0, 30)  # a fixed model's per-example losses
    draws = 4000
    for cap in (np.inf, 10.0):
        weights = np.minimum(1.0 / p, cap)
        expected = np.sum(weights * p * losses)
        standard_error = np.sqrt(np.sum((weights * losses) ** 2 * p * (1 - p)) / draws)
        mean = _weighted_loss_draws(pool, losses, cap, draws).mean()
        assert abs(mean - expected) < 5 * standard_error, (cap, mean, expected, standard_error)
        if cap == np.inf:
            assert expected == pytest.approx(losses.sum())
        else:  # the capped estimator is measurably below the full-pool loss
            assert losses.sum() - expected > 20 * standard_error


def test_iwes_weight_cap_bounds_each_weight_at_max_weight():
    f = _probabilities(200, 3, 41) ** 4  # sharp rows: many small p
    f /= f.sum(axis=1, keepdims=True)
    p = _reference_iwes_ent(f)
    chosen = make_selector("iwes_ent", max_weight=4.0).select(Pool(probabilities=f), 200, np.random.default_rng(0))
    np.testing.assert_allclose(chosen.weights, np.minimum(1.0 / p[chosen.indices], 4.0), rtol=1e-12)
    assert (chosen.weights == 4.0).any() and (chosen.weights < 4.0).any() and chosen.weights.max() == 4.0
    with pytest.raises(SelectionInputError, match=r"^iwes_ent max_weight must be >= 1 \(1/p is\), got 0.5$"):
        make_selector("iwes_ent", max_weight=0.5)


def test_iwes_dis_needs_labels_and_a_matching_second_model():
    f, g = _probabilities(10, 3, 1), _probabilities(10, 3, 2)
    rng = np.random.default_rng(0)
    with pytest.raises(SelectionInputError, match=r"^selector 'iwes_dis' needs Pool.labels, which is None$"):
        make_selector("iwes_dis").select(Pool(probabilities=f, second_probabilities=g), 3, rng)
    with pytest.raises(SelectionInputError, match=r"^Pool.labels must be in \[0, 3\): found 3 at row 0$"):
        make_selector("iwes_dis").select(Pool(probabilities=f, second_probabilities=g, labels=np.full(10, 3)), 3, rng)
    with pytest.raises(SelectionInputError, match=r"second_probabilities of shape \(10, 3\).*got \(10, 2\)$"):
        make_selector("iwes_dis").select(
            Pool(probabilities=f, second_probabilities=g[:, :2], labels=np.zeros(10)), 3, rng
        )
    with pytest.raises(SelectionInputError, match=r"^iwes_ent needs Pool.probabilities over at least 2 classes"):
        make_selector("iwes_ent").select(Pool(probabilities=np.ones((4, 1))), 2, rng)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="did you mean 'margin'.*known: badge"):
        make_selector("margn")
    with pytest.raises(ValueError, match="needs Pool.probabilities"):
        make_selector("entropy").select(Pool(embeddings=np.zeros((4, 2))), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"budget must be an integer in \[0, 4\]"):
        make_selector("random").select(Pool(embeddings=np.zeros((4, 2))), 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="disagree on the number of examples"):
        Pool(probabilities=np.zeros((4, 2)), embeddings=np.zeros((5, 2)))


@pytest.mark.parametrize("name", sorted(selectors.SELECTORS))
def test_every_selector_refuses_an_empty_pool(name):
    empty = Pool(
        probabilities=np.zeros((0, 3)),
        embeddings=np.zeros((0, 2), np.float32),
        labelled_embeddings=np.zeros((0, 2), np.float32),
        cluster_ids=np.zeros(0, np.int64),
    )
    with pytest.raises(SelectionInputError, match=r"^pool is empty: 0 rows$"):
        make_selector(name).select(empty, 0, np.random.default_rng(0))


@pytest.mark.parametrize(
    "field, rows, message",
    [
        ("embeddings", [17, 30, 45], r"^Pool\.embeddings has 3 rows with NaN or Inf \(first: row 17\)$"),
        ("probabilities", [5], r"^Pool\.probabilities has 1 row with NaN or Inf \(first: row 5\)$"),
    ],
)
@pytest.mark.parametrize("name", sorted(selectors.SELECTORS))
def test_every_selector_refuses_nan_or_inf_anywhere_in_the_pool(name, field, rows, message):
    pool = _generic_pool()
    values = getattr(pool, field).copy()
    values[rows[0]] = np.nan
    values[rows[1:], 1] = np.inf
    with pytest.raises(SelectionInputError, match=message):
        make_selector(name).select(dataclasses.replace(pool, **{field: values}), 12, np.random.default_rng(0))


@pytest.mark.parametrize("budget", [-1, 2.5, 61, True])
@pytest.mark.parametrize("name", sorted(selectors.SELECTORS))
def test_every_selector_refuses_a_budget_that_is_not_an_integer_in_the_pool(name, budget):
    expected = rf"^budget must be an integer in \[0, 60\] \(the pool size\), got {re.escape(repr(budget))}$"
    with pytest.raises(SelectionInputError, match=expected):
        make_selector(name).select(_generic_pool(), budget, np.random.default_rng(0))
