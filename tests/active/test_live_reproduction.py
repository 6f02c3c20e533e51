"""active.live_reproduction (the live-AL study): F1 read at equal characters (interpolated), per-stream
outcomes, the random arm read from the margin arm's session, and the pre-registered claims."""

import math

import numpy as np
import pytest

from active import live
from active import live_reproduction as live_study
from littlehelp import study

SETTINGS = {**live_study.STUDY.settings, **live_study.STUDY.quick}
ROWS = [[100, 0.3, 0.2], [250, 0.5, 0.4], [600, 0.6, 0.7]]


def test_f1_is_interpolated_at_equal_characters_and_nan_outside_the_evaluations():
    # By hand: 175 is halfway from 100 to 250 (0.3 -> 0.5); 425 halfway from 250 to 600 (0.4 -> 0.7).
    assert live_study.f1_at(ROWS, 175, live_study.PLAYS) == pytest.approx(0.4)
    assert live_study.f1_at(ROWS, 425, live_study.DOCSTRINGS) == pytest.approx(0.55)
    assert live_study.f1_at(ROWS, 100, live_study.PLAYS) == 0.3 and live_study.f1_at(ROWS, 600, live_study.PLAYS) == 0.6
    assert math.isnan(live_study.f1_at(ROWS, 99, live_study.PLAYS))
    assert math.isnan(live_study.f1_at(ROWS, 601, live_study.PLAYS)) and math.isnan(live_study.f1_at([], 0, 1))


def test_f1_at_matches_a_numpy_reference_on_an_uneven_curve():
    rng = np.random.default_rng(0)
    clocks = np.cumsum(rng.integers(20, 90, size=12))
    f1 = rng.uniform(size=12)
    rows = [[int(c), float(v), 0.0] for c, v in zip(clocks, f1)]
    budgets = rng.uniform(clocks[0], clocks[-1], size=50)
    right = np.searchsorted(clocks, budgets, side="left").clip(1)  # the first evaluation at or past the budget
    weight = (budgets - clocks[right - 1]) / (clocks[right] - clocks[right - 1])
    reference = (1 - weight) * f1[right - 1] + weight * f1[right]
    got = [live_study.f1_at(rows, b, live_study.PLAYS) for b in budgets]
    np.testing.assert_allclose(got, reference, rtol=1e-12)


def test_effort_points_read_plays_before_the_shift_and_docstrings_after_it():
    settings = {"chars_before_shift": 6000, "chars_after_shift": 4000}
    clocks = {
        name: (live_study.clock(settings, phase, fraction), column)
        for name, (phase, fraction, column) in live_study.EFFORT_POINTS.items()
    }
    assert clocks["plays_f1_12.5"] == (750, live_study.PLAYS) and clocks["plays_f1_100"] == (6000, live_study.PLAYS)
    assert clocks["docstrings_f1_0"] == (6000, live_study.DOCSTRINGS)
    assert clocks["docstrings_f1_25"] == (7000, live_study.DOCSTRINGS)
    assert clocks["plays_f1_end"] == (10000, live_study.PLAYS)


def fake_run():
    events = (
        live.Event("ranked", "source", 0, 0, 20),
        live.Event("random", "source", 1, 0, 40),
        live.Event("ranked", "source", 2, 20, 50),
        live.Event("ranked", "target", 0, 50, 110),
        live.Event("random", "target", 1, 40, 90),
    )
    evaluations = (
        live.Evaluation("ranked", 50, 2, 0.4, 0.3),
        live.Evaluation("random", 40, 1, 0.2, 0.1),
        live.Evaluation("ranked", 110, 3, 0.5, 0.6),
        live.Evaluation("random", 90, 2, 0.3, 0.5),
    )
    return live.LiveRun(events, evaluations)


def test_a_stream_s_outcome_has_its_evaluations_f1_at_each_effort_point_and_sentence_lengths():
    settings = {"chars_before_shift": 50, "chars_after_shift": 60}
    outcome = live_study.stream_outcome(fake_run(), "ranked", settings)
    assert outcome["evaluations"] == [[50, 0.4, 0.3], [110, 0.5, 0.6]]
    values = outcome["values"]
    assert math.isnan(values["plays_f1_25"]) and values["plays_f1_100"] == 0.4 and values["docstrings_f1_100"] == 0.6
    assert values["chars_per_sentence_plays"] == 25 and values["chars_per_sentence_docstrings"] == 60
    # The random stream at the shift (50 characters): a fifth of the way from 40 (0.1) to 90 (0.5).
    assert live_study.stream_outcome(fake_run(), "random", settings)["values"]["docstrings_f1_0"] == pytest.approx(0.18)


def test_the_random_arm_is_the_other_stream_of_the_margin_arm_s_session(monkeypatch, tmp_path):
    seen = []

    def run(pools, tests, config, seed):
        seen.append((pools, tests, config.aggregation, config.batch_chars, config.tagger.steps, seed))
        return fake_run()

    monkeypatch.setattr(live_study, "load_data", lambda pool, test: (("pools", pool), ("tests", test)))
    monkeypatch.setattr(live, "run", run)
    margin = study.ArmContext(live_study.STUDY, live_study.STUDY.arm("margin_min"), 3, SETTINGS, tmp_path)
    ranked = study.run_arm(margin)
    random = study.run_arm(margin.replace("random_min"))
    assert seen == [
        (
            ("pools", SETTINGS["pool_size"]),
            ("tests", SETTINGS["test_size"]),
            "min",
            SETTINGS["batch_chars"],
            SETTINGS["steps"],
            3,
        )
    ]
    assert ranked["evaluations"] == [[50, 0.4, 0.3], [110, 0.5, 0.6]]
    assert random["evaluations"] == [[40, 0.2, 0.1], [90, 0.3, 0.5]]
    grid, f1 = live_study.STUDY.curves[1].read(margin.replace("random_min"))
    end = SETTINGS["chars_before_shift"] + SETTINGS["chars_after_shift"]
    assert len(grid) == live_study.CURVE_POINTS and grid[-1] == end
    assert [x for x, y in zip(grid, f1) if not math.isnan(y)] == [x for x in grid if 40 <= x <= 90]
    assert f1[grid.index(50)] == pytest.approx(0.18)


def test_claims_pair_each_margin_stream_with_the_random_stream_of_its_session():
    for claim in live_study.STUDY.claims:
        assert claim.arm.removeprefix("margin_") == claim.baseline.removeprefix("random_")
        assert claim.metric in {"plays_f1_100", "docstrings_f1_25", "docstrings_f1_100"}
    assert len(live_study.STUDY.claims) == 3 * len(live_study.AGGREGATIONS)


def test_only_the_pre_registered_mean_margin_ranking_makes_claims_the_others_are_exploratory():
    claims = [c for c in live_study.STUDY.claims if not c.exploratory]
    assert live_study.PRIMARY == "mean" and {c.arm for c in claims} == {"margin_mean"} and len(claims) == 3
    assert all(c.threshold == 0 for c in claims)
    assert {c.arm for c in live_study.STUDY.claims if c.exploratory} == {"margin_min"}
    assert live_study.STUDY.arm("margin_min").title == "min margin (exploratory)"
    assert live_study.STUDY.arm("random_min").title == "random, beside min margin (exploratory)"
