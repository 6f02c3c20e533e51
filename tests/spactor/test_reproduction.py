"""The SpacTor study's accounting (spactor/reproduction.py) against hand-computed values."""

import json

import pytest

from littlehelp import stats, study
from littlehelp.study import FLOPS_RECORD as FLOPS
from littlehelp.study import flops_between
from spactor import reproduction
from spactor.reproduction import STUDY, pretrain_bindings, tau_steps

SETTINGS = {**STUDY.settings, "overrides": {"BATCH_SIZE": 4}}


def context(arm: str, tmp_path, seed: int = 1) -> study.ArmContext:
    return study.ArmContext(STUDY, STUDY.arm(arm), seed, SETTINGS, tmp_path)


def test_flops_between_counts_each_record_for_the_steps_since_the_previous_one():
    records = [
        {"step": 25, FLOPS: 10.0},
        {"step": 50, FLOPS: 10.0},
        {"step": 60, "eval/loss": 1.0},
        {"step": 100, FLOPS: 20.0},
    ]
    assert flops_between(records, 0, 100) == 25 * 10 + 25 * 10 + 50 * 20
    assert flops_between(records, 30, 60) == 20 * 10 + 10 * 20  # (30, 50] at 10, (50, 60] at 20
    assert flops_between(records, 0, 200) == flops_between(records, 0, 100)


def test_spactor_flops_are_the_hybrid_steps_then_the_span_corruption_steps():
    hybrid = [{"step": 2, FLOPS: 7.0}, {"step": 4, FLOPS: 7.0}]  # hybrid throughout
    continued = [{"step": 3, FLOPS: 3.0}, {"step": 4, FLOPS: 3.0}]  # branched at tau = 1: records from step 1
    assert flops_between(hybrid, 0, 1) + flops_between(continued, 1, 4) == 1 * 7 + 3 * 3
    sc = [{"step": 8, FLOPS: 3.0}]  # one record for 2S = 8 steps: SC(S) is its first half
    assert flops_between(sc, 0, 4) == 4 * 3


@pytest.mark.parametrize("fraction, steps, tau", [(0.25, 200, 50), (0.5, 200, 100), (0.5, 4, 2), (0.25, 2, 1)])
def test_tau_steps(fraction, steps, tau):
    assert tau_steps(fraction, steps) == tau


def test_pretraining_runs_save_where_other_arms_branch(tmp_path):
    sc = STUDY.arm("sc_2s").bindings(context("sc_2s", tmp_path))
    hybrid = STUDY.arm("hybrid").bindings(context("hybrid", tmp_path))
    continued = pretrain_bindings(context("spactor_0.25", tmp_path), 50)
    interval = "checkpoints.CheckpointConfig.save_interval_steps"
    assert (sc["TAU"], sc["TRAIN_STEPS"], sc[interval]) == (0, 400, 200)  # step S kept for SC(S)
    assert (hybrid["TAU"], hybrid["TRAIN_STEPS"], hybrid[interval]) == (None, 200, 50)  # taus 50 and 100
    assert (continued["TAU"], continued["TRAIN_STEPS"], continued[interval]) == (50, 200, 200)
    assert all(b["SEED"] == 1 and b["BATCH_SIZE"] == 4 for b in (sc, hybrid, continued))


def _measured(tmp_path, values: dict[str, float], seed: int = 1) -> None:
    for arm, value in values.items():
        folder = context(arm, tmp_path, seed).folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / study.MEASURED_FILE).write_text(json.dumps({"genre_accuracy": value}))


def test_past_midpoint_is_the_arm_minus_the_mean_of_the_sc_controls(tmp_path):
    _measured(tmp_path, {"sc_s": 40.0, "sc_2s": 46.0, "spactor_0.5": 44.0})
    assert study.measure(context("spactor_0.5", tmp_path), reproduction.PRIMARY) == 44.0 - 43.0
    assert study.measure(context("sc_2s", tmp_path), reproduction.PRIMARY) == 3.0


def _write_run(folder, flops_per_step: float, last_step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text(json.dumps({"step": last_step, FLOPS: flops_per_step}) + "\n")
    (folder / study.OUTCOME_FILE).write_text(json.dumps({"train_flops": flops_per_step * last_step}))


def test_flops_in_both_conventions_and_the_hybrid_step_cost(tmp_path):
    _write_run(context("sc_2s", tmp_path).folder, 3.0, 400)
    _write_run(context("hybrid", tmp_path).folder, 5.5, 200)
    fraction = next(m for m in STUDY.metrics if m.name == "pretraining_flops_vs_sc_2s")
    cost = next(m for m in STUDY.metrics if m.name == "hybrid_step_cost")
    assert study.measure(context("hybrid", tmp_path), cost) == 5.5 / 3.0
    assert study.measure(context("hybrid", tmp_path), fraction) == (200 * 5.5) / (400 * 3.0)
    assert study.measure(context("sc_2s", tmp_path), fraction) == 1.0


def test_claims_are_on_genre_accuracy_past_the_midpoint_and_need_the_sc_controls_separated():
    assert [c.arm for c in STUDY.claims] == [f"spactor_{f:g}" for f in reproduction.TAUS]
    assert all(
        c.separation == ("sc_2s", "sc_s")
        and c.metric == "genre_accuracy_past_midpoint"
        and c.baseline is None
        and c.threshold == 0
        for c in STUDY.claims
    )


def _values(gains: list[float], spactor: list[float]) -> dict[str, dict[str, list[float]]]:
    """Per-seed past-midpoint values: SC(2S) and SC(S) at +-gain/2, each SpacTor arm at `spactor`."""
    name = reproduction.PRIMARY.name
    values = {"sc_2s": {name: [g / 2 for g in gains]}, "sc_s": {name: [-g / 2 for g in gains]}}
    return values | {f"spactor_{f:g}": {name: spactor} for f in reproduction.TAUS}


def test_a_metric_that_does_not_separate_the_sc_controls_makes_the_claims_untestable():
    unseparated = study.judge_claims(STUDY, _values([3.0, -2.0, 1.0, 0.5, -1.5], [4.0, 5.0, 6.0, 5.0, 4.5]))
    assert [c["verdict"] for c in unseparated] == [stats.UNTESTABLE] * len(reproduction.TAUS)
    separated = study.judge_claims(STUDY, _values([5.0, 6.0, 4.5, 5.5, 6.5], [4.0, 5.0, 6.0, 5.0, 4.5]))
    assert [c["verdict"] for c in separated] == [stats.SUPPORTED] * len(reproduction.TAUS)
