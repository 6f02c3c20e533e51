"""The one statistics rule every study's verdicts come from.

A claim compares an arm with a baseline on one metric, paired by seed: per seed the improvement is
the arm's value minus the baseline's, sign-flipped when lower is better, so that a positive
improvement always favours the arm. The claim holds when the mean improvement exceeds its threshold.

- Mean and standard error of the per-seed improvements, and a two-sided Student t test of
  "mean improvement = threshold" with n - 1 degrees of freedom.
- Several claims in one study: Holm's step-down correction of their p-values at family level 0.05.
- Verdicts from the test alone: "supported" (rejected, mean above the threshold), "contradicted"
  (rejected, mean below it), "inconclusive" (not rejected). The interval shown is the t interval at
  the claim's Holm level, which excludes the threshold exactly when the claim is decided (unless an
  earlier claim in Holm's order was not: step-down then stops).
- A separation check (two control arms, the first known to be better on the metric) whose paired
  differences (first minus second, + when the first is better) have a 95% interval that does not lie
  above 0 makes the claim "untestable": the metric cannot tell the controls apart the known way.
- One seed: no interval and the verdict "one seed: no verdict". A seed without a finite value makes
  the claim "inconclusive" (its interval is not computed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
RULE = (
    "Per claim: the per-seed improvements (arm minus baseline, paired by seed, + when better), their "
    "mean and standard error, a two-sided Student t test of 'mean improvement = threshold' with Holm's "
    "correction over the study's claims at family level 0.05; supported / contradicted when rejected "
    "with the mean above / below the threshold, inconclusive otherwise; untestable unless the separation "
    "check's 95% interval (better control minus worse, + when better) lies above 0; one seed gives no verdict."
)
SUPPORTED, CONTRADICTED, INCONCLUSIVE, UNTESTABLE = "supported", "contradicted", "inconclusive", "untestable"
ONE_SEED = "one seed: no verdict"


@dataclasses.dataclass(frozen=True)
class Interval:
    """Mean, standard error and a two-sided t interval of paired differences (nan where undefined)."""

    n: int
    mean: float
    se: float
    low: float
    high: float
    confidence: float

    def contains(self, value: float) -> bool:
        """Whether `value` lies inside the interval (True when it is undefined)."""
        return not (self.low > value or self.high < value)


def t_interval(values: Sequence[float], confidence: float = 1 - ALPHA) -> Interval:
    """The two-sided Student t interval of the mean of `values` at `confidence`.

    One value (or any non-finite one) gives nan bounds; zero spread gives the mean as both bounds.
    """
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    mean = float(array.mean()) if n else math.nan
    if n < 2 or not np.all(np.isfinite(array)):
        return Interval(n, mean, math.nan, math.nan, math.nan, confidence)
    se = float(array.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return Interval(n, mean, se, mean - half, mean + half, confidence)


def t_test_p(values: Sequence[float], threshold: float = 0.0) -> float:
    """Two-sided p-value of "the mean of `values` equals `threshold`" (Student t, n - 1 dof).

    nan with fewer than two values or a non-finite one; zero spread gives 1 at the threshold, else 0.
    """
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2 or not np.all(np.isfinite(array)):
        return math.nan
    se = array.std(ddof=1) / math.sqrt(len(array))
    if se == 0:
        return 1.0 if array.mean() == threshold else 0.0
    statistic = (array.mean() - threshold) / se
    return float(2 * stats.t.sf(abs(statistic), len(array) - 1))


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan stays nan and does not count as a test)."""
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(tested, key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def holm_levels(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """Each test's significance level in Holm's order: alpha / (m - rank) (nan for untested ones)."""
    tested = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i])
    levels = [math.nan] * len(p_values)
    for rank, i in enumerate(tested):
        levels[i] = alpha / (len(tested) - rank)
    return levels


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A claim's outcome: the verdict word, its interval, raw and Holm-adjusted p, and why."""

    verdict: str
    interval: Interval
    p_value: float
    adjusted_p: float
    reason: str


def separated(differences: Sequence[float]) -> bool:
    """Whether the better control beats the worse one: the 95% interval of their paired differences
    (+ when the better one is ahead) lies above 0."""
    interval = t_interval(differences)
    return not math.isnan(interval.low) and interval.low > 0.0


def judge(
    improvements: Sequence[Sequence[float]],
    thresholds: Sequence[float],
    separations: Sequence[bool | None],
    alpha: float = ALPHA,
) -> list[Verdict]:
    """The verdict of each claim of one study (see the module docstring for the rule).

    `improvements[i]` are claim i's per-seed improvements, `thresholds[i]` the mean improvement it
    needs, `separations[i]` whether its controls were separated (None: the claim has no check).
    Untestable claims and claims without a p-value are left out of Holm's family.
    """
    testable = [s is not False for s in separations]
    raw = [t_test_p(d, t) if ok else math.nan for d, t, ok in zip(improvements, thresholds, testable)]
    adjusted, levels = holm_adjusted(raw), holm_levels(raw, alpha)
    verdicts = []
    for d, threshold, ok, p, q, level in zip(improvements, thresholds, testable, raw, adjusted, levels):
        interval = t_interval(d, 1 - (alpha if math.isnan(level) else level))
        word, reason = _word(interval, threshold, ok, q, alpha)
        verdicts.append(Verdict(word, interval, p, q, reason))
    return verdicts


def _word(interval: Interval, threshold: float, testable: bool, adjusted_p: float, alpha: float) -> tuple[str, str]:
    """(verdict, reason) from a claim's interval, threshold and Holm-adjusted p-value."""
    if interval.n < 2:
        return ONE_SEED, "one seed gives no interval"
    if not testable:
        return UNTESTABLE, "the metric does not separate the controls (their 95% interval does not lie above 0)"
    if math.isnan(adjusted_p):
        return INCONCLUSIVE, "a seed has no finite value"
    if adjusted_p >= alpha:
        return INCONCLUSIVE, f"the interval holds the threshold {threshold:g} (Holm-adjusted p {adjusted_p:.3g})"
    if interval.mean > threshold:
        return SUPPORTED, f"the interval lies above the threshold {threshold:g} (Holm-adjusted p {adjusted_p:.3g})"
    return CONTRADICTED, f"the interval lies below the threshold {threshold:g} (Holm-adjusted p {adjusted_p:.3g})"
