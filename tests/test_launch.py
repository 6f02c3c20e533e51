"""littlehelp.launch.train: a run folder that holds its final step is reused without training; a bad
configuration raises `ConfigError` (never `SystemExit`); a folder built with other settings is refused
by name and left as it was; a tiny real run returns its last logged metrics and is reused after."""

import json

import pytest

from littlehelp import launch, metrics
from littlehelp.config import ConfigError
from littlehelp.models import build_model
from tests.helpers import TINY_DECODER, random_params, save_params_only

SMOKE = "runs/smoke.gin"  # the tiny T5 on the in-memory task, one device; needs MODEL_DIR and TRAIN_STEPS


def _write_launch_record(folder, gin_files, bindings):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "launch.json").write_text(json.dumps({"gin_files": gin_files, "bindings": bindings}))


def _contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("with_record", [True, False])  # without: a folder `littlehelp train` made
def test_a_folder_holding_its_final_step_is_reused(tmp_path, capsys, with_record):
    folder = tmp_path / "run"
    save_params_only(random_params(build_model(TINY_DECODER), 0), folder)  # step 0
    if with_record:
        _write_launch_record(folder, [SMOKE], ["TRAIN_STEPS=0"])
    before = _contents(folder)
    result = launch.train(SMOKE, {"TRAIN_STEPS": 0}, folder)
    assert result == launch.RunResult(folder, 0, {}, {}, 0.0, reused=True, preempted=False)
    assert result.exit_code == 0
    assert "run: step 0 is there, reused" in capsys.readouterr().out
    assert _contents(folder) == before


@pytest.mark.parametrize(
    "gin_file, bindings, fragment",
    [
        ("no/such.gin", {"BATCH_SIZE": 4}, "no/such.gin"),
        (SMOKE, ["TRAIN_STEPS=2", "trainer.train.evl_every=1"], "did you mean 'eval_every'?"),
        (SMOKE, {"TRAIN_STEPS": "two"}, "train.steps expects int, got str 'two'"),
    ],
)
def test_a_bad_configuration_raises_config_error_naming_it(tmp_path, gin_file, bindings, fragment):
    with pytest.raises(ConfigError) as error:
        launch.train(gin_file, bindings, tmp_path / "run")
    assert fragment in error.value.one_line()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "gin_files, bindings, difference",
    [
        ([SMOKE], ["TRAIN_STEPS=4"], "TRAIN_STEPS=4 there, TRAIN_STEPS=300 now"),
        ([SMOKE], ["TRAIN_STEPS=300", "BATCH_SIZE=4"], "BATCH_SIZE=4 there, BATCH_SIZE unset now"),
        (["runs/demo.gin"], ["TRAIN_STEPS=300"], "gin files runs/demo.gin there, runs/smoke.gin now"),
    ],
)
def test_a_folder_built_with_other_settings_is_refused_by_name_and_left_alone(
    tmp_path, gin_files, bindings, difference
):
    folder = tmp_path / "runs" / "x"
    save_params_only(random_params(build_model(TINY_DECODER), 0), folder)
    _write_launch_record(folder, gin_files, bindings)
    before = _contents(folder)
    with pytest.raises(ConfigError) as error:
        launch.train(SMOKE, {"TRAIN_STEPS": 300}, folder)
    assert error.value.one_line() == (
        f"run folder {folder} was built with other settings ({difference}); use another folder or delete it"
    )
    assert _contents(folder) == before


def test_settings_compare_by_each_names_last_value():
    there = {"gin_files": ["a.gin"], "bindings": ["X=1", "Y = 2", "X=3"]}
    assert launch.settings_difference(there, {"gin_files": ["a.gin"], "bindings": ["Y=2", "X=3"]}) == ""
    assert launch.settings_difference(there, {"gin_files": ["a.gin"], "bindings": ["Y=2", "X=1"]}) == (
        "X=3 there, X=1 now"
    )


def test_a_tiny_run_returns_its_last_metrics_and_is_reused_after(tmp_path, capsys):
    folder = tmp_path / "run"
    result = launch.train(SMOKE, {"TRAIN_STEPS": 2}, folder)
    train_records = [r for r in metrics.read_jsonl(folder / "metrics.jsonl") if "train/loss" in r]
    last = {k.removeprefix("train/"): v for k, v in train_records[-1].items() if k.startswith("train/")}
    assert (result.model_dir, result.last_step, result.reused, result.preempted) == (folder, 2, False, False)
    assert result.train_metrics == last and result.eval_metrics == {} and result.seconds > 0
    assert json.loads((folder / "launch.json").read_text()) == {"gin_files": [SMOKE], "bindings": ["TRAIN_STEPS=2"]}
    assert "run: 2 steps done in" in capsys.readouterr().out

    again = launch.train([SMOKE], ["TRAIN_STEPS=2"], folder)
    assert again == launch.RunResult(folder, 2, last, {}, 0.0, reused=True, preempted=False)
    with pytest.raises(ConfigError, match=r"other settings \(TRAIN_STEPS=2 there, TRAIN_STEPS=3 now\)"):
        launch.train(SMOKE, {"TRAIN_STEPS": 3}, folder)
