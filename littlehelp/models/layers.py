"""Building blocks shared by the T5, decoder-only and encoder-only models.

Every parameter carries logical axis names (batch, length, embed, mlp, heads, kv, vocab, layers);
an axis that is never sharded is named ``None``. Parameters are stored in float32 and cast to the
module's compute ``dtype`` when used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from littlehelp.typing import Array, Dtype

Axes = tuple[str | None, ...]

PARAM_DTYPE = jnp.float32


def logical_param(
    module: nn.Module, name: str, init: Callable[..., Array], axes: tuple[str | None, ...], shape: tuple[int, ...]
) -> Array:
    """`module.param` in PARAM_DTYPE with logical axis names `axes`; read inside `apply`, it is the array
    itself (flax unboxes it), which is what the annotation says and flax's own typing does not."""
    return cast(Array, module.param(name, nn.with_logical_partitioning(init, axes), shape, PARAM_DTYPE))


REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
PROJECTION_OUTPUT = "projection_output"  # the name remat policies save a Projection's output by
GATED_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
}


def constrain(x: Array, axes: Axes) -> Array:
    """Annotates an activation with logical axis names (a no-op outside a mesh with rules)."""
    return nn.with_logical_constraint(x, axes)


def fan_in_init(num_input_axes: int, scale: float = 1.0) -> nn.initializers.Initializer:
    """Truncated-normal variance scaling whose fan-in is the product of the leading input axes."""

    def init(key: Array, shape: Sequence[int], dtype: Dtype = PARAM_DTYPE) -> Array:
        inner = nn.initializers.variance_scaling(
            scale,
            "fan_in",
            "truncated_normal",
            in_axis=tuple(range(num_input_axes)),
            out_axis=tuple(range(num_input_axes, len(shape))),
        )
        return inner(key, shape, dtype)

    return init


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale and no bias (T5 / Llama)."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = logical_param(self, "scale", nn.initializers.ones, ("embed",), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (normed * scale).astype(self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def contract_into_kernel(x: Array, kernel: Array, num_in: int) -> Array:
    """x [..., in...] . kernel [in..., out...] -> [..., out...], contracting x's last `num_in` axes.

    Its gradient is autodiff's, with one choice made for CPU speed: the kernel's gradient contracts
    the rows of x and of the output's cotangent with the smaller of the two as the left operand, the
    one XLA:CPU transposes. Autodiff always puts the cotangent there, so a wide output (an MLP's
    input projection) had its whole cotangent transposed before every weight-gradient matmul. As in
    autodiff, only the gradients of inputs being differentiated are computed (a frozen kernel's is not).
    """
    return jax.lax.dot_general(x, kernel, (_contracted_axes(x.ndim, num_in), ((), ())))


