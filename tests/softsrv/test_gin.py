"""gin/softsrv: nsp / mpk / mlp build their parameterisation in front of SmolLM2-135M's sizes and
MiniLM's (jax.eval_shape, no memory), and mlp.gin trains a prompt through the CLI on files of
examples (tiny frozen models at the real vocabularies' sizes), its checkpoints holding the prompt alone."""

import jax
import jax.numpy as jnp
import pytest

from littlehelp import checkpoints, config, main, metrics
from softsrv import MixturePrompt, MLPPrompt, NonContextualPrompt, SoftPromptObjective
from tests.softsrv.helpers import tiny_setup

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
    overrides = tiny_setup(tmp_path)
    main.main(["train", "--gin_file=softsrv/mlp.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
               f"--gin.TRAIN_FILE='{tmp_path / 'train.txt'}'", f"--gin.EVAL_FILE='{tmp_path / 'eval.jsonl'}'",
               "--gin.TRAIN_STEPS=2", "--gin.trainer.train.eval_every=2", *overrides])
    records = {r["step"]: r for r in metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl")}
    assert {"train/loss", "train/cross_entropy"} <= set(records[1]) and "eval/loss" in records[2]
    saved = checkpoints.read_arrays(tmp_path / "run" / "checkpoints" / "2")
    assert set(saved["params"]) == {"prompt"} and set(saved["params"]["prompt"]) == {"hidden", "out"}
