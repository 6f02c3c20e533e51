"""The pure parts of scripts/fault_drill.py: the fault plan, the phase a kill hit, the counts and the
target, the report page, and the check of a converted folder (no training here)."""

import dataclasses
import importlib.util
import random
import shutil
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def drill():
    spec = importlib.util.spec_from_file_location("fault_drill", SCRIPTS / "fault_drill.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kills,steps,interval", [(5, 40, 5), (10, 60, 5), (13, 100, 10)])
def test_plan_aims_at_every_phase_round_robin_with_saves_spread_over_the_run(drill, kills, steps, interval):
    plan = drill.plan_faults(kills, steps, interval, random.Random(0))
    kill_plans = [f for f in plan if isinstance(f, drill.KillPlan)]
    assert [k.phase for k in kill_plans] == [drill.KILL_ORDER[i % 5] for i in range(kills)]
    assert set(k.phase for k in kill_plans) == set(drill.PHASES)
    saves = [k.save for k in kill_plans if k.phase in drill.SAVE_PHASES]
    assert saves == sorted(saves) and saves[0] == 2 * interval and saves[-1] <= steps - 2 * interval
    assert all(k.save == 0 for k in kill_plans if k.phase not in drill.SAVE_PHASES)
    specials = [i for i, f in enumerate(plan) if isinstance(f, str)]
    assert sorted(plan[i] for i in specials) == sorted(drill.SPECIAL_FAULTS)
    assert plan[0] == drill.KillPlan("between saves", 2 * interval)  # a finished step before any special fault
    assert min(specials) >= kills // 2


def log(*lines: str) -> str:
    return "\n".join(lines)


STARTED = "I1207 trainer.py:509] training steps 15 -> 40 in /tmp/drill"
COMPILED = "I1207 trainer.py:318] compiled the train step for encoder_decoder[model] in 25.0s"
SAVE_20 = "I1207 checkpoints.py:365] Checkpoint step 20 being written to /tmp/drill/checkpoints."
STEP_17 = "I1207 metrics.py:92] step 17 train: loss=4.1"


@pytest.mark.parametrize(
    "text,committed,phase",
    [
        (log("Restoring the newest good checkpoint in /tmp/drill/checkpoints."), [15], "start-up"),
        (log(STARTED), [15], "compile"),
        (log(STARTED, COMPILED, STEP_17), [15], "mid-step"),
        (log(STARTED, COMPILED, STEP_17, SAVE_20), [15], "mid-save"),
        (log(STARTED, COMPILED, STEP_17, SAVE_20, "step 21 train: loss=4"), [15, 20], "between saves"),
    ],
)
def test_phase_hit_reads_the_log_and_the_steps_on_disk(drill, text, committed, phase):
    assert drill.phase_hit(text, committed) == phase


def test_last_save_begun_is_the_last_save_line(drill):
    assert drill.last_save_begun(log(SAVE_20, SAVE_20.replace("20", "25"))) == 25
    assert drill.last_save_begun(log(STARTED, COMPILED)) is None


def fault(drill, kind: str, survived: bool = True, planned: str | None = None, phase: str | None = None) -> dict:
    """One fault as the report's JSON holds it."""
    outcome = drill.Outcome(kind, "detail", [] if survived else ["broke"], planned_phase=planned, phase=phase)
    return dataclasses.asdict(outcome) | {"survived": outcome.survived, "line": outcome.line()}


def report(drill, faults: list[dict]) -> dict:
    """A report as `main` builds it, around `faults`, with nothing else wrong."""
    built = {
        "date": "2026-12-07",
        "code": "abc",
        "command": "python scripts/fault_drill.py --kills 5",
        "total_seconds": 1.0,
        "uptime_start": "up",
        "uptime_end": "up",
        "config": {"steps": 40, "save_interval": 5, "max_to_keep": 3, "seed": 0},
        "train_command": "train",
        "plan": ["start-up"],
        "faults": faults,
        "kill_phases": drill.phase_counts(faults),
        "mismatches": [],
        "metrics_problems": [],
        "deleted_problems": [],
        "final_problems": [],
        "arrays_compared": 119,
        "lock_takeovers": 5,
        "finite_check": None,
        "work_dir": "/tmp/x",
    }
    return built | {"target_met": drill.target_met(built)}


def test_target_needs_a_kill_hitting_every_phase(drill):
    every = [fault(drill, "kill", planned=p, phase=p) for p in drill.PHASES]
    assert report(drill, every)["target_met"]
    missing = every[:-1] + [fault(drill, "kill", planned="between saves", phase="mid-step")]
    counts = drill.phase_counts(missing)
    assert counts["between saves"] == {"planned": 1, "hit": 0, "survived": 0}
    assert counts["mid-step"] == {"planned": 1, "hit": 2, "survived": 2}
    assert not report(drill, missing)["target_met"]
    assert not report(drill, every + [fault(drill, "sweep_failure", survived=False)])["target_met"]


def test_markdown_has_a_row_per_fault_kind_with_its_description_and_a_phase_table(drill):
    faults = [fault(drill, "kill", planned=p, phase=p) for p in drill.PHASES]
    faults += [fault(drill, kind) for kind in ("truncated_iterator", "sweep_failure", "interrupted_convert")]
    page = drill.markdown(report(drill, faults))
    for kind in ("truncated_iterator", "sweep_failure", "interrupted_convert"):
        assert f"| {kind} | 1 | 1 | 0 | {drill.FAULTS[kind]} |" in page
    assert "| kill | 5 | 5 | 0 |" in page
    for phase in drill.PHASES:
        assert f"| {phase} | 1 | 1 | 1 |" in page
    assert "**met**" in page


def test_converted_problems_accepts_an_equal_folder_and_names_a_partial_one(drill, tmp_path):
    reference = drill.run_folder.write_run_folder(
        drill.convert.load(drill.write_convert_source(tmp_path / "hf")), tmp_path / "reference"
    )
    assert drill.converted_problems(reference, reference) == []
    partial = tmp_path / "partial"
    shutil.copytree(reference, partial)
    (partial / "converted.json").unlink()
    assert drill.converted_problems(partial, reference) == [
        f"{partial} holds ['checkpoints', 'model.gin'], expected ['checkpoints', 'converted.json', 'model.gin']"
    ]
    assert "holds []" in drill.converted_problems(tmp_path / "absent", reference)[0]
