"""Run tracking and profiling: the W&B tracker (offline, read back from its run files), the profiler
window, the data-wait share, and the settings that refuse bad values."""

import glob
import gzip
import json
import os
import re
import struct
import sys
from pathlib import Path

import pytest

from littlehelp import config, main, metrics, profiling, sweep
from littlehelp.config import ConfigError

WANDB_HEADER, WANDB_BLOCK, CHUNK_HEADER = b":W&B", 32768, 7
FULL, LAST = 1, 4


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file (`run-ID.wandb`: W&B's header, then the LevelDB log format)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(WANDB_HEADER)
    records, position, pending = [], 7, b""
    while position + CHUNK_HEADER <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < CHUNK_HEADER:  # a block's zero-filled tail
            position += WANDB_BLOCK - position % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        pending += data[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(records: list) -> dict[int, dict[str, float]]:
    """{step: {name: value}} of the history records, W&B's own keys (`_step`, `_runtime`, ...) left out."""
    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            history[record.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return history


def run_record(records: list):
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def _train(model_dir: Path, steps: int, *extra: str):
    return main.main(
        [
            "train",
            "--gin_file=runs/smoke.gin",
            f"--gin.MODEL_DIR={model_dir}",
            f"--gin.TRAIN_STEPS={steps}",
            "--gin.MetricsWriter.trackers=['jsonl', 'wandb']",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A tiny run of 3 steps with the W&B tracker (offline), resumed to 5 steps with steps 3 -> 5 profiled."""
    folder = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.setenv(metrics.WANDB_GROUP_VARIABLE, "tracking-test")
        _train(folder, 3)
        first_id = (folder / metrics.WANDB_RUN_ID_NAME).read_text().strip()
        _train(folder, 5, "--gin.trainer.train.profile_steps=(3, 5)")
    return folder, first_id


def test_wandb_offline_run_holds_the_metrics_jsonl_values(tracked_run):
    folder, first_id = tracked_run
    expected = {r.pop("step"): r for r in metrics.read_jsonl(folder / "metrics.jsonl")}
    run_files = sorted(glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(run_files) == 2  # the first run and its resumption
    history = {}
    for run_file in run_files:
        records = wandb_records(Path(run_file))
        run = run_record(records)
        assert (run.run_id, run.display_name, run.run_group) == (first_id, folder.name, "tracking-test")
        history |= wandb_history(records)
    assert sorted(history) == sorted(expected) == [1, 2, 3, 4, 5]
    for step, values in expected.items():
        assert history[step] == pytest.approx(values, rel=1e-12)


def test_wandb_config_is_the_operative_gin_config(tracked_run):
    folder, _ = tracked_run
    records = wandb_records(Path(sorted(glob.glob(str(folder / "wandb" / "offline-run-*" / "run-*.wandb")))[-1]))
    logged = {u.key: json.loads(u.value_json) for u in run_record(records).config.update}
    assert logged["gin"] == config.gin_bindings((folder / "config.gin").read_text())
    assert logged["gin"]["TRAIN_STEPS"] == 5 and logged["model_dir"] == str(folder)


def test_profile_holds_the_two_steps_xla_ops_and_no_compilation(tracked_run):
    folder, _ = tracked_run
    traces = list((folder / profiling.PROFILE_DIR_NAME).glob("plugins/profile/*/perfetto_trace.json.gz"))
    assert len(traces) == 1 and list(traces[0].parent.glob("*.xplane.pb"))
    events = [e for e in json.loads(gzip.decompress(traces[0].read_bytes()))["traceEvents"] if e.get("ph") == "X"]
    markers = sorted(int(e["args"]["step_num"]) for e in events if e["name"] == "train")  # StepTraceAnnotation
    assert markers == [3, 4]
    calls = [e for e in events if e["name"] == "PjitFunction(jit(train_step))"]
    outermost = [c for c in calls if not any(o is not c and o["ts"] <= c["ts"] < o["ts"] + o["dur"] for o in calls)]
    assert len(outermost) == 2
    names = {e["name"] for e in events}
    assert any("fusion" in n and not n.startswith("end:") for n in names)  # XLA's ops ran inside the trace
    assert not {"backend_compile_and_load", "PjRtCpuClient::Compile"} & names  # XLA compiled nothing inside


def test_log_shows_the_data_wait_share(tracked_run):
    folder, _ = tracked_run
    shares = [r["train/data_wait_share"] for r in metrics.read_jsonl(folder / "metrics.jsonl")]
    assert len(shares) == 5 and all(0.0 <= s < 1.0 for s in shares)


def test_step_times_split_data_wait_from_the_rest(monkeypatch):
    clock = iter([10.0, 16.0])  # reset, summary
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(clock))
    times = profiling.StepTimes()
    times.waited(1.5)
    times.finished_step()
    times.finished_step()
    assert times.summary() == {"seconds_per_step": 3.0, "data_wait_share": 0.25}


@pytest.mark.parametrize(
    ("profile_steps", "message"),
    [((3,), "must be (START, END)"), ((4, 2), "0 <= START < END"), ((0, 11), "train.steps=10"), ("1,2", "(START")],
)
def test_profile_steps_are_checked(profile_steps, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        profiling.check_profile_steps(profile_steps, 10)


def test_trackers_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'"):
        metrics.MetricsWriter(tmp_path, 1, trackers=("jsonl", "mlflow"))
    with pytest.raises(ConfigError, match="must include 'jsonl'"):
        metrics.MetricsWriter(tmp_path, 1, trackers=("tensorboard",))
    assert not list(tmp_path.iterdir())


def test_gin_bindings_read_scopes_references_and_macros():
    text = "A = 3\nscope/train.steps = %A\ntrain.model = @models.build()\ntrain.sizes = {'x': [1, 2]}\n"
    assert config.gin_bindings(text) == {
        "A": 3,
        "scope/train.steps": "%A",
        "train.model": "@models.build",
        "train.sizes": {"x": [1, 2]},
    }


def test_sweep_groups_its_points_unless_a_group_is_set(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(sweep.launch, "train", lambda *a: seen.append(os.environ.get("WANDB_RUN_GROUP")))
    monkeypatch.setattr(sweep.launch, "require_finished", lambda result: None)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    points = [sweep.Point(tmp_path / "a=1", {"a": "1"}), sweep.Point(tmp_path / "a=2", {"a": "2"})]
    sweep.train_points(points, [{}, {}], ["runs/smoke.gin"])
    monkeypatch.setenv("WANDB_RUN_GROUP", "mine")
    sweep.train_points(points, [{}, {}], ["runs/smoke.gin"])
    assert seen == [str(tmp_path)] * 2 + ["mine"] * 2
    monkeypatch.delenv("WANDB_RUN_GROUP")
    sweep.train_points(points[:1], [{}], ["runs/smoke.gin"])
    assert "WANDB_RUN_GROUP" not in os.environ


def test_missing_wandb_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"pip install .*\.\[wandb\]"):
        metrics.WandbTracker(tmp_path)
