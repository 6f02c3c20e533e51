"""SoftSRV's soft-prompt parameterisations (docs/methods/softsrv.md): context z [b, d_z] -> prompt [b, m, width].

The prompt is m vectors in the frozen LM's input-embedding space, prepended to the example's token
embeddings. Only these parameters train.
- `NonContextualPrompt` (SS_NSP): one prompt of m soft tokens, the same for every z;
- `MixturePrompt` (SS_MPk): k prompts mixed with weights softmax(W z + b) [b, k];
- `MLPPrompt` (SS_MC / SS_MLP): an MLP maps z to the whole prompt (m x width outputs).

Every parameter carries logical axes ("embed" on the LM-width axis), so the rules shard them as the
LM's embeddings. `init_scale` is the standard deviation of the initial prompt vectors (match it to the
LM's embedding scale).
"""

from __future__ import annotations

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from littlehelp.typing import Array


def _normal(scale: float, axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(scale), axes)


def _dense(features: int, scale: float, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
    """A dense layer whose kernel ([in, out], `axes`) and bias carry logical axes."""
    return nn.Dense(
        features,
        kernel_init=_normal(scale, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
        name=name,
    )


@gin.configurable(module="softsrv")
class NonContextualPrompt(nn.Module):
    """SS_NSP: `length` soft tokens of `width`, the same for every context."""

    length: int = 32
    width: int = gin.REQUIRED
    init_scale: float = 0.02

    @nn.compact
    def __call__(self, context: Array) -> Array:
        prompt = self.param("prompt", _normal(self.init_scale, (None, "embed")), (self.length, self.width))
        return jnp.broadcast_to(prompt, (context.shape[0], self.length, self.width))


@gin.configurable(module="softsrv")
class MixturePrompt(nn.Module):
    """SS_MPk: `num_prompts` prompts of `length` x `width`, mixed per example by softmax(W z + b)."""

    length: int = 32
    width: int = gin.REQUIRED
    num_prompts: int = 4
    init_scale: float = 0.02

    @nn.compact
    def __call__(self, context: Array) -> Array:
        prompts = self.param(
            "prompts", _normal(self.init_scale, (None, None, "embed")), (self.num_prompts, self.length, self.width)
        )
        gate = _dense(self.num_prompts, 0.02, (None, None), "gate")
        weights = jax.nn.softmax(gate(context.astype(jnp.float32)), axis=-1)
        return jnp.einsum("bk,kmw->bmw", weights, prompts)


@gin.configurable(module="softsrv")
class MLPPrompt(nn.Module):
    """SS_MLP: z -> GELU(W1 z + b1) -> W2 h + b2, reshaped to `length` x `width`."""

    length: int = 32
    width: int = gin.REQUIRED
    hidden: int = 512
    init_scale: float = 0.02

    @nn.compact
    def __call__(self, context: Array) -> Array:
        hidden = nn.gelu(_dense(self.hidden, 0.02, (None, "mlp"), "hidden")(context.astype(jnp.float32)))
        out = _dense(self.length * self.width, self.init_scale / max(self.hidden, 1) ** 0.5, ("mlp", None), "out")(
            hidden
        )
        return out.reshape(context.shape[0], self.length, self.width)


PARAMETERISATIONS = {"nsp": NonContextualPrompt, "mpk": MixturePrompt, "mlp": MLPPrompt}
