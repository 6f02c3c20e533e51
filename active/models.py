"""Small classifiers for active-learning loops: a Flax MLP and a small CNN, trained with optax.

`fit` trains from scratch on labelled arrays in one jitted `lax.scan` over minibatch steps.
Examples may carry weights (importance-weighted selectors such as IWeS), and training may distil
from a previous model's probabilities (low-churn retraining, Jiang et al. 2021):

    loss_i = (1 - alpha) * CE(y_i, f(x_i)) + alpha * CE(g(x_i), f(x_i)),

averaged over the minibatch with the example weights. The labelled set is padded to a power of two
so that a loop whose labelled set grows every round compiles only a handful of times.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

PREDICT_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Network and optimisation settings.

    Attributes:
      hidden: widths of the MLP's hidden layers (the last one is the embedding), or of the CNN's
        dense layer (first entry) when `image_shape` is set.
      image_shape: (height, width) to use the CNN on features reshaped to images; None for the MLP.
      learning_rate: Adam learning rate.
      weight_decay: decoupled weight decay (AdamW).
      steps: minibatch steps per training run.
      batch_size: examples per step, drawn uniformly with replacement from the labelled set.
    """

    hidden: tuple[int, ...] = (128,)
    image_shape: tuple[int, int] | None = None
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    steps: int = 300
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.hidden:
            raise ValueError("ModelConfig.hidden must name at least one layer width")


class MLP(nn.Module):
    """ReLU MLP; returns (logits, embedding of the last hidden layer)."""

    hidden: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x), x


class CNN(nn.Module):
    """Two conv/pool blocks and a dense layer; returns (logits, dense-layer embedding)."""

    image_shape: tuple[int, int]
    hidden: int
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = x.reshape(x.shape[0], *self.image_shape, 1)
        for channels in (16, 32):
            x = nn.relu(nn.Conv(channels, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x), x


def make_network(config: ModelConfig, num_classes: int) -> nn.Module:
    """The MLP, or the CNN when `config.image_shape` is set."""
    if config.image_shape is None:
        return MLP(config.hidden, num_classes)
    return CNN(config.image_shape, config.hidden[0], num_classes)


@dataclasses.dataclass(frozen=True)
class Model:
    """A trained network: its parameters and how to apply them."""

    network: nn.Module
    params: dict

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [n, classes], embeddings [n, d]) as float32 numpy, in fixed-size chunks."""
        apply = _jitted_apply(self.network)
        probabilities, embeddings = [], []
        for start in range(0, len(features), PREDICT_CHUNK):
            chunk = np.asarray(features[start : start + PREDICT_CHUNK], np.float32)
            padded = _pad_rows(chunk, PREDICT_CHUNK if len(features) > PREDICT_CHUNK else len(chunk))
            p, e = apply(self.params, padded)
            probabilities.append(np.asarray(p)[: len(chunk)])
            embeddings.append(np.asarray(e)[: len(chunk)])
        return np.concatenate(probabilities), np.concatenate(embeddings)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities [n, classes]."""
        return self.predict(features)[0]


@functools.cache
def _jitted_apply(network: nn.Module) -> Callable:
    def apply(params, x):
        logits, embedding = network.apply({"params": params}, x)
        return jax.nn.softmax(logits), embedding

    return jax.jit(apply)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with zero rows appended up to `rows`."""
    padding = [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, padding)


def padded_size(n: int) -> int:
    """The power of two (at least 64) that `fit` pads a labelled set of n examples to."""
    return max(64, 2 ** math.ceil(math.log2(max(n, 1))))


def example_losses(logits: jax.Array, labels: jax.Array, teacher: jax.Array, alpha: float) -> jax.Array:
    """(1 - alpha) CE(labels, logits) + alpha CE(teacher probabilities, logits), per example."""
    log_probabilities = jax.nn.log_softmax(logits)
    label_ce = -jnp.take_along_axis(log_probabilities, labels[:, None], axis=1)[:, 0]
    teacher_ce = -jnp.sum(teacher * log_probabilities, axis=1)
    return (1.0 - alpha) * label_ce + alpha * teacher_ce


@functools.cache
def _compiled_fit(config: ModelConfig, num_classes: int, feature_dim: int) -> Callable:
    """A jitted (key, x, y, weights, teacher, count, alpha) -> params, for one config and shape."""
    network = make_network(config, num_classes)
    optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)

    def loss_fn(params, x, y, w, teacher, alpha):
        logits, _ = network.apply({"params": params}, x)
        losses = example_losses(logits, y, teacher, alpha)
        return jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1e-12)

    def fit(key, x, y, weights, teacher, count, alpha):
        init_key, step_key = jax.random.split(key)
        params = network.init(init_key, jnp.zeros((1, feature_dim), jnp.float32))["params"]

        def step(carry, step_key):
            params, opt_state = carry
            rows = jax.random.randint(step_key, (config.batch_size,), 0, count)
            grads = jax.grad(loss_fn)(params, x[rows], y[rows], weights[rows], teacher[rows], alpha)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        keys = jax.random.split(step_key, config.steps)
        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), keys)
        return params

    return jax.jit(fit)


def fit(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: ModelConfig = ModelConfig(),
    seed: int = 0,
    weights: np.ndarray | None = None,
    teacher_probabilities: np.ndarray | None = None,
    alpha: float = 0.0,
) -> Model:
    """Trains a fresh network on (features, labels), optionally weighted and distilled.

    Args:
      features: [n, d] float features (images flattened when `config.image_shape` is set).
      labels: [n] integer classes in [0, num_classes).
      weights: [n] non-negative example weights (None: all 1).
      teacher_probabilities: [n, classes] probabilities of the previous model on these examples;
        required when alpha > 0.
      alpha: distillation weight a in (1 - a) CE(y) + a CE(teacher).
    """
    n = len(features)
    if n == 0 or len(labels) != n:
        raise ValueError(f"fit: need matching non-empty features and labels, got {n} and {len(labels)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"fit: alpha must be in [0, 1], got {alpha}")
    if alpha > 0 and teacher_probabilities is None:
        raise ValueError("fit: alpha > 0 needs teacher_probabilities")
    size = padded_size(n)
    teacher = np.zeros((n, num_classes), np.float32) if teacher_probabilities is None else teacher_probabilities
    weights = np.ones(n, np.float32) if weights is None else weights
    arrays = (
        np.asarray(features, np.float32),
        np.asarray(labels, np.int32),
        np.asarray(weights, np.float32),
        np.asarray(teacher, np.float32),
    )
    x, y, w, g = (_pad_rows(a, size) for a in arrays)
    run = _compiled_fit(config, num_classes, x.shape[1])
    params = run(jax.random.PRNGKey(seed), x, y, w, g, n, float(alpha))
    return Model(make_network(config, num_classes), params)


def churn(before: np.ndarray, after: np.ndarray) -> float:
    """Fraction of examples whose predicted class differs between two probability arrays."""
    return float(np.mean(np.argmax(before, axis=1) != np.argmax(after, axis=1)))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose most probable class is the label."""
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))
