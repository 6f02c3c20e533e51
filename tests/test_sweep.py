"""`littlehelp sweep`: grid expansion and folder names, refused input, printed commands, and one tiny
2-point sweep end to end (trained, summarised, then rerun without training) with a diverging point
recorded as failed, and a sweep that stops at a failure, a Ctrl-C or a SIGTERM."""

import json
import shlex
from pathlib import Path

import pytest

from littlehelp import checkpoints, launch, main, metrics, sweep
from littlehelp.trainer import NonFiniteLossError

LR = "optimizers.inverse_sqrt_schedule.peak_learning_rate"
TINY_RUN = [
    "--gin_file=models/t5_1_1/tiny.gin",
    "--gin_file=runs/pretrain.gin",
    "--gin.TASK=docstrings_prefix_lm",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
    "--gin.BATCH_SIZE=8",
    "--gin.partitioning.MeshConfig.data=1",
    "--gin.trainer.train.log_every=1",
    "--gin.trainer.train.peak_flops_per_device=1e9",
    "--gin.TRAIN_STEPS=2",
]


def test_axis_items_keep_their_gin_text():
    axis = sweep.parse_axis("X=[8, 1e-3, 'a b', (1, [2, 3]), {'k': 1}, @optimizers.adamw(), %OTHER,]")
    assert axis == sweep.Axis("X", ("8", "1e-3", "'a b'", "(1, [2, 3])", "{'k': 1}", "@optimizers.adamw()", "%OTHER"))


def test_grid_is_the_product_with_the_last_axis_fastest():
    axes = [sweep.parse_axis("BATCH_SIZE=[8, 16]"), sweep.parse_axis(f"{LR}=[0.01, 0.003]")]
    points = sweep.grid_points(axes, "out")
    assert [p.folder.name for p in points] == [
        "BATCH_SIZE=8,peak_learning_rate=0.01",
        "BATCH_SIZE=8,peak_learning_rate=0.003",
        "BATCH_SIZE=16,peak_learning_rate=0.01",
        "BATCH_SIZE=16,peak_learning_rate=0.003",
    ]
    assert points[1].values == {"BATCH_SIZE": "8", LR: "0.003"}
    assert all(str(p.folder.parent) == "out" for p in points)


def test_folder_names_are_safe_and_keep_colliding_names_whole():
    assert sweep.short_names(["a.lr", "b.lr", "c.d.x"]) == {"a.lr": "a.lr", "b.lr": "b.lr", "c.d.x": "x"}
    axes = [
        sweep.parse_axis("OPTIMIZER=[@optimizers.adamw(), @optimizers.adafactor()]"),
        sweep.parse_axis("eval/trainer.train.steps=['a b/c']"),
    ]
    assert [p.folder.name for p in sweep.grid_points(axes, "out")] == [
        "OPTIMIZER=optimizers.adamw,steps=a_b_c",
        "OPTIMIZER=optimizers.adafactor,steps=a_b_c",
    ]
    long = sweep.folder_name({"X": "'" + "y" * 300 + "'"}, {"X": "X"})
    assert len(long.encode()) <= sweep.MAX_FOLDER_NAME and long.startswith("X=yyy")


def test_sweep_file_lines_come_before_the_flags(tmp_path):
    grid = tmp_path / "grid.gin"
    grid.write_text("# learning rates\nBATCH_SIZE = [8, 16]  # two sizes\n\nZ_LOSS=['#not a comment']\n")
    axes = sweep.gather_axes([f"{LR}=[0.1]"], [str(grid)])
    assert axes == [
        sweep.Axis("BATCH_SIZE", ("8", "16")),
        sweep.Axis("Z_LOSS", ("'#not a comment'",)),
        sweep.Axis(LR, ("0.1",)),
    ]


