"""Smoke test of scripts/bench_teacher_labels.py --quick (the study's quick models, eight docstrings): the
report is written and complete, its ratios, breakdowns and targets follow from its own numbers."""

import json
import statistics

import pytest

from tests.helpers import load_script


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench_teacher_labels")
    bench = load_script("bench_teacher_labels")
    return bench, bench.main(["--quick", "--out_dir", str(out_dir)]), out_dir


def test_writes_json_equal_to_returned_report_and_markdown_tables(report):
    _, returned, out_dir = report
    assert json.loads((out_dir / "bench_teacher_labels.json").read_text()) == returned
    table = (out_dir / "bench_teacher_labels.md").read_text()
    assert returned["command"] in table and returned["before"]["load"]["uptime"] in table
    assert "| stored_k64 |" in table and "| live |" in table and "## Quantisation" in table
    for target in returned["targets"]:
        assert f"| {target['target']} | {target['value']:.3f} | {'met' if target['met'] else 'missed'} |" in table


def test_steps_ratios_and_memory_follow_from_the_measurements(report):
    _, returned, _ = report
    steps = {r["arm"]: r for r in returned["steps"]}
    assert list(steps) == ["plain", "live", "stored_k64"]
    for r in steps.values():
        assert len(r["seconds"]) == 5 and r["peak_bytes"] == r["temp_bytes"] + r["argument_bytes"] + r["output_bytes"]
        ratios = [s / p for s, p in zip(r["seconds"], steps["plain"]["seconds"])]
        assert r["ratio_to_plain"] == pytest.approx(statistics.median(ratios))
    teacher = steps["live"]["teacher_param_bytes"]
    assert teacher > 0 and steps["live"]["argument_bytes"] - steps["plain"]["argument_bytes"] >= teacher
    stored = steps["stored_k64"]  # ids int32 and float32 log-probabilities [2, 32 * 64], log rest [2, 32]
    assert stored["teacher_param_bytes"] == 0 and stored["label_bytes"] == 2 * 32 * (8 * 64 + 4)
    assert stored["argument_bytes"] == steps["plain"]["argument_bytes"] + stored["label_bytes"]
    (ratio,) = [t for t in returned["targets"] if "step" in t["target"]]
    assert ratio["value"] == stored["ratio_to_plain"] and ratio["met"] == (ratio["value"] <= 1.05)


def test_disk_and_quantisation_come_from_the_store(report):
    _, returned, _ = report
    (disk,), (quantised,) = returned["disk"], returned["quantisation"]
    assert disk["top_k"] == quantised["top_k"] == 64 and disk["examples"] == 8
    assert disk["bytes_per_token"] == pytest.approx(disk["bytes"] / disk["tokens"])
    assert (disk["ids_bytes_per_token"], disk["log_probs_bytes_per_token"]) == (2 * 64, 2 * 64)  # uint16, float16
    assert disk["other_fields_bytes_per_token"] == 14 and 0 < disk["framing_bytes_per_token"] < 20
    (size,) = [t for t in returned["targets"] if "bytes per token" in t["target"]]
    assert size["value"] == disk["bytes_per_token"] and size["met"] == (size["value"] <= 400)
    assert quantised["tokens"] == disk["tokens"] and quantised["ids_equal_share"] == 1.0
    assert 0 < quantised["log_probs_mean_abs_error"] <= quantised["log_probs_max_abs_error"] < 2**-8  # |log p| < 16
    assert quantised["fkl_float32"] > 0 and abs(quantised["fkl_relative_change"]) < 1e-3