def _contracted_axes(x_ndim: int, num_in: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(range(x_ndim - num_in, x_ndim)), tuple(range(num_in))


def _contract_forward(x: Any, kernel: Any, num_in: int) -> tuple[Array, tuple[Array | None, Array | None]]:
    """`x` and `kernel` are `CustomVJPPrimal`s (symbolic zeros): each residual is kept only when the
    gradient that needs it is wanted (x for the kernel's, the kernel for x's)."""
    out = contract_into_kernel(x.value, kernel.value, num_in)
    return out, (x.value if kernel.perturbed else None, kernel.value if x.perturbed else None)


def _contract_backward(
    num_in: int, residuals: tuple[Array | None, Array | None], cotangent: Array
) -> tuple[Array | None, Array | None]:
    x, kernel = residuals
    if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
        return None, None
    x_grad = kernel_grad = None
    if kernel is not None:  # x is differentiated: contract the cotangent's output axes with the kernel's
        out_axes = tuple(range(cotangent.ndim - (kernel.ndim - num_in), cotangent.ndim))
        x_grad = jax.lax.dot_general(cotangent, kernel, ((out_axes, tuple(range(num_in, kernel.ndim))), ((), ())))
    if x is not None:  # the kernel is differentiated
        kernel_grad = _kernel_gradient(x, cotangent, x.ndim - num_in)
    return x_grad, kernel_grad


def _kernel_gradient(x: Array, cotangent: Array, rows: int) -> Array:
    """Sum over the leading `rows` axes of x [rows..., in...] (outer) cotangent [rows..., out...],
    the smaller of the two on the left (the operand XLA:CPU transposes)."""
    row_axes = tuple(range(rows))
    if math.prod(x.shape[rows:]) <= math.prod(cotangent.shape[rows:]):
        return jax.lax.dot_general(x, cotangent, ((row_axes, row_axes), ((), ())))
    swapped = jax.lax.dot_general(cotangent, x, ((row_axes, row_axes), ((), ())))  # [out..., in...]
    num_out, num_in = cotangent.ndim - rows, x.ndim - rows
    return jnp.transpose(swapped, tuple(range(num_out, num_out + num_in)) + tuple(range(num_out)))


contract_into_kernel.defvjp(_contract_forward, _contract_backward, symbolic_zeros=True)


class Projection(nn.Module):
    """Linear map contracting the last ``len(in_axes)`` input axes into ``features``.

    The kernel has shape ``input_shape[-len(in_axes):] + features`` and logical axes
    ``in_axes + out_axes``. ``use_bias`` adds a zero-initialised "bias" of shape ``features``.
    """

    features: tuple[int, ...]
    in_axes: Axes
    out_axes: Axes
    dtype: Dtype = jnp.float32
    init_scale: float = 1.0
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        num_in = len(self.in_axes)
        shape = tuple(x.shape[-num_in:]) + tuple(self.features)
        kernel = logical_param(
            self, "kernel", fan_in_init(num_in, self.init_scale), self.in_axes + self.out_axes, shape
        )
        out = checkpoint_name(
            contract_into_kernel(x.astype(self.dtype), kernel.astype(self.dtype), num_in), PROJECTION_OUTPUT
        )
        if not self.use_bias:
            return out
        bias = logical_param(self, "bias", nn.initializers.zeros, self.out_axes, tuple(self.features))
        return out + bias.astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; ``attend`` gives tied output logits."""

    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    stddev: float = 1.0

    def setup(self) -> None:
        self.embedding = logical_param(
            self,
            "embedding",
            nn.initializers.normal(self.stddev),
            ("vocab", "embed"),
            (self.num_embeddings, self.features),
        )

    def __call__(self, ids: Array) -> Array:
        """Looks up ``ids`` [...] -> [..., features]."""
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, query: Array) -> Array:
        """Scores ``query`` [..., features] against every embedding -> [..., vocab]."""
        return jnp.einsum("...d,vd->...v", query.astype(self.dtype), self.embedding.astype(self.dtype))


class GatedMlp(nn.Module):
    """Gated feed-forward block: wo(act(wi_0 x) * wi_1 x); gelu gives GeGLU, silu SwiGLU."""

    mlp_dim: int
    activation: str = "gelu"
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        act = GATED_ACTIVATIONS[self.activation]
        up = dict(features=(self.mlp_dim,), in_axes=("embed",), out_axes=("mlp",), dtype=self.dtype)
        hidden = act(Projection(**up, name="wi_0")(x)) * Projection(**up, name="wi_1")(x)
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        return Projection(features=(x.shape[-1],), in_axes=("mlp",), out_axes=("embed",), dtype=self.dtype, name="wo")(
            hidden
        )


def apply_rope(x: Array, positions: Array, max_wavelength: float = 10000.0) -> Array:
    """Rotary position embedding (rotate-half form) of ``x`` [b, l, h, d] at ``positions``."""
    half = x.shape[-1] // 2
    inv_freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq  # [b, l, 1, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucketing of ``key_position - query_position``: exact near 0, logarithmic far away."""
    num_buckets = num_buckets // 2 if bidirectional else num_buckets
    offset: Array | int
    if bidirectional:
        offset = jnp.where(relative_position > 0, num_buckets, 0)
        distance = jnp.abs(relative_position)
    else:
        offset = 0
        distance = jnp.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    eps = np.finfo(np.float32).eps
    log_ratio = jnp.log(distance.astype(jnp.float32) / max_exact + eps) / np.log(max_distance / max_exact)
    log_bucket = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    log_bucket = jnp.minimum(log_bucket, num_buckets - 1)
    return offset + jnp.where(distance < max_exact, distance, log_bucket)


class RelativePositionBias(nn.Module):
    """Learned per-head bias from bucketed relative positions; one per stack (T5 v1.1)."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        """Positions [b, lq] and [b, lk] (b may be 1) -> additive bias [b, heads, lq, lk]."""
        table = logical_param(
            self, "rel_embedding", nn.initializers.normal(1.0), ("heads", None), (self.num_heads, self.num_buckets)
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        bias = jnp.take(table.astype(self.dtype), buckets, axis=1)  # [h, b, lq, lk]
        return jnp.transpose(bias, (1, 0, 2, 3))


def remat_policy(name: str) -> Callable[..., Any] | None:
    """Maps a remat policy name to a ``jax.checkpoint`` policy (``full`` saves nothing).

    The dot-saving policies also save the outputs of `Projection`s (named PROJECTION_OUTPUT): their
    matmul is inside a custom VJP (`contract_into_kernel`), where a policy does not see it as a dot.
    """
    if name not in REMAT_POLICIES:
        raise ValueError(f"Unknown remat_policy {name!r}; available: {', '.join(REMAT_POLICIES)}")
    policy = getattr(jax.checkpoint_policies, name, None)
    if name.startswith("dots"):
        projections = jax.checkpoint_policies.save_only_these_names(PROJECTION_OUTPUT)
        return jax.checkpoint_policies.save_from_both_policies(policy, projections)
    return policy


def layer_stack(
    layer_cls: type[nn.Module],
    num_layers: int,
    scan_layers: bool,
    remat: str,
    num_broadcast_args: int,
    **layer_kwargs: Any,
) -> Callable[..., Array]:
    """Builds ``num_layers`` copies of ``layer_cls`` (inside a compact method) and returns ``run``.

    ``layer_cls.__call__(x, *args) -> (x, None)``. With ``scan_layers`` the layers are one
    ``nn.scan`` named ``layers`` whose parameters gain a leading "layers" axis; otherwise they are
    named ``layers_0 ... layers_{n-1}``. ``run(x, *args)`` applies them in order.
    """
    run = layer_stack_with_outputs(layer_cls, num_layers, scan_layers, remat, num_broadcast_args, 0, **layer_kwargs)
    return lambda x, *args: run(x, *args)[0]


def layer_stack_with_outputs(
    layer_cls: type[nn.Module],
    num_layers: int,
    scan_layers: bool,
    remat: str,
    num_broadcast_args: int,
    num_layer_args: int,
    **layer_kwargs: Any,
) -> Callable[..., tuple[Array, Any]]:
    """`layer_stack` with per-layer inputs and outputs: ``layer_cls.__call__(x, *args) -> (x, out)``.
    The last ``num_layer_args`` args have a leading "layers" axis (layer i gets slice i), and
    ``run(x, *args) -> (x, outs)`` stacks the layers' outputs on a leading "layers" axis."""
    if remat != "none":
        layer_cls = nn.remat(layer_cls, policy=remat_policy(remat), prevent_cse=not scan_layers)
    if scan_layers:
        return nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * num_broadcast_args + (0,) * num_layer_args,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(**layer_kwargs, name="layers")
    layers = [layer_cls(**layer_kwargs, name=f"layers_{i}") for i in range(num_layers)]

    def run(x: Array, *args: Any) -> tuple[Array, Any]:
        shared, per_layer = args[:num_broadcast_args], args[num_broadcast_args:]
        outs = []
        for index, layer in enumerate(layers):
            x, out = layer(x, *shared, *jax.tree.map(lambda a, i=index: a[i], per_layer))
            outs.append(out)
        return x, jax.tree.map(lambda *slices: jnp.stack(slices), *outs)

    return run
