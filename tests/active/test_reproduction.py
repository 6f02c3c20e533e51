"""active.reproduction (the active-learning study): per-run summaries, which runs each arm makes, and
that every metric a study table shows is produced by the arms it is measured on."""

import pytest

from active import loop
from active import reproduction as active_study
from littlehelp import study

SETTINGS = {**active_study.STUDY.settings, **active_study.STUDY.quick}


def records(accuracies, churns, seconds=0.5):
    return [
        loop.RoundRecord(i, 10 * (i + 1), a, 0.0 if i == 0 else seconds, None if i == 0 else c)
        for i, (a, c) in enumerate(zip(accuracies, [None, *churns]))
    ]


def test_summary_gives_area_final_accuracy_and_mean_churn_after_the_seed_set():
    run = records([0.5, 0.7, 0.9], [0.2, 0.4])
    assert active_study.summary(run, "large_digits") == pytest.approx(
        {"area_large_digits": 0.7, "final_accuracy_large_digits": 0.9, "churn_large_digits": 0.3}
    )


@pytest.fixture
def fake_loop(monkeypatch):
    """Replaces the loop with constructed records; returns the (data set, schedule, selector, alpha) it saw."""
    calls = []

    def run_loop(context, dataset, schedule, selector, alpha):
        calls.append((dataset, schedule, selector, alpha))
        seconds = 1.0 if schedule in context.settings["large_batch"].values() else 0.25
        return records([0.5, 0.6, 0.8], [0.1, 0.3], seconds)

    monkeypatch.setattr(active_study, "run_loop", run_loop)
    return calls


def context_of(arm, tmp_path):
    return study.ArmContext(active_study.STUDY, active_study.STUDY.arm(arm), 0, SETTINGS, tmp_path)


def test_a_large_batch_selector_runs_every_data_set_then_the_large_batches(fake_loop, tmp_path):
    outcome = active_study.STUDY.arm("cluster_margin").run(context_of("cluster_margin", tmp_path))
    small, large = SETTINGS["schedules"], SETTINGS["large_batch"]
    assert fake_loop == [(d, small[d], "cluster_margin", 0.0) for d in active_study.DATASETS] + [
        (d, large[d], "cluster_margin", 0.0) for d in active_study.LARGER
    ]
    assert outcome["values"]["selection_seconds"] == 0.25  # the small-batch runs only
    assert set(outcome["accuracy"]) == {*active_study.DATASETS, "large_digits", "large_breast_cancer"}
    assert outcome["accuracy"]["wine"] == [[10, 20, 30], [0.5, 0.6, 0.8]]


def test_other_selectors_skip_large_batches_and_churn_arms_distil_margin_on_the_larger_pools(fake_loop, tmp_path):
    active_study.STUDY.arm("badge").run(context_of("badge", tmp_path))
    assert [call[0] for call in fake_loop] == list(active_study.DATASETS)
    fake_loop.clear()
    active_study.STUDY.arm("margin_a0.5").run(context_of("margin_a0.5", tmp_path))
    assert fake_loop == [(d, SETTINGS["schedules"][d], "margin", 0.5) for d in active_study.LARGER]


def test_every_metric_and_curve_is_read_from_the_arms_it_is_measured_on(fake_loop, tmp_path):
    for arm in active_study.STUDY.arms:
        study.run_arm(context_of(arm.name, tmp_path))
    for metric in active_study.STUDY.metrics:
        for arm in active_study.STUDY.measured_arms(metric):
            assert study.measure(context_of(arm.name, tmp_path), metric) >= 0
    for curve in active_study.STUDY.curves:
        for arm in active_study.STUDY.measured_arms(curve):
            assert curve.read(context_of(arm.name, tmp_path)) == ([10, 20, 30], [0.5, 0.6, 0.8])
    wine = next(c for c in active_study.STUDY.curves if c.name == "accuracy_wine")
    assert "margin_a0.9" not in {arm.name for arm in active_study.STUDY.measured_arms(wine)}


def test_claims_compare_margin_with_random_cluster_margin_with_margin_and_distillation_with_a_0():
    compared = {(c.arm, c.baseline, c.metric, c.threshold) for c in active_study.STUDY.claims}
    assert compared == {("margin", "random", f"area_{d}", 0.0) for d in active_study.DATASETS} | {
        ("cluster_margin", "margin", f"area_large_{d}", 0.0) for d in active_study.LARGER
    } | {("margin_a0.5", "margin", f"churn_{d}", 0.0) for d in active_study.LARGER} | {
        ("margin_a0.5", "margin", f"final_accuracy_{d}", -0.01) for d in active_study.LARGER
    }
