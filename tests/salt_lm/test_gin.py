"""salt_lm/gin/salt: the CPU-sized and the paper-scale teacher/student pairs build with jax.eval_shape (no memory)
at the sizes their files promise, and salt.gin's curriculum switches from distillation to the plain
LM objective at N_KD; salt_ds.gin runs through the CLI, distilling on the selected sequences, then
training on the whole task."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from active import stage
from littlehelp import config, frozen, main, metrics
from littlehelp.data import teacher_labels
from littlehelp.models import build_model
from littlehelp.objectives import DecoderObjective
from salt_lm import DistillationObjective, salt_curriculum, selection
from tests.helpers import TINY_TIED_DECODER, random_params, register_token_task, save_params_only

# gin files -> (teacher parameters, student parameters) ranges, N_KD, TRAIN_STEPS
PAIRS = {
    (): ((0.5e6, 0.6e6), (3.8e6, 4.3e6), 100, 300),
    ("salt/paper.gin",): ((1.4e9, 1.6e9), (2.7e9, 2.9e9), 36_000, 208_000),
}


def _parameters(model, length: int) -> int:
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), {"decoder_input_tokens": jax.ShapeDtypeStruct((1, length), jnp.int32)}
    )
    return sum(x.size for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("extra", sorted(PAIRS))
def test_the_pairs_build_at_their_sizes_and_switch_at_n_kd(extra):
    (teacher_range, student_range, n_kd, steps) = PAIRS[extra]
    config.import_configurable_modules(["salt_lm.objective"])
    config.parse_gin(["salt/salt.gin", *extra], ["MODEL_DIR='/tmp/unused'", "TEACHER_DIR='/tmp/unused'"])
    try:
        curriculum = salt_curriculum()
        length = gin.query_parameter("%TASK_FEATURE_LENGTHS")["targets"]
        assert gin.query_parameter("%TRAIN_STEPS") == steps
    finally:
        gin.clear_config()
    distillation, language_model = curriculum.objectives
    assert curriculum.starts == [0, n_kd] and isinstance(distillation, DistillationObjective)
    assert isinstance(language_model, DecoderObjective) and language_model.model.config == distillation.model.config
    teacher, student = _parameters(distillation.teacher, length), _parameters(distillation.model, length)
    assert teacher_range[0] < teacher < teacher_range[1] and student_range[0] < student < student_range[1]
    assert teacher < student


def _tiny_decoder(scope: str, width: int) -> list[str]:
    sizes = {
        "vocab_size": 264,
        "emb_dim": width,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "head_dim": 8,
        "mlp_dim": 2 * width,
    }
    return [f"--gin.{scope}/decoder.DecoderConfig.{name}={value}" for name, value in sizes.items()]


def _tiny_run(run_dir, gin_file: str, *bindings: str) -> dict[int, dict]:
    """A 16-token, batch-4 run of `gin_file` with tiny teacher and student models; its metrics by step."""
    main.main(
        [
            "train",
            f"--gin_file={gin_file}",
            f"--gin.MODEL_DIR='{run_dir}'",
            "--gin.TASK_FEATURE_LENGTHS={'targets': 16}",
            "--gin.BATCH_SIZE=4",
            "--gin.trainer.train.log_every=1",
            "--gin.trainer.train.eval_every=0",
            "--gin.trainer.train.peak_flops_per_device=1e9",
            "--gin.partitioning.MeshConfig.data=1",
            *_tiny_decoder("teacher", 16),
            *_tiny_decoder("student", 32),
            *bindings,
        ]
    )
    return {r["step"]: r for r in metrics.read_jsonl(run_dir / "metrics.jsonl")}


SHORT_TASK = "salt_stored_test_lm"  # 24 short sequences per split: labelled in a moment
_rng = np.random.default_rng(0)
register_token_task(
    SHORT_TASK,
    {
        split: [_rng.integers(3, 259, size=n).astype(np.int32) for n in range(4, 28)]
        for split in ("train", "validation")
    },
)


def test_salt_from_stored_labels_of_every_token_trains_as_salt_with_a_live_teacher(tmp_path):
    save_params_only(random_params(build_model(TINY_TIED_DECODER), 0), tmp_path / "teacher")
    common = (f"--gin.TEACHER_DIR='{tmp_path / 'teacher'}'", "--gin.TRAIN_STEPS=2", "--gin.N_KD=2")
    live = _tiny_run(tmp_path / "live", "salt/salt.gin", f"--gin.TASK='{SHORT_TASK}'", *common)
    labels = (
        f"--gin.LABELS_DIR='{tmp_path / 'labels'}'",
        "--gin.LABELS_TOP_K=264",
        f"--gin.SOURCE_TASK='{SHORT_TASK}'",
    )
    stored = _tiny_run(tmp_path / "stored", "salt/salt_stored.gin", *labels, *common)
    for name in ("train/loss", "train/fkl", "train/cross_entropy"):  # the same batch, labels in float16
        assert stored[1][name] == pytest.approx(live[1][name], rel=2e-3)
    assert not (tmp_path / "stored" / frozen.RECORD_NAME).exists()  # no teacher parameters were read
    manifests = [teacher_labels.read_manifest(tmp_path / "labels" / split) for split in ("train", "validation")]
    assert all(m["complete"] and m["top_k"] == 264 for m in manifests)


def test_salt_ds_runs_through_the_cli_distilling_on_the_selection_then_training_on_the_task(tmp_path):
    save_params_only(random_params(build_model(TINY_TIED_DECODER), 0), tmp_path / "teacher")
    records = _tiny_run(
        tmp_path / "run",
        "salt/salt_ds.gin",
        f"--gin.TEACHER_DIR='{tmp_path / 'teacher'}'",
        f"--gin.SCORES_DIR='{tmp_path / 'scores'}'",
        "--gin.TASK='docstrings_lm'",
        "--gin.TRAIN_STEPS=4",
        "--gin.N_KD=2",
    )

    assert [("train/fkl" in records[s]) for s in (1, 2, 3, 4)] == [True, True, False, False]
    scores, _ = selection.read_scores(tmp_path / "scores")
    selected = stage.read_examples("docstrings_lm_salt_ds_0.5", "train", sequence_length={"targets": 16})
    source = stage.read_examples("docstrings_lm", "train", sequence_length={"targets": 16})
    assert len(scores) == len(source) and len(selected) == selection.selected_count(0.5, len(source))
    chosen = sorted(np.argsort(-scores, kind="stable")[: len(selected)])
    assert all(np.array_equal(a["targets"], source[i]["targets"]) for a, i in zip(selected, chosen))
