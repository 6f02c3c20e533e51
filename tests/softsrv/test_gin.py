"""softsrv/gin/softsrv: nsp / mpk / mlp build their parameterisation in front of SmolLM2-135M's sizes and
MiniLM's (jax.eval_shape, no memory). Training through the CLI: tests/softsrv/test_run.py."""

import jax
import jax.numpy as jnp
import pytest

from littlehelp import config
from softsrv import MixturePrompt, MLPPrompt, NonContextualPrompt, SoftPromptObjective

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
    tokens = {
        "decoder_input_tokens": jax.ShapeDtypeStruct((1, 8), jnp.int32),
        "encoder_input_tokens": jax.ShapeDtypeStruct((1, 8), jnp.int32),
    }
    assert 134e6 < _count(jax.eval_shape(objective.lm.init, jax.random.key(0), tokens)) < 135e6  # SmolLM2-135M
    assert 22e6 < _count(jax.eval_shape(objective.embedder.init, jax.random.key(0), tokens)) < 23e6  # MiniLM-L6
    prompt = _count(jax.eval_shape(objective.init_params, jax.random.key(0), tokens))
    assert (
        prompt
        == {"nsp": 32 * 576, "mpk": 4 * 32 * 576 + 384 * 4 + 4, "mlp": 384 * 512 + 512 + 512 * 32 * 576 + 32 * 576}[
            name
        ]
    )
