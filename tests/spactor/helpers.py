"""Tiny SpacTor objectives and synthetic span-corrupted batches for the tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from littlehelp.models import build_model
from spactor import HybridObjective, generator_config
from tests.helpers import TINY_T5

DATA_VOCAB = 260  # ids 0..259 in the data; 260..263 unused by it (260 is the generator's mask id)
SENTINELS = 20  # 240..259 are sentinels, 2..239 ordinary


def tiny_hybrid(**settings) -> HybridObjective:
    """A hybrid objective on TINY_T5 whose generator is half as wide (so it reads the shared table through
    the projection) and as deep."""
    settings = {"data_vocab_size": DATA_VOCAB, "num_sentinels": SENTINELS} | settings
    generator = generator_config(TINY_T5, width_fraction=0.5, depth_fraction=1.0)
    return HybridObjective(build_model(TINY_T5), generator, **settings)


def span_corrupted_batch(
    batch: int = 4,
    length: int = 24,
    targets: int = 8,
    seed: int = 0,
    first_ordinary: int = 2,
    first_sentinel: int = DATA_VOCAB - SENTINELS,
    data_vocab: int = DATA_VOCAB,
) -> dict[str, jnp.ndarray]:
    """Rows of ordinary tokens with sentinels every 5th position, then EOS, then padding (varied lengths)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(first_ordinary, first_sentinel, (batch, length))
    tokens[:, 3::5] = data_vocab - 1 - np.arange(len(range(3, length, 5)))
    for row in range(batch):
        end = length - 1 - (row * 3) % (length // 2)
        tokens[row, end] = 1
        tokens[row, end + 1 :] = 0
    decoder_targets = rng.integers(first_ordinary, data_vocab, (batch, targets))
    decoder_inputs = np.concatenate([np.zeros((batch, 1), int), decoder_targets[:, :-1]], axis=1)
    weights = np.ones((batch, targets))
    weights[0, -2:] = 0
    return {
        "encoder_input_tokens": jnp.asarray(tokens, jnp.int32),
        "decoder_input_tokens": jnp.asarray(decoder_inputs, jnp.int32),
        "decoder_target_tokens": jnp.asarray(decoder_targets, jnp.int32),
        "decoder_loss_weights": jnp.asarray(weights, jnp.float32),
    }


def init(objective, batch, seed: int = 0):
    return nn.unbox(jax.jit(objective.init_params)(jax.random.key(seed), batch))
