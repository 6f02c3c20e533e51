"""A small character tagger for word segmentation (Flax), trained with optax, warm-startable.

Characters are embedded, projected to `channels`, and passed through residual 1-D convolutions with
growing dilations (kernel 3, dilations 1, 2, 4, 8 see 31 characters around each position); a dense
layer gives two logits per character: "no word starts here" and "a word starts here".

`train` runs `TaggerConfig.steps` Adam steps on minibatches drawn uniformly with replacement from
the labelled sentences, continuing from the state it is given (parameters and optimizer moments),
so a live loop can warm-start every update. The labelled set is padded to a power of two rows so
that a growing set compiles only a handful of times.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from active.sequence import ALPHABET, BoundaryScores, SentenceSet, boundary_scores

PREDICT_CHUNK = 256
MIN_PADDED_ROWS = 16


@dataclasses.dataclass(frozen=True)
class TaggerConfig:
    """Network and optimisation settings.

    Attributes:
      embed_dim: character embedding width.
      channels: width of the convolution stack.
      dilations: one residual convolution per entry, with that dilation.
      kernel_size: convolution width.
      learning_rate: Adam learning rate.
      steps: minibatch steps per `train` call (one model update).
      batch_size: sentences per step.
    """

    embed_dim: int = 32
    channels: int = 64
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    kernel_size: int = 3
    learning_rate: float = 3e-3
    steps: int = 100
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("embed_dim", "channels", "kernel_size", "steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TaggerConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.dilations or min(self.dilations) <= 0:
            raise ValueError(f"TaggerConfig.dilations must be positive integers, got {self.dilations}")


def shifted_windows(x: jax.Array, kernel_size: int, dilation: int) -> jax.Array:
    """[b, w, c] -> [b, w, kernel_size * c]: the features at offsets (j - kernel_size // 2) * dilation
    of every position, zeros beyond the ends; a Dense layer on it is a dilated 'SAME' convolution.

    Written with pads and slices because XLA's CPU gradient of a dilated convolution is ~100x slower.
    """
    half, width = kernel_size // 2, x.shape[1]
    reach = half * dilation
    padded = jnp.pad(x, ((0, 0), (reach, reach), (0, 0)))
    offsets = [(j - half) * dilation + reach for j in range(kernel_size)]
    return jnp.concatenate([padded[:, o : o + width] for o in offsets], axis=-1)


class Tagger(nn.Module):
    """[batch, width] character ids -> [batch, width, 2] word-start logits."""

    config: TaggerConfig

    @nn.compact
    def __call__(self, chars: jax.Array) -> jax.Array:
        config = self.config
        x = nn.Dense(config.channels)(nn.Embed(len(ALPHABET) + 1, config.embed_dim)(chars))
        for dilation in config.dilations:
            x = x + nn.relu(nn.Dense(config.channels)(shifted_windows(x, config.kernel_size, dilation)))
        return nn.Dense(2)(x)


@dataclasses.dataclass(frozen=True)
class TaggerState:
    """A tagger's parameters and Adam moments (what a warm start continues from)."""

    config: TaggerConfig
    params: Any
    opt_state: Any


def init_tagger(config: TaggerConfig, seed: int, width: int) -> TaggerState:
    """A freshly initialised tagger for sentences padded to `width` characters."""
    params = Tagger(config).init(jax.random.PRNGKey(seed), jnp.zeros((1, width), jnp.int32))["params"]
    return TaggerState(config, params, optax.adam(config.learning_rate).init(params))


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over masked positions."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@functools.cache
def _compiled_train(config: TaggerConfig) -> Callable:
    """A jitted (params, opt_state, key, chars, labels, mask, count) -> (params, opt_state)."""
    network, optimizer = Tagger(config), optax.adam(config.learning_rate)

    def loss_fn(params, chars, labels, mask):
        return masked_cross_entropy(network.apply({"params": params}, chars), labels, mask)

    def train(params, opt_state, key, chars, labels, mask, count):
        def step(carry, step_key):
            params, opt_state = carry
            rows = jax.random.randint(step_key, (config.batch_size,), 0, count)
            grads = jax.grad(loss_fn)(params, chars[rows], labels[rows], mask[rows])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), jax.random.split(key, config.steps))
        return params, opt_state

    return jax.jit(train)


def padded_rows(n: int) -> int:
    """The power of two (at least `MIN_PADDED_ROWS`) that `train` pads n labelled sentences to."""
    return max(MIN_PADDED_ROWS, 2 ** math.ceil(math.log2(max(n, 1))))


def _pad(array: np.ndarray, rows: int) -> np.ndarray:
    return np.pad(array, [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1))


def train(state: TaggerState, sentences: SentenceSet, seed: int) -> TaggerState:
    """`state` after `config.steps` more Adam steps on `sentences` (a non-empty labelled set)."""
    if len(sentences) == 0:
        raise ValueError("train: the labelled set is empty")
    rows = padded_rows(len(sentences))
    arrays = (_pad(sentences.chars, rows), _pad(sentences.labels, rows), _pad(sentences.mask.astype(np.float32), rows))
    params, opt_state = _compiled_train(state.config)(
        state.params, state.opt_state, jax.random.PRNGKey(seed), *arrays, len(sentences)
    )
    return TaggerState(state.config, params, opt_state)


@functools.cache
def _compiled_probabilities(config: TaggerConfig) -> Callable:
    network = Tagger(config)
    return jax.jit(lambda params, chars: jax.nn.softmax(network.apply({"params": params}, chars)))


def probabilities(state: TaggerState, sentences: SentenceSet) -> np.ndarray:
    """[n, width, 2] label probabilities, computed in chunks of `PREDICT_CHUNK` sentences."""
    apply = _compiled_probabilities(state.config)
    chunks = []
    for start in range(0, len(sentences), PREDICT_CHUNK):
        chars = sentences.chars[start : start + PREDICT_CHUNK]
        chunks.append(np.asarray(apply(state.params, _pad(chars, PREDICT_CHUNK)))[: len(chars)])
    width = sentences.chars.shape[1]
    return np.concatenate(chunks) if chunks else np.zeros((0, width, 2), np.float32)


def evaluate(state: TaggerState, sentences: SentenceSet) -> BoundaryScores:
    """Word-start precision/recall/F1 of the tagger's most probable labels on `sentences`."""
    predicted = np.argmax(probabilities(state, sentences), axis=-1)
    return boundary_scores(predicted, sentences.labels, sentences.mask)
