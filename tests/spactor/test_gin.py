"""spactor/gin/spactor: the paper-scale configs parse and build (jax.eval_shape, no memory), and tiny.gin runs
end to end through the CLI, switches at TAU and resumes bitwise-exactly across the switch, and
`littlehelp eval` / `infer` read its T5 parameters alone, and runs/finetune.gin fine-tunes that T5 on a
downstream task, evaluated with the task's metric."""

import json

import gin
import jax
import jax.numpy as jnp
import pytest

from littlehelp import checkpoints, config, main, metrics, partitioning, trainer
from littlehelp.data import DatasetConfig, downstream, vocab
from littlehelp.models import T5, build_model, count_params
from littlehelp.objectives import EncoderDecoderObjective
from spactor import flops_ratio, spactor_curriculum, total_flops_ratio

PAPER = {"t5_1_1_base": (768, 120_000, 12), "t5_1_1_large": (1024, 250_000, 24)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_build(name):
    width, tau, layers = PAPER[name]
    config.import_configurable_modules()
    config.parse_gin([f"spactor/{name}.gin"], ["MODEL_DIR=/tmp/unused"])
    try:
        curriculum = spactor_curriculum()
        assert gin.query_parameter("%TASK_FEATURE_LENGTHS") == {"inputs": 512, "targets": 114}
        assert gin.query_parameter("%TASK") == "c4_span_corruption"
        optimizer = gin.query_parameter("%OPTIMIZER").selector
    finally:
        gin.clear_config()
    hybrid, sc = curriculum.objectives
    assert curriculum.starts == [0, tau] and sc is hybrid.span_corruption
    assert optimizer.endswith("adafactor")
    assert hybrid.first_sentinel_id == vocab.VOCAB_PIECES and hybrid.mask_id == vocab.VOCAB_PIECES + vocab.NUM_SENTINELS
    generator = hybrid.generator_config
    assert (generator.emb_dim, generator.num_layers) == (width, layers // 3)
    batch = {
        "encoder_input_tokens": jax.ShapeDtypeStruct((1, 512), jnp.int32),
        "decoder_input_tokens": jax.ShapeDtypeStruct((1, 114), jnp.int32),
    }
    shapes = jax.eval_shape(curriculum.init_params, jax.random.key(0), batch)
    counts = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in shapes.items()}
    assert counts["t5"] == count_params(T5(hybrid.config), *batch.values())
    assert counts["rtd_head"] == width + 1
    assert 0.1 * counts["t5"] < counts["generator"] < 0.3 * counts["t5"]
    spec = {**batch, "decoder_target_tokens": batch["decoder_input_tokens"]}
    r = flops_ratio(hybrid, spec)
    assert 1.25 < r < 1.45
    if name == "t5_1_1_base":  # the abstract's arithmetic: hybrid for half of 500K steps, 60% of 1M SC steps' FLOPs
        assert total_flops_ratio(250_000, 500_000, 1_000_000, r) == pytest.approx(0.6, abs=0.01)


TINY = [
    "--gin_file=spactor/tiny.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
    "--gin.BATCH_SIZE=8",
    "--gin.TAU=2",
    "--gin.t5.T5Config.emb_dim=32",  # smaller still: this test is about plumbing and exactness
    "--gin.t5.T5Config.mlp_dim=64",
    "--gin.t5.T5Config.num_heads=2",
    "--gin.partitioning.MeshConfig.data=1",
    "--gin.trainer.train.eval_every=0",
    "--gin.trainer.train.log_every=1",
    "--gin.trainer.train.peak_flops_per_device=1e9",
]


def _train(model_dir, steps):
    return main.main(["train", *TINY, f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}"])


def test_tiny_runs_switches_at_tau_and_resumes_exactly_across_the_switch(tmp_path):
    straight = _train(tmp_path / "straight", 4)
    assert (straight.first_step, straight.last_step) == (0, 4)
    records = {r["step"]: r for r in metrics.read_jsonl(tmp_path / "straight" / "metrics.jsonl")}
    assert all("train/rtd/loss" in records[s] for s in (1, 2)) and not any(
        "train/rtd/loss" in records[s] for s in (3, 4)
    )
    assert records[3]["train/flops_per_step"] < records[2]["train/flops_per_step"]
    _train(tmp_path / "resumed", 1)
    resumed = _train(tmp_path / "resumed", 4)
    assert (resumed.first_step, resumed.last_step) == (1, 4)
    left, right = (
        jax.tree.leaves(checkpoints.read_arrays(tmp_path / run / "checkpoints" / "4"))
        for run in ("straight", "resumed")
    )
    assert len(left) == len(right) > 0
    assert all(a.dtype == b.dtype and (a == b).all() for a, b in zip(left, right))
    _eval_and_infer_read_the_t5_parameters(tmp_path / "straight")
    _finetune_starts_from_the_t5_parameters(tmp_path / "straight", tmp_path / "genre")


def _eval_and_infer_read_the_t5_parameters(run):
    """`littlehelp eval` and `infer` on a SpacTor run folder (keys t5/generator/rtd_head) need no
    optimizer: their loss equals the span-corruption loss of the step's t5 arrays read directly."""
    folder = [*TINY, f"--gin.MODEL_DIR={run}", "--gin.TRAIN_STEPS=4"]
    evaluated = main.main(["eval", *folder, "--gin_file=runs/eval.gin", "--gin.EVAL_BATCHES=1"])
    saved = checkpoints.read_arrays(run / "checkpoints" / "4")["params"]
    objective = EncoderDecoderObjective(build_model(), model_key="t5")
    with gin.config_scope("validation"):
        data = DatasetConfig()
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1))
    reference = trainer.Evaluator(mesh, partitioning.logical_axis_rules())(objective, {"t5": saved["t5"]}, 4, data, 1)
    assert evaluated["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    records = main.main(
        [
            "infer",
            *folder,
            "--gin_file=runs/infer.gin",
            "--gin.NUM_EXAMPLES=2",
            "--gin.inference.DecodingConfig.max_decode_length=4",
        ]
    )
    assert len(records) == 2 and all(set(r) == {"input", "target", "prediction"} for r in records)


