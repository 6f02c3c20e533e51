"""The one statistics rule: intervals and p-values against scipy, Holm against hand-computed cases,
and the verdict words in each case the rule names."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from littlehelp import stats


@pytest.mark.parametrize("values", [[0.3, 0.1, 0.5], [1.0, -2.0, 0.5, 0.25, 3.0], list(np.linspace(-1, 2, 9))])
def test_t_interval_and_p_value_match_scipy(values):
    interval = stats.t_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert interval.low == pytest.approx(low, rel=1e-12) and interval.high == pytest.approx(high, rel=1e-12)
    assert interval.se == pytest.approx(scipy_stats.sem(values), rel=1e-12)
    for threshold in (0.0, 0.2):
        expected = scipy_stats.ttest_1samp(values, threshold).pvalue
        assert stats.t_test_p(values, threshold) == pytest.approx(expected, rel=1e-10)


def test_three_seeds_at_two_standard_errors_are_not_significant():
    """t = 2 with 2 degrees of freedom: p = 0.18, so 'two standard errors' is not the rule."""
    values = [1.0, 2.0, 3.0]  # mean 2, s.e. 1/sqrt(3); shift so that t = 2 against 0
    shifted = [v - 2.0 + 2.0 / math.sqrt(3) for v in values]
    assert stats.t_test_p(shifted) == pytest.approx(0.1835, abs=1e-3)
    (verdict,) = stats.judge([shifted], [0.0], [None])
    assert verdict.verdict == stats.INCONCLUSIVE


def test_holm_adjusted_p_values_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, 1 x 0.04 = 0.04 (running max)
    assert stats.holm_adjusted([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # step-down: 0.5 x 2 = 1.0 is capped at 1; a later smaller product keeps the running max
    assert stats.holm_adjusted([0.3, 0.2]) == pytest.approx([0.4, 0.4])
    assert stats.holm_adjusted([0.01, math.nan]) == [0.01, pytest.approx(math.nan, nan_ok=True)]
    assert stats.holm_levels([0.04, 0.01, 0.02]) == pytest.approx([0.05, 0.05 / 3, 0.025])


def test_verdict_words():
    better, worse, noise = [0.5, 0.6, 0.55, 0.52], [-0.5, -0.6, -0.55, -0.52], [0.3, -0.2, 0.1, -0.25]
    words = [v.verdict for v in stats.judge([better, worse, noise], [0.0, 0.0, 0.0], [None, None, None])]
    assert words == [stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE]
    # a threshold above a supported mean turns it into contradicted
    assert stats.judge([better], [1.0], [None])[0].verdict == stats.CONTRADICTED
    assert stats.judge([better], [0.0], [False])[0].verdict == stats.UNTESTABLE
    (one,) = stats.judge([[0.7]], [0.0], [None])
    assert one.verdict == stats.ONE_SEED and math.isnan(one.interval.low)
    assert stats.judge([[0.7]], [0.0], [False])[0].verdict == stats.ONE_SEED  # one seed separates nothing either
    (missing,) = stats.judge([[0.5, math.nan, 0.4]], [0.0], [None])
    assert missing.verdict == stats.INCONCLUSIVE


def test_holm_makes_a_marginal_claim_inconclusive_beside_others():
    marginal = [0.1, 0.35, 0.2, 0.05, 0.3]  # p ~ 0.03 alone
    assert stats.t_test_p(marginal) < 0.05
    assert stats.judge([marginal], [0.0], [None])[0].verdict == stats.SUPPORTED
    noise = [0.3, -0.2, 0.1, -0.25, 0.05]
    verdicts = stats.judge([marginal, noise, noise], [0.0] * 3, [None] * 3)
    assert verdicts[0].verdict == stats.INCONCLUSIVE and verdicts[0].adjusted_p == pytest.approx(
        3 * stats.t_test_p(marginal)
    )


def test_separation_needs_an_interval_above_zero():
    assert stats.separated([0.5, 0.6, 0.55])
    assert not stats.separated([-0.5, -0.6, -0.55])  # the controls differ, but the wrong way round
    assert not stats.separated([0.5, -0.4, 0.1])
    assert not stats.separated([0.5])
