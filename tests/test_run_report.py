"""`littlehelp report`: the learning-curve plot and summary read back from a run folder's files."""

import json
import math

import pytest

from littlehelp import main, run_report
from littlehelp.runs import RunFolderError

RECORDS = [
    {"step": 20, "train/loss": 6.0, "train/tokens_per_second": 100.0, "train/data_wait_share": 0.5},
    {"step": 40, "train/loss": 5.5, "train/tokens_per_second": 300.0, "train/data_wait_share": 0.1},
    {"step": 40, "eval/loss": 5.25},
    {"step": 60, "train/loss": 5.0, "train/tokens_per_second": 200.0, "train/data_wait_share": 0.2},
]


def test_summary_lines_follow_the_records():
    predictions = [{"input": "a  b\nc", "target": "t", "prediction": "p" * 150}]
    lines = run_report.summary_lines(RECORDS, predictions)
    assert lines[:4] == [
        "steps: 60",
        "train loss: 6.000 at step 20 -> 5.000 at step 60",
        f"eval loss at step 40: 5.250 (perplexity {math.exp(5.25):.1f})",
        "median 200 tokens/s, 20.0% of the time waiting for data",
    ]
    assert lines[4:] == ["input:      a b c", "target:     t", "prediction: " + "p" * 97 + "..."]


def test_report_writes_the_curves_of_a_run_folder(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    lines = main.main(["report", f"--model_dir={tmp_path}"])
    assert (tmp_path / run_report.CURVES_NAME).stat().st_size > 1000
    assert lines[-1] == f"learning curves: {tmp_path / run_report.CURVES_NAME}"
    assert "train loss: 6.000" in capsys.readouterr().out


def test_a_folder_without_metrics_is_refused(tmp_path):
    with pytest.raises(RunFolderError, match="has no metrics.jsonl"):
        run_report.report(tmp_path)