RUN_FLAGS = (
    "--gin.BATCH_SIZE",
    "--gin.partitioning.MeshConfig.data",
    "--gin.trainer.train.eval_every",
    "--gin.trainer.train.log_every",
    "--gin.trainer.train.peak_flops_per_device",
)


def _finetune_starts_from_the_t5_parameters(run, folder):
    """runs/finetune.gin with restore_model='t5' starts a one-model run from the SpacTor run's T5 (a fresh
    optimizer): at learning rate 0 its parameters stay the saved t5 arrays; `littlehelp eval` then reports
    the task's accuracy of the predictions it wrote."""
    model = [
        f"--gin.t5.T5Config.{name}={value}"
        for name, value in (("vocab_size", 8192), ("emb_dim", 32), ("mlp_dim", 64), ("num_heads", 2), ("head_dim", 32))
    ]
    common = [
        "--gin_file=models/t5_1_1/tiny.gin",
        "--gin_file=runs/finetune.gin",
        *model,
        *(flag for flag in TINY if flag.split("=")[0] in RUN_FLAGS),
        "--gin.TASK='genre_classification'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
        f"--gin.MODEL_DIR={folder}",
        f"--gin.INITIAL_CHECKPOINT_PATH={run / 'checkpoints'}",
        "--gin.checkpoints.CheckpointConfig.restore_model='t5'",
        "--gin.TRAIN_STEPS=5",
    ]
    summary = main.main(["train", *common, "--gin.optimizers.constant_schedule.learning_rate=0.0"])
    assert (summary.first_step, summary.last_step) == (4, 5)
    tuned = checkpoints.read_arrays(folder / "checkpoints" / "5")["params"]
    saved = checkpoints.read_arrays(run / "checkpoints" / "4")["params"]["t5"]
    assert list(tuned) == ["model"]
    assert all((a == b).all() for a, b in zip(jax.tree.leaves(tuned["model"]), jax.tree.leaves(saved), strict=True))
    evaluated = main.main(
        [
            "eval",
            *common,
            "--gin_file=runs/eval.gin",
            "--gin.EVAL_BATCHES=1",
            "--gin.inference.task_metrics.max_examples=6",
        ]
    )
    records = [json.loads(line) for line in (folder / "eval_predictions.jsonl").read_text().splitlines()]
    assert [r["target"] for r in records] == [e.targets for e in downstream.genre_examples("validation")[:6]]
    hits = sum(r["target"] == r["prediction"].strip().lower() for r in records)
    assert evaluated["task/accuracy"] == pytest.approx(100 * hits / 6)
