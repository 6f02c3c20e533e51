"""SoftSRV's objective (docs/methods/softsrv.md): the frozen LM H reconstructs a target example x from the
soft prompt P_theta(z), z = E(x) the frozen sentence embedder's vector of x; only theta trains.

Loss = NLL(x | P_theta(E(x))) per target token, the prompt's m vectors prepended to x's token
embeddings (H's `embed`, then `input_embeddings`), the head chunked over x's positions
(`losses.chunked_cross_entropy`). Batches are seqio's encoder-decoder features of a Task whose
"inputs" are x in the embedder's vocabulary and "targets" x in H's: `encoder_input_tokens` feed E
(mean-pooled over non-padding tokens, L2-normalised, as `littlehelp.embed`), `decoder_input_tokens` /
`decoder_target_tokens` / `decoder_loss_weights` are H's shifted input, targets and weights.

Both models are frozen models of the trainer (`trainer.train.frozen_models`, under `lm_key` and
`embedder_key`): no gradient, no optimizer state, never saved; the run's checkpoints hold the
prompt's parameters alone (`prompt_key`).
"""

from __future__ import annotations

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from littlehelp import losses
from littlehelp.config import ConfigError
from littlehelp.embed import mean_pooled
from littlehelp.features import DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS, ENCODER_INPUT_TOKENS, ENCODER_SEGMENT_IDS
from littlehelp.models import Model
from littlehelp.objectives import token_weights
from littlehelp.typing import Array, Batch, Metrics, Params

FROZEN_TRAIN_MULTIPLIER = 2.0  # forward + activation gradients (flops.TRAIN_MULTIPLIER adds weight gradients)


@gin.configurable(module="softsrv")
class SoftPromptObjective:
    """NLL of each example under the frozen `lm` given `prompt(E(example))` (see the module docstring).

    prompt: a parameterisation of `softsrv.prompts` (its `width` must be the LM's embedding width);
    lm: the frozen LM's seam; embedder: the frozen sentence embedder's seam (a BERT; z is as wide as
    its embeddings); chunk_size: positions per chunk of the LM head.
    """

    def __init__(
        self,
        prompt: nn.Module = gin.REQUIRED,
        lm: Model = gin.REQUIRED,
        embedder: Model = gin.REQUIRED,
        prompt_key: str = "prompt",
        lm_key: str = "lm",
        embedder_key: str = "embedder",
        chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
    ):
        if prompt.width != lm.config.emb_dim:
            raise ConfigError(
                f"softsrv: the prompt's width {prompt.width} is not the LM's embedding width {lm.config.emb_dim}"
            )
        self.prompt, self.lm, self.embedder, self.context_dim = prompt, lm, embedder, embedder.config.emb_dim
        self.prompt_key, self.lm_key, self.embedder_key, self.chunk_size = prompt_key, lm_key, embedder_key, chunk_size
        self.trainable_keys = (prompt_key,)
        self.name = f"softsrv[{type(prompt).__name__},m={prompt.length}]"

    def init_params(self, rng: Array, batch: Batch) -> Params:
        """The prompt's parameters only (the LM and the embedder are frozen models)."""
        return {self.prompt_key: self.prompt.init(rng, jnp.zeros((1, self.context_dim), jnp.float32))["params"]}

    def context(self, params: Params, tokens: Array) -> Array:
        """z [b, the embedder's width]: its mean-pooled, L2-normalised vectors of `tokens` (0: padding)."""
        mask = (tokens != 0).astype(jnp.int32)
        hidden = self.embedder.hidden_states(
            params[self.embedder_key], {ENCODER_INPUT_TOKENS: tokens, ENCODER_SEGMENT_IDS: mask}
        )
        return jax.lax.stop_gradient(mean_pooled(hidden, mask))

    def prompt_embeddings(self, params: Params, context: Array) -> Array:
        """P_theta(z) [b, m, width] in the LM's embedding dtype."""
        prompt = self.prompt.apply({"params": params[self.prompt_key]}, context)
        return prompt.astype(jnp.dtype(self.lm.config.dtype))

    def loss(self, params: Params, batch: Batch, rng: Array, step: Array) -> tuple[Array, Metrics]:
        """Mean NLL per target token; metrics: loss, cross_entropy, accuracy, weight."""
        del rng, step
        lm = jax.lax.stop_gradient(params[self.lm_key])
        prompt = self.prompt_embeddings(params, self.context(params, batch[ENCODER_INPUT_TOKENS]))
        tokens = batch[DECODER_INPUT_TOKENS]
        inputs = jnp.concatenate([prompt, self.lm.embed(lm, tokens).astype(prompt.dtype)], axis=1)
        shape = jnp.zeros((tokens.shape[0], inputs.shape[1]), tokens.dtype)  # positions and mask follow its shape
        hidden = self.lm.hidden_states(lm, {DECODER_INPUT_TOKENS: shape}, input_embeddings=inputs)
        weights = token_weights(batch)
        nll = losses.chunked_cross_entropy(
            hidden[:, prompt.shape[1] :],
            lambda h: self.lm.logits_from_hidden(lm, h),
            batch[DECODER_TARGET_TOKENS],
            weights,
            chunk_size=self.chunk_size,
        )
        sums = losses.token_sums(nll.per_token, weights)
        weight = jnp.maximum(sums.weight, 1.0)
        return nll.total / weight, {
            "loss": nll.total / weight,
            "cross_entropy": sums.cross_entropy / weight,
            "accuracy": sums.correct / weight,
            "weight": sums.weight,
        }

    def train_flops(self, batch: Batch) -> float:
        """The LM's forward over prompt + example and its backward pass for activations (its weights get no
        gradient: about one more forward), plus the head's weight gradient that the chunked cross-entropy
        takes (unused here), and the embedder's forward."""
        size, length = batch[DECODER_INPUT_TOKENS].shape
        scored = {DECODER_INPUT_TOKENS: jax.ShapeDtypeStruct((size, length + self.prompt.length), jnp.int32)}
        head = 2.0 * size * length * self.lm.config.emb_dim * self.lm.config.vocab_size
        return (
            FROZEN_TRAIN_MULTIPLIER * self.lm.forward_flops(scored)
            + head
            + self.embedder.forward_flops({ENCODER_INPUT_TOKENS: batch[ENCODER_INPUT_TOKENS]})
        )
