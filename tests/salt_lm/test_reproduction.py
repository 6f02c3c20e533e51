"""The SALT study's own measures against hand-computed values: the first step at which a curve reaches
a level (linear between evaluations), the FLOPs share to it (KD steps cost more), "never" counted as
twice the steps; and the bindings each arm trains with."""

import json

import pytest

from littlehelp import checkpoints, study
from salt_lm import reproduction

SETTINGS = {**reproduction.STUDY.settings, "student_steps": 100, "n_kd": 50, "eval_every": 25}
BASELINE = [6.0, 5.6, 5.4, 5.3]  # evaluations at steps 25, 50, 75, 100: its final loss is 5.3


def write_run(folder, losses, flops):
    """metrics.jsonl of a run evaluated (and logged) every 25 steps: `flops` per step at each record."""
    folder.mkdir(parents=True)
    lines = []
    for index, (loss, cost) in enumerate(zip(losses, flops), 1):
        lines += [{"step": 25 * index, "train/flops_per_step": cost}, {"step": 25 * index, "eval/cross_entropy": loss}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def context_of(tmp_path, arm, losses, flops=(15, 15, 10, 10)):
    context = study.ArmContext(reproduction.STUDY, reproduction.STUDY.arm(arm), 0, SETTINGS, tmp_path)
    write_run(context.folder_of("baseline"), BASELINE, [10] * 4)
    if arm != "baseline":
        write_run(context.folder, losses, flops)
    return context


@pytest.mark.parametrize(
    "steps, losses, level, expected",
    [
        ([25, 50, 75], [5.8, 5.5, 5.2], 5.3, 50 + 0.2 / 0.3 * 25),  # between two evaluations
        ([25, 50, 75], [5.8, 5.5, 5.2], 5.5, 50.0),  # at an evaluation
        ([25, 50, 75], [5.0, 4.0, 3.0], 5.3, 25.0),  # already at the first evaluation
        ([25, 50, 75], [5.8, 5.2, 5.6], 5.5, 25 + 0.3 / 0.6 * 25),  # the first crossing, not the last value
        ([25, 50, 75], [5.8, 5.5, 5.4], 5.3, None),  # never
    ],
)
def test_first_reach(steps, losses, level, expected):
    assert reproduction.first_reach(steps, losses, level) == pytest.approx(expected)


def test_compute_fraction_counts_the_kd_steps_at_the_first_logged_cost():
    flops = [(25, 15.0), (50, 15.0), (75, 10.0), (100, 10.0)]
    assert reproduction.compute_fraction(60.0, flops, 50, 10.0, 100) == pytest.approx((50 * 15 + 10 * 10) / 1000)
    assert reproduction.compute_fraction(40.0, flops, 50, 10.0, 100) == pytest.approx(40 * 15 / 1000)
    assert reproduction.compute_fraction(80.0, [(25, 10.0), (100, 10.0)], 50, 10.0, 100) == pytest.approx(0.8)


def test_salt_reaching_the_baseline_s_final_loss(tmp_path):
    context = context_of(tmp_path, "salt", [5.8, 5.5, 5.2, 5.1])
    reached = 50 + 0.2 / 0.3 * 25
    assert reproduction.reach_step(context) == pytest.approx(reached)
    assert reproduction.flops_share(context) == pytest.approx((50 * 15 + (reached - 50) * 10) / 1000)


def write_scores_record(context, flops: float) -> None:
    """The SALT_DS scores record the study reads the scoring pass's FLOPs from."""
    from salt_lm import selection  # pylint: disable=import-outside-toplevel

    selection.write_scores(
        context.work_dir / "teacher_scores",
        [0.5, 1.5],
        {
            "task": "t",
            "split": "train",
            "sequence_length": {"targets": 8},
            "top_k": 10,
            "teacher": {"fingerprint": "f"},
            "seconds": 1.0,
            "flops": flops,
        },
    )


def test_never_counts_as_twice_the_steps_and_salt_ds_pays_for_its_scoring_pass(tmp_path):
    context = context_of(tmp_path, "salt_ds", [5.9, 5.6, 5.4, 5.35])
    write_scores_record(context, 120.0)
    assert reproduction.reach_step(context) == 200
    assert reproduction.flops_share(context) == pytest.approx((50 * 15 + 150 * 10 + 120) / 1000)
    assert reproduction.scoring_flops(context) == 120.0


def test_the_teacher_s_gap_and_training_cost_against_the_seed_s_baseline(tmp_path):
    context = context_of(tmp_path, "baseline", BASELINE)
    write_scores_record(context, 120.0)  # read by SALT_DS only
    write_run(context.folder_of("teacher"), [6.1, 5.9, 5.8, 5.7], [4] * 4)
    assert reproduction.teacher_gap(context) == pytest.approx(5.7 - 5.3)
    assert reproduction.teacher_flops_share(context) == pytest.approx(100 * 4 / 1000)
    assert reproduction.scoring_flops(context) == 0.0


def test_the_baseline_reaches_its_own_final_loss_at_its_last_step(tmp_path):
    context = context_of(tmp_path, "baseline", BASELINE)
    assert reproduction.reach_step(context) == pytest.approx(100)
    assert reproduction.flops_share(context) == pytest.approx(1.0)


def test_bindings_of_each_arm(tmp_path):
    settings = reproduction.STUDY.settings
    context = study.ArmContext(reproduction.STUDY, reproduction.STUDY.arm("salt_ds"), 2, settings, tmp_path)
    teacher = context.folder_of("teacher")
    for step in (150, 300):
        (teacher / "checkpoints" / str(step) / checkpoints.STATE_ITEM).mkdir(parents=True)
    salt_ds = reproduction.student_bindings("salt_ds")(context)
    assert salt_ds["SCORING_TEACHER_DIR"] == teacher / "checkpoints" / "150"
    assert salt_ds["TEACHER_DIR"] == teacher and salt_ds["SCORES_DIR"] == tmp_path / "teacher_scores"
    assert {k: salt_ds[k] for k in ("SEED", "TRAIN_STEPS", "N_KD", "OMEGA")} == {
        "SEED": 2,
        "TRAIN_STEPS": 300,
        "N_KD": 100,
        "OMEGA": 0.5,
    }
    baseline = reproduction.student_bindings("baseline")(context)
    assert "TEACHER_DIR" not in baseline and baseline["checkpoints.CheckpointConfig.save_interval_steps"] == 300
    assert reproduction.student_bindings("salt")(context).keys() == baseline.keys() | {"TEACHER_DIR", "N_KD", "OMEGA"}
    teacher_bindings = reproduction.teacher_bindings(context)
    assert teacher_bindings["TRAIN_STEPS"] == 300  # as many steps as a student: no more data seen
    assert teacher_bindings["checkpoints.CheckpointConfig.save_interval_steps"] == 150
