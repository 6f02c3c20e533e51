"""Every run gin file, end to end through the CLI at tiny size: pretrain (T5 and decoder),
eval, infer, finetune, and the demo."""

import math

import pytest

from littlehelp import main

TINY = [
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
    "--gin.BATCH_SIZE=8",
    "--gin.partitioning.MeshConfig.data=1",
    "--gin.trainer.train.log_every=2",
    "--gin.trainer.train.peak_flops_per_device=1e9",
]


T5_RUN = [
    "--gin_file=models/t5_1_1/tiny.gin",
    "--gin_file=runs/pretrain.gin",
    "--gin.TASK=docstrings_prefix_lm",
    "--gin.TRAIN_STEPS=4",
    *TINY,
]


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    """A 4-step run of runs/pretrain.gin with a tiny T5, evaluated on one validation batch at its last step."""
    model_dir = tmp_path_factory.mktemp("t5")
    summary = main.main(
        [
            "train",
            *T5_RUN,
            f"--gin.MODEL_DIR={model_dir}",
            "--gin.trainer.train.eval_every=4",
            "--gin.trainer.train.eval_batches=1",
        ]
    )
    return model_dir, summary


def test_pretrain_file_trains_checkpoints_and_evaluates(t5_run):
    model_dir, summary = t5_run
    assert (summary.first_step, summary.last_step, summary.preempted) == (0, 4, False)
    assert (model_dir / "checkpoints" / "4").is_dir() and (model_dir / "config.gin").is_file()
    assert math.isfinite(summary.eval_metrics["loss"])
    assert "Run finished: steps 0 -> 4" in summary.describe()


def test_eval_file_reproduces_the_in_training_evaluation(t5_run):
    model_dir, summary = t5_run
    metrics = main.main(
        ["eval", *T5_RUN, "--gin_file=runs/eval.gin", f"--gin.MODEL_DIR={model_dir}", "--gin.EVAL_BATCHES=1"]
    )
    assert metrics["loss"] == pytest.approx(summary.eval_metrics["loss"], rel=1e-5)


def test_infer_file_decodes_examples(t5_run):
    model_dir, _ = t5_run
    records = main.main(
        [
            "infer",
            *T5_RUN,
            "--gin_file=runs/infer.gin",
            f"--gin.MODEL_DIR={model_dir}",
            "--gin.NUM_EXAMPLES=3",
            "--gin.inference.DecodingConfig.max_decode_length=8",
        ]
    )
    assert len(records) == 3 and all(set(r) == {"input", "target", "prediction"} for r in records)
    assert all(r["input"] and r["target"] for r in records)
    assert (model_dir / "inference.jsonl").read_text().count("\n") == 3


def test_finetune_file_starts_from_the_pretrained_checkpoint(t5_run, tmp_path):
    pretrained, _ = t5_run
    summary = main.main(
        [
            "train",
            "--gin_file=models/t5_1_1/tiny.gin",
            "--gin_file=runs/finetune.gin",
            *TINY,
            f"--gin.MODEL_DIR={tmp_path}",
            "--gin.TASK=docstrings_prefix_lm",
            "--gin.TRAIN_STEPS=6",
            f"--gin.INITIAL_CHECKPOINT_PATH={pretrained / 'checkpoints'}",
            "--gin.trainer.train.eval_every=0",
        ]
    )
    assert (summary.first_step, summary.last_step) == (4, 6)


def test_pretrain_file_trains_a_decoder(tmp_path):
    summary = main.main(
        [
            "train",
            "--gin_file=models/decoder/tiny.gin",
            "--gin_file=runs/pretrain.gin",
            "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
            *TINY[1:],
            f"--gin.MODEL_DIR={tmp_path}",
            "--gin.TASK=docstrings_lm",
            "--gin.TRAIN_STEPS=2",
            "--gin.trainer.train.eval_every=0",
            "--gin.optimizers.inverse_sqrt_schedule.warmup_steps=10",
        ]
    )
    assert summary.last_step == 2 and math.isfinite(summary.final_metrics["loss"])
    assert (tmp_path / "checkpoints" / "2").is_dir()


def test_demo_file_trains(tmp_path):
    summary = main.main(
        [
            "train",
            "--gin_file=runs/demo.gin",
            "--gin.BATCH_SIZE=8",
            "--gin.partitioning.MeshConfig.data=1",
            f"--gin.MODEL_DIR={tmp_path}",
            "--gin.TRAIN_STEPS=2",
            "--gin.trainer.train.eval_every=0",
            "--gin.trainer.train.peak_flops_per_device=1e9",
        ]
    )
    assert summary.last_step == 2 and math.isfinite(summary.final_metrics["loss"])
