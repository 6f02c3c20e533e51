"""Small models on one flat parameter vector (`ravel_pytree`), so client deltas are plain vectors.

A loss function has the signature `loss(params [d], inputs [B, ...], targets [B]) -> mean loss`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Classifier(nn.Module):
    """ReLU MLP with `hidden` widths (none: multinomial logistic regression) and `num_classes` logits."""

    hidden: Sequence[int]
    num_classes: int

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        x = inputs
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class FlatClassifier:
    """A `Classifier` whose parameters travel as one vector; `unravel` rebuilds the flax tree. `l2` adds
    l2 / 2 * |params|^2 to the loss (a Gaussian prior on every parameter; 0: none)."""

    module: Classifier
    unravel: Callable[[jax.Array], Any]
    l2: float = 0.0

    def logits(self, params: jax.Array, inputs: jax.Array) -> jax.Array:
        return self.module.apply(self.unravel(params), inputs)

    def cross_entropy(self, params: jax.Array, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        """Mean softmax cross-entropy against integer labels."""
        return optax.softmax_cross_entropy_with_integer_labels(self.logits(params, inputs), targets).mean()

    def loss(self, params: jax.Array, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        """The training loss: cross-entropy plus the l2 term."""
        return self.cross_entropy(params, inputs, targets) + 0.5 * self.l2 * params @ params

    def accuracy(self, params: jax.Array, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        return (self.logits(params, inputs).argmax(-1) == targets).mean()


def make_classifier(
    num_features: int, num_classes: int, hidden: Sequence[int], key: jax.Array, l2: float = 0.0
) -> tuple[FlatClassifier, jax.Array]:
    """The classifier and its initial flat parameters (flax's default initialisers)."""
    module = Classifier(tuple(hidden), num_classes)
    params, unravel = ravel_pytree(module.init(key, jnp.zeros((1, num_features))))
    return FlatClassifier(module, unravel, l2), params


def least_squares_loss(params: jax.Array, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """1/2 mean (inputs @ params - targets)^2: client i's loss is 1/2 (x - c_i)^T A_i (x - c_i) + const
    with A_i = mean(a a^T) and c_i its least-squares solution."""
    return 0.5 * jnp.mean((inputs @ params - targets) ** 2)
