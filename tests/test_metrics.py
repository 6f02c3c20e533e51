"""Metrics writers: JSONL records, TensorBoard events, plain log lines off a terminal; matmul rate."""

import json

from absl import logging

from littlehelp import metrics


def test_writer_records_jsonl_and_tensorboard(tmp_path, caplog):
    with caplog.at_level(logging.INFO), metrics.MetricsWriter(tmp_path, total_steps=5, interactive=False) as writer:
        writer.write(1, {"loss": 2.5, "accuracy": 0.25})
        writer.write(2, {"loss": 2.0}, prefix="eval")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 1, "train/loss": 2.5, "train/accuracy": 0.25}, {"step": 2, "eval/loss": 2.0}]
    assert metrics.read_jsonl(tmp_path / "metrics.jsonl") == records
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert any("step 1 train" in message and "loss=2.5" in message for message in caplog.messages)


def test_writer_appends_across_restarts(tmp_path):
    for step in (1, 2):
        with metrics.MetricsWriter(tmp_path, total_steps=2, interactive=False) as writer:
            writer.write(step, {"loss": float(step)})
    assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_matmul_rate_is_plausible():
    rate = metrics.measure_matmul_flops(size=256, repeats=3)
    assert 1e7 < rate < 1e15
