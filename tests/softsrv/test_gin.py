"""gin/softsrv: nsp / mpk / mlp build their parameterisation in front of SmolLM2-135M's sizes and
MiniLM's (jax.eval_shape, no memory), and mlp.gin trains a prompt through the CLI on files of
examples (tiny frozen models at the real vocabularies' sizes), its checkpoints holding the prompt alone."""

import jax
import jax.numpy as jnp
import pytest

from littlehelp import checkpoints, config, main, metrics
from littlehelp.models import BertConfig, DecoderConfig, build_model
from littlehelp.models.convert.run_folder import converted
from softsrv import MixturePrompt, MLPPrompt, NonContextualPrompt, SoftPromptObjective
from tests.helpers import random_params, save_params_only

KINDS = {"nsp": NonContextualPrompt, "mpk": MixturePrompt, "mlp": MLPPrompt}


def _count(shapes) -> int:
    return sum(x.size for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_file_builds_its_prompt_for_the_real_models(name):
    config.import_configurable_modules(["softsrv.objective"])
    config.parse_gin([f"softsrv/{name}.gin"], ["MODEL_DIR='/unused'", "TRAIN_FILE='/unused'", "EVAL_FILE='/unused'"])
    try:
        objective = SoftPromptObjective()
    finally:
        config.gin.clear_config()
    assert isinstance(objective.prompt, KINDS[name]) and (objective.prompt.length, objective.prompt.width) == (32, 576)
    tokens = {"decoder_input_tokens": jax.ShapeDtypeStruct((1, 8), jnp.int32),
              "encoder_input_tokens": jax.ShapeDtypeStruct((1, 8), jnp.int32)}
    assert 134e6 < _count(jax.eval_shape(objective.lm.init, jax.random.key(0), tokens)) < 135e6  # SmolLM2-135M
    assert 22e6 < _count(jax.eval_shape(objective.embedder.init, jax.random.key(0), tokens)) < 23e6  # MiniLM-L6
    prompt = _count(jax.eval_shape(objective.init_params, jax.random.key(0), tokens))
    assert prompt == {"nsp": 32 * 576, "mpk": 4 * 32 * 576 + 384 * 4 + 4,
                      "mlp": 384 * 512 + 512 + 512 * 32 * 576 + 32 * 576}[name]


def test_mlp_gin_trains_a_prompt_through_the_cli(tmp_path):
    lm = build_model(DecoderConfig(vocab_size=49152, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                                   head_dim=8, mlp_dim=32, tie_embeddings=True))
    embedder = build_model(BertConfig(vocab_size=30522, emb_dim=12, num_layers=1, num_heads=2, mlp_dim=24,
                                  max_position_embeddings=512))
    save_params_only(random_params(lm, 0), tmp_path / "lm")
    save_params_only(random_params(embedder, 1), tmp_path / "embedder")
    texts = ["def add(a, b): return a + b", "print('hello')", "x = [i * i for i in range(3)]", "import os",
             "while True: break"]
    (tmp_path / "train.txt").write_text("\n".join(texts))
    (tmp_path / "eval.jsonl").write_text("\n".join(f'{{"text": "{t}"}}' for t in texts[:4]))
    sizes = {"lm/decoder.DecoderConfig": {"emb_dim": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                                          "head_dim": 8, "mlp_dim": 32},
             "embedder/bert.BertConfig": {"emb_dim": 12, "num_layers": 1, "num_heads": 2, "mlp_dim": 24}}
    main.main(["train", "--gin_file=softsrv/mlp.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
               f"--gin.TRAIN_FILE='{tmp_path / 'train.txt'}'", f"--gin.EVAL_FILE='{tmp_path / 'eval.jsonl'}'",
               f"--gin.LM_DIR='{tmp_path / 'lm'}'", f"--gin.EMBEDDER_DIR='{tmp_path / 'embedder'}'",
               f"--gin.convert.folder_vocabulary.model_dir='{converted('smollm2_135m')}'",
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}", "--gin.BATCH_SIZE=2", "--gin.TRAIN_STEPS=2",
               "--gin.PROMPT_LENGTH=2", "--gin.softsrv.MLPPrompt.width=16", "--gin.softsrv.MLPPrompt.hidden=8",
               "--gin.trainer.train.eval_every=2", "--gin.trainer.train.eval_batches=1", "--gin.trainer.train.log_every=1",
               "--gin.trainer.train.peak_flops_per_device=1e9", "--gin.partitioning.MeshConfig.data=1",
               *(f"--gin.{scope}.{k}={v}" for scope, values in sizes.items() for k, v in values.items())])
    records = {r["step"]: r for r in metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl")}
    assert {"train/loss", "train/cross_entropy"} <= set(records[1]) and "eval/loss" in records[2]
    saved = checkpoints.read_arrays(tmp_path / "run" / "checkpoints" / "2")
    assert set(saved["params"]) == {"prompt"} and set(saved["params"]["prompt"]) == {"hidden", "out"}
