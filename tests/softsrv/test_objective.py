"""SoftSRV's parameterisations and objective: each prompt is its formula in numpy, a prompt of length 0
gives the LM's plain NLL, the loss is the float64 NLL after the prompt, and through the trainer only
the prompt trains (the LM and the embedder bitwise unchanged, no optimizer state for them), and the
step's FLOPs formula matches a count of the traced gradient's matrix products."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from littlehelp import checkpoints, frozen, partitioning, trainer
from littlehelp.config import ConfigError
from littlehelp.embed import mean_pooled
from littlehelp.models import BertConfig, DecoderConfig, build_model
from littlehelp.objectives import Curriculum
from littlehelp.optimizers import Optimizer
from softsrv.objective import SoftPromptObjective
from softsrv.prompts import MixturePrompt, MLPPrompt, NonContextualPrompt
from tests.helpers import random_params, save_params_only, t5_data

LM = build_model(
    DecoderConfig(vocab_size=264, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
)
EMBEDDER = build_model(
    BertConfig(vocab_size=264, emb_dim=12, num_layers=1, num_heads=2, mlp_dim=24, max_position_embeddings=16)
)
PARAMS = {
    "lm": random_params(LM, 0),
    "embedder": nn.unbox(
        jax.eval_shape(EMBEDDER.init, jax.random.key(0), {"encoder_input_tokens": jnp.zeros((1, 8), jnp.int32)})
    ),
}
EMBEDDER_NOISE = np.random.default_rng(1)
PARAMS["embedder"] = jax.tree.map(
    lambda s: (0.3 * EMBEDDER_NOISE.standard_normal(s.shape)).astype(s.dtype), PARAMS["embedder"]
)


def batch(rows: int = 3, inputs: int = 8, targets: int = 6) -> dict[str, np.ndarray]:
    """Encoder-decoder features: embedder tokens (padded) and LM tokens, the last row with 2 padding targets."""
    rng = np.random.default_rng(0)
    encoder = rng.integers(1, 48, (rows, inputs)).astype(np.int32)
    encoder[-1, -3:] = 0
    decoder_targets = rng.integers(2, 64, (rows, targets)).astype(np.int32)
    weights = np.ones((rows, targets), np.float32)
    decoder_targets[-1, -2:], weights[-1, -2:] = 0, 0.0
    return {
        "encoder_input_tokens": encoder,
        "decoder_target_tokens": decoder_targets,
        "decoder_loss_weights": weights,
        "decoder_input_tokens": np.pad(decoder_targets[:, :-1], ((0, 0), (1, 0))),
    }


def prompt_params(prompt: nn.Module, seed: int = 2):
    shapes = nn.unbox(jax.eval_shape(prompt.init, jax.random.key(0), jnp.zeros((1, 12))))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def test_each_parameterisation_is_its_formula():
    z = np.random.default_rng(3).standard_normal((3, 12)).astype(np.float32)
    nsp, mpk, mlp = NonContextualPrompt(4, 16), MixturePrompt(4, 16, num_prompts=3), MLPPrompt(4, 16, hidden=10)
    p = prompt_params(nsp)
    np.testing.assert_allclose(nsp.apply({"params": p}, z), np.broadcast_to(p["prompt"], (3, 4, 16)))
    p = prompt_params(mpk)
    logits = z.astype(np.float64) @ p["gate"]["kernel"] + p["gate"]["bias"]
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    np.testing.assert_allclose(
        mpk.apply({"params": p}, z), np.einsum("bk,kmw->bmw", weights, p["prompts"]), rtol=1e-5, atol=1e-6
    )
    p = prompt_params(mlp)
    hidden = np.asarray(jax.nn.gelu(z.astype(np.float64) @ p["hidden"]["kernel"] + p["hidden"]["bias"]))
    expected = (hidden @ p["out"]["kernel"] + p["out"]["bias"]).reshape(3, 4, 16)
    np.testing.assert_allclose(mlp.apply({"params": p}, z), expected, rtol=1e-5, atol=1e-6)


def log_softmax64(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def nll64(logits, data) -> float:
    log_p = log_softmax64(logits)
    token = -np.take_along_axis(log_p, data["decoder_target_tokens"][..., None], -1)[..., 0]
    return float((token * data["decoder_loss_weights"]).sum() / data["decoder_loss_weights"].sum())


def test_a_prompt_of_length_zero_gives_the_lms_plain_nll():
    objective = SoftPromptObjective(NonContextualPrompt(0, 16), LM, EMBEDDER, chunk_size=4)
    data = batch()
    params = {**PARAMS, "prompt": prompt_params(objective.prompt)}
    loss, logged = jax.jit(lambda p, b: objective.loss(p, b, None, 0))(params, data)
    plain = LM.logits(PARAMS["lm"], {"decoder_input_tokens": data["decoder_input_tokens"]})
    np.testing.assert_allclose(float(loss), nll64(plain, data), rtol=2e-5)
    assert float(logged["weight"]) == data["decoder_loss_weights"].sum()


@pytest.mark.parametrize(
    "prompt",
    [NonContextualPrompt(3, 16), MixturePrompt(3, 16, num_prompts=2), MLPPrompt(3, 16, hidden=8)],
    ids=["nsp", "mpk", "mlp"],
)
def test_the_loss_is_the_float64_nll_after_the_prompt_of_the_examples_context(prompt):
    objective = SoftPromptObjective(prompt, LM, EMBEDDER, chunk_size=4)
    data = batch()
    params = {**PARAMS, "prompt": prompt_params(prompt)}
    loss = jax.jit(lambda p, b: objective.loss(p, b, None, 0)[0])(params, data)
    mask = (data["encoder_input_tokens"] != 0).astype(np.int32)
    hidden = EMBEDDER.hidden_states(
        PARAMS["embedder"], {"encoder_input_tokens": data["encoder_input_tokens"], "encoder_segment_ids": mask}
    )
    soft = prompt.apply({"params": params["prompt"]}, mean_pooled(hidden, mask))
    inputs = jnp.concatenate([soft, LM.embed(PARAMS["lm"], data["decoder_input_tokens"])], axis=1)
    logits = LM.logits(
        PARAMS["lm"], {"decoder_input_tokens": jnp.ones(inputs.shape[:2], jnp.int32)}, input_embeddings=inputs
    )[:, 3:]
    np.testing.assert_allclose(float(loss), nll64(logits, data), rtol=2e-5)
    if not isinstance(prompt, NonContextualPrompt):  # a contextual prompt differs per example
        assert not np.allclose(soft[0], soft[1])


def test_a_prompt_narrower_than_the_lm_is_refused():
    with pytest.raises(ConfigError, match="the prompt's width 8 is not the LM's embedding width 16"):
        SoftPromptObjective(NonContextualPrompt(2, 8), LM, EMBEDDER)


def test_through_the_trainer_only_the_prompt_trains(tmp_path):
    for name in ("lm", "embedder"):
        save_params_only(PARAMS[name], tmp_path / name)
    objective = SoftPromptObjective(MLPPrompt(3, 16, hidden=8), LM, EMBEDDER, chunk_size=4)
    models = {
        "lm": frozen.FrozenModel(str(tmp_path / "lm"), LM),
        "embedder": frozen.FrozenModel(str(tmp_path / "embedder"), EMBEDDER),
    }
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    data_config = _data_config()
    run = trainer.Trainer(
        str(tmp_path / "run"),
        Curriculum.single(objective),
        Optimizer(optax.adam(0.05), optax.constant_schedule(0.05)),
        data_config,
        mesh,
        partitioning.DEFAULT_RULES,
        checkpoints.CheckpointConfig(),
        frozen_models=models,
    )
    state, _ = run.restore_or_init()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
    assert set(state.params) == {"prompt"} and paths and not any("lm" in p or "embedder" in p for p in paths)
    step, placed = run.step_fn(objective), next(trainer.GlobalBatches(data_config, mesh))
    before = jax.device_get(state.params["prompt"])
    losses = []
    for _ in range(3):
        state, logged = step(state, placed, jax.random.key(0))
        losses.append(float(logged["loss"]))
    assert losses[-1] < losses[0]  # three Adam steps on one batch fit it
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.params))))
    for name in ("lm", "embedder"):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.frozen.params[name]), PARAMS[name])


def _data_config():
    """The in-memory prefix-LM task (byte ids < 264): its encoder-decoder features have every field the
    objective reads."""
    return t5_data(batch_size=4, length=8)


def test_train_flops_count_the_frozen_lms_forward_and_activation_gradients():
    from tests.test_flops import matmul_flops

    objective = SoftPromptObjective(MLPPrompt(3, 16, hidden=8), LM, EMBEDDER, chunk_size=4)
    data = batch()
    params = {**PARAMS, "prompt": prompt_params(objective.prompt)}
    frozen_params = {k: params[k] for k in ("lm", "embedder")}
    step = jax.make_jaxpr(jax.grad(lambda p: objective.loss({**frozen_params, "prompt": p}, data, None, 0)[0]))
    counted = matmul_flops(step(params["prompt"]).jaxpr)
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in data.items()}
    assert counted == pytest.approx(objective.train_flops(shapes), rel=0.05)
