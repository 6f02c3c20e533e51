"""active.live_reproduction (the live-AL study): F1 read at effort points, per-stream outcomes, and the
random arm read from the margin arm's session."""

import math

import pytest

from active import live
from active import live_reproduction as live_study
from littlehelp import study

SETTINGS = {**live_study.STUDY.settings, **live_study.STUDY.quick}
ROWS = [[100, 0.3, 0.2], [250, 0.5, 0.4], [600, 0.6, 0.7]]


def test_f1_is_the_latest_model_s_within_the_effort_and_nan_before_the_first():
    assert math.isnan(live_study.f1_at(ROWS, 99, live_study.PLAYS))
    assert live_study.f1_at(ROWS, 100, live_study.PLAYS) == 0.3
    assert live_study.f1_at(ROWS, 599, live_study.DOCSTRINGS) == 0.4


def test_effort_points_read_plays_before_the_shift_and_docstrings_after_it():
    settings = {"chars_before_shift": 6000, "chars_after_shift": 4000}
    clocks = {name: (live_study.clock(settings, phase, fraction), column)
              for name, (phase, fraction, column) in live_study.EFFORT_POINTS.items()}
    assert clocks["plays_f1_12.5"] == (750, live_study.PLAYS) and clocks["plays_f1_100"] == (6000, live_study.PLAYS)
    assert clocks["docstrings_f1_0"] == (6000, live_study.DOCSTRINGS)
    assert clocks["docstrings_f1_25"] == (7000, live_study.DOCSTRINGS)
    assert clocks["plays_f1_end"] == (10000, live_study.PLAYS)


def fake_run():
    events = (live.Event("ranked", "source", 0, 0, 20), live.Event("random", "source", 1, 0, 40),
              live.Event("ranked", "source", 2, 20, 50), live.Event("ranked", "target", 0, 50, 110),
              live.Event("random", "target", 1, 40, 90))
    evaluations = (live.Evaluation("ranked", 50, 2, 0.4, 0.3), live.Evaluation("random", 40, 1, 0.2, 0.1),
                   live.Evaluation("ranked", 110, 3, 0.5, 0.6), live.Evaluation("random", 90, 2, 0.3, 0.5))
    return live.LiveRun(events, evaluations)


def test_a_stream_s_outcome_has_its_evaluations_f1_at_each_effort_point_and_sentence_lengths():
    settings = {"chars_before_shift": 50, "chars_after_shift": 60}
    outcome = live_study.stream_outcome(fake_run(), "ranked", settings)
    assert outcome["evaluations"] == [[50, 0.4, 0.3], [110, 0.5, 0.6]]
    values = outcome["values"]
    assert math.isnan(values["plays_f1_25"]) and values["plays_f1_100"] == 0.4 and values["docstrings_f1_100"] == 0.6
    assert values["chars_per_sentence_plays"] == 25 and values["chars_per_sentence_docstrings"] == 60
    assert live_study.stream_outcome(fake_run(), "random", settings)["values"]["docstrings_f1_0"] == 0.1


def test_the_random_arm_is_the_other_stream_of_the_margin_arm_s_session(monkeypatch, tmp_path):
    seen = []

    def run(pools, tests, config, seed):
        seen.append((pools, tests, config.aggregation, config.batch_size, config.tagger.steps, seed))
        return fake_run()

    monkeypatch.setattr(live_study, "load_data", lambda pool, test: (("pools", pool), ("tests", test)))
    monkeypatch.setattr(live, "run", run)
    margin = study.ArmContext(live_study.STUDY, live_study.STUDY.arm("margin_min"), 3, SETTINGS, tmp_path)
    ranked = study.run_arm(margin)
    random = study.run_arm(margin.replace("random_min"))
    assert seen == [(("pools", SETTINGS["pool_size"]), ("tests", SETTINGS["test_size"]), "min",
                     SETTINGS["batch_size"], SETTINGS["steps"], 3)]
    assert ranked["evaluations"] == [[50, 0.4, 0.3], [110, 0.5, 0.6]]
    assert random["evaluations"] == [[40, 0.2, 0.1], [90, 0.3, 0.5]]
    curve = live_study.STUDY.curves[1].read(margin.replace("random_min"))
    end = SETTINGS["chars_before_shift"] + SETTINGS["chars_after_shift"]
    assert len(curve[0]) == live_study.CURVE_POINTS and curve[0][-1] == end and curve[1][-1] == 0.5


def test_claims_pair_each_margin_stream_with_the_random_stream_of_its_session():
    for claim in live_study.STUDY.claims:
        assert claim.arm.removeprefix("margin_") == claim.baseline.removeprefix("random_")
        assert claim.metric in {"plays_f1_100", "docstrings_f1_25", "docstrings_f1_100"}
    assert len(live_study.STUDY.claims) == 3 * len(live_study.AGGREGATIONS)