def assert_refused(capsys, tmp_path, argv, *fragments):
    """`littlehelp sweep ARGV` exits 2 with one line holding every fragment, having created no folder."""
    with pytest.raises(SystemExit) as exit_info:
        main.main(["sweep", *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("littlehelp: error: ") and all(f in error for f in fragments), error
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flag, fragments",
    [
        ("BATCH_SIZE", ("'BATCH_SIZE' must look like NAME=[VALUE, ...]",)),
        ("BATCH_SIZE=8", ("must look like NAME=[VALUE, ...]",)),
        ("BATCH_SIZE=[]", ("'BATCH_SIZE=[]' has no values",)),
        ("BATCH_SIZE=[8 16]", ("[8 16] is not a gin list",)),
        ("BATCH_SIZE=[8, 8]", ("share the folder BATCH_SIZE=8",)),
        ("trainer.train.evl_every=[1, 2]", ("sweep point evl_every=1", "evl_every", "eval_every")),
    ],
)
def test_bad_sweeps_are_refused_before_anything_runs(capsys, tmp_path, flag, fragments):
    assert_refused(capsys, tmp_path, [*TINY_RUN, f"--sweep={flag}", f"--gin.MODEL_DIR={tmp_path / 's'}"], *fragments)


def test_missing_model_dir_and_missing_sweep_are_refused(capsys, tmp_path):
    assert_refused(capsys, tmp_path, [*TINY_RUN, "--sweep=Z_LOSS=[0.0]"], "set --gin.MODEL_DIR=DIR")
    assert_refused(capsys, tmp_path, [*TINY_RUN, f"--gin.MODEL_DIR={tmp_path / 's'}"], "at least one --sweep")
    assert_refused(
        capsys,
        tmp_path,
        [*TINY_RUN, "--sweep=BATCH_SIZE=[4]", f"--gin.MODEL_DIR={tmp_path / 's'}"],
        "BATCH_SIZE is both swept and set",
    )


def test_print_commands_prints_one_runnable_train_command_per_point(capsys, tmp_path):
    out = tmp_path / "grid dir"
    commands = main.main(
        [
            "sweep",
            *TINY_RUN,
            "--sweep=Z_LOSS=[0.0, 1e-4]",
            f"--sweep={LR}=[0.01]",
            f"--gin.MODEL_DIR={out}",
            "--print_commands",
        ]
    )
    assert capsys.readouterr().out.strip().splitlines() == commands and len(commands) == 2
    assert not out.exists()
    for command, z_loss in zip(commands, ["0.0", "1e-4"]):
        words = shlex.split(command)
        rest, overrides = main.split_overrides(words[2:])
        args = main.build_parser().parse_args([words[1], *rest])
        assert (words[0], args.command) == ("littlehelp", "train")
        assert args.gin_file == ["models/t5_1_1/tiny.gin", "runs/pretrain.gin"]
        assert overrides[-3:] == [
            f"Z_LOSS={z_loss}",
            f"{LR}=0.01",
            f"MODEL_DIR={out / f'Z_LOSS={z_loss},peak_learning_rate=0.01'}",
        ]
        assert "TASK=docstrings_prefix_lm" in overrides


DIVERGED = "loss is nan at step 1: stopping; no checkpoint was saved (the bad state was not saved)"


def recorded(train, diverges=None):
    """`train` (standing in for `launch.train`) that records the folders it is called for in its `calls`,
    and raises the trainer's `NonFiniteLossError` for the folder named `diverges` (what an infinite
    learning rate does, without its compile)."""

    def train_or_diverge(gin_files, bindings, model_dir):
        calls.append(Path(model_dir).name)
        if Path(model_dir).name == diverges:
            raise NonFiniteLossError(DIVERGED)
        return train(gin_files, bindings, model_dir)

    calls = []
    train_or_diverge.calls = calls
    return train_or_diverge


def failing_sweep(capsys, argv, code=1):
    """`littlehelp sweep ARGV` exits `code`; returns its last stderr line and the points of sweep.json."""
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    assert exit_info.value.code == code
    error = capsys.readouterr().err.strip().splitlines()[-1]
    model_dir = next(a.partition("=")[2] for a in argv if a.startswith("--gin.MODEL_DIR="))
    return error, json.loads((Path(model_dir) / "sweep.json").read_text())["points"]


def test_sweep_trains_each_point_summarises_and_reuses_finished_points(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "train", recorded(launch.train, diverges="peak_learning_rate=1e999"))
    argv = ["sweep", *TINY_RUN, f"--sweep={LR}=[0.01, 1e999, 0.002]", f"--gin.MODEL_DIR={tmp_path}"]
    error, summaries = failing_sweep(capsys, argv)
    assert error == (
        f"littlehelp: error: 1 of 3 sweep points failed (peak_learning_rate=1e999: {DIVERGED}); "
        f"see {tmp_path / 'sweep.md'}"
    )
    assert launch.train.calls == ["peak_learning_rate=0.01", "peak_learning_rate=1e999", "peak_learning_rate=0.002"]
    assert [(s["status"], s["error"]) for s in summaries] == [
        ("finished", None),
        ("failed", DIVERGED),
        ("finished", None),
    ]
    del summaries[1]
    folders = [tmp_path / "peak_learning_rate=0.01", tmp_path / "peak_learning_rate=0.002"]
    for folder, summary, value in zip(folders, summaries, ["0.01", "0.002"]):
        assert f"inverse_sqrt_schedule.peak_learning_rate = {value}\n" in (folder / "config.gin").read_text()
        train_records = [r for r in metrics.read_jsonl(folder / "metrics.jsonl") if "train/loss" in r]
        assert summary["values"] == {LR: value} and summary["step"] == 2 == train_records[-1]["step"]
        assert summary["train"]["loss"] == train_records[-1]["train/loss"]
    assert summaries[0]["train"]["loss"] != summaries[1]["train"]["loss"]
    table = (tmp_path / "sweep.md").read_text()
    assert table.startswith("| peak_learning_rate | step | train loss | train accuracy | status |")
    assert "| 0.002 | 2 |" in table and f"| 1e999 | - | - | - | failed: {DIVERGED} |" in table
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    written = (tmp_path / "sweep.json").read_text()

    records = [(f / "metrics.jsonl").read_text() for f in folders]
    assert failing_sweep(capsys, argv)[0] == error
    assert launch.train.calls[3:] == launch.train.calls[:3]
    assert [(f / "metrics.jsonl").read_text() for f in folders] == records
    assert [checkpoints.finished_steps(f / "checkpoints") for f in folders] == [[2], [2]]
    assert (tmp_path / "sweep.json").read_text() == written


def finished(gin_files, bindings, model_dir):
    """`launch.train` standing in for a run that reached its final step (2) and wrote no metrics."""
    return launch.RunResult(Path(model_dir), 2, {}, {}, 0.0, reused=False, preempted=False)


def test_stop_on_failure_stops_at_the_first_failed_point_and_still_writes_the_summary(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "train", recorded(finished, diverges="Z_LOSS=1e-4"))
    error, summaries = failing_sweep(
        capsys,
        ["sweep", *TINY_RUN, "--sweep=Z_LOSS=[0.0, 1e-4, 1e-3]", f"--gin.MODEL_DIR={tmp_path}", "--stop_on_failure"],
    )
    assert error == (
        f"littlehelp: error: sweep stopped at Z_LOSS=1e-4: {DIVERGED}; 1 point not run; see {tmp_path / 'sweep.md'}"
    )
    assert launch.train.calls == ["Z_LOSS=0.0", "Z_LOSS=1e-4"]
    assert [s["status"] for s in summaries] == ["finished", "failed", "not run"]
    assert "| 1e-3 | - | not run |" in (tmp_path / "sweep.md").read_text()


def preempted(gin_files, bindings, model_dir):
    """`launch.train` standing in for a run that SIGTERM stopped at step 1 with its state saved."""
    return launch.RunResult(Path(model_dir), 1, {}, {}, 0.0, reused=False, preempted=True)


def interrupted(gin_files, bindings, model_dir):
    """`launch.train` standing in for a run stopped by Ctrl-C."""
    raise KeyboardInterrupt


@pytest.mark.parametrize("stopped, raised, code", [(preempted, SystemExit, 75), (interrupted, KeyboardInterrupt, None)])
def test_a_sigterm_or_ctrl_c_stops_the_sweep_at_once(capsys, tmp_path, monkeypatch, stopped, raised, code):
    monkeypatch.setattr(launch, "train", recorded(stopped))
    with pytest.raises(raised) as exit_info:
        main.main(["sweep", *TINY_RUN, "--sweep=Z_LOSS=[0.0, 1e-4]", f"--gin.MODEL_DIR={tmp_path}"])
    assert getattr(exit_info.value, "code", None) == code
    assert launch.train.calls == ["Z_LOSS=0.0"] and not (tmp_path / "sweep.json").exists()
