"""Multi-head attention: one backend switch, masks, the attention layer and its KV cache.

Conventions: query [b, lq, heads, d]; key/value [b, lk, kv_heads, d] with ``heads`` a multiple of
``kv_heads`` (grouped-query attention); ``bias`` is additive and broadcastable to
[b, heads, lq, lk]; ``mask`` is boolean (True = may attend) and broadcastable to the same shape.
``dot_product_attention`` does not scale the query: callers fold 1/sqrt(d) in beforehand.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.gpu import attention as pallas_gpu
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_tpu

from littlehelp.models.layers import Projection, apply_rope, constrain

Array = jax.Array
Dtype = Any
MASKED_LOGIT = -1e10


def _xla_attention(query: Array, key: Array, value: Array, bias: Array | None,
                   mask: Array | None) -> Array:
    """Reference attention in plain XLA ops; softmax in float32."""
    batch, q_len, heads, depth = query.shape
    kv_heads, k_len = key.shape[2], key.shape[1]
    grouped = query.reshape(batch, q_len, kv_heads, heads // kv_heads, depth)
    logits = jnp.einsum("bqngd,bknd->bngqk", grouped, key).astype(jnp.float32)
    logits = logits.reshape(batch, heads, q_len, k_len)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    probs = probs.reshape(batch, kv_heads, heads // kv_heads, q_len, k_len)
    out = jnp.einsum("bngqk,bknd->bqngd", probs, value)
    return out.reshape(batch, q_len, heads, depth)


def _require_platform(backend: str, platform: str) -> None:
    """Refuses, in one line, a backend whose kernel is built for another platform than this run's."""
    if jax.default_backend() == platform:
        return
    interpreted = f"{backend}_interpret"
    hint = f"; {interpreted!r} runs it in Pallas interpret mode" if interpreted in ATTENTION_BACKENDS else ""
    raise ValueError(f"attention backend {backend!r} needs a {platform.upper()}; "
                     f"this run's JAX backend is {jax.default_backend()!r}{hint}")


def _library_attention(query: Array, key: Array, value: Array, bias: Array | None, mask: Array | None,
                       implementation: str = "xla") -> Array:
    """`jax.nn.dot_product_attention`, JAX's own attention (its XLA graph, or cuDNN's fused flash
    attention with implementation='cudnn'); bias and mask as here, no query scaling."""
    if implementation == "cudnn":
        _require_platform("cudnn", "gpu")
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=1.0,
                                        implementation=implementation)


def _kv_heads_repeated(key: Array, value: Array, heads: int) -> tuple[Array, Array]:
    """Grouped-query key/value [b, lk, kv_heads, d] -> one per query head, for kernels without GQA."""
    group = heads // key.shape[2]
    return jnp.repeat(key, group, axis=2), jnp.repeat(value, group, axis=2)


def _folded_bias(bias: Array | None, mask: Array | None, shape: tuple[int, ...]) -> Array:
    """Bias and mask as one additive float32 bias of ``shape`` [b, heads, lq, lk]: masked -> MASKED_LOGIT."""
    folded = jnp.broadcast_to(0.0 if bias is None else bias, shape).astype(jnp.float32)
    return folded if mask is None else jnp.where(mask, folded, MASKED_LOGIT)


def _in_tpu_interpret_mode(kernel: Callable[..., Array]) -> Callable[..., Array]:
    """``kernel`` run in Pallas TPU interpret mode, its backward pass too (JAX traces that after the
    forward call has returned, outside any context opened around it)."""
    @jax.custom_vjp
    def run(*args: Array | None) -> Array:
        with pltpu.force_tpu_interpret_mode():
            return kernel(*args)

    def forward(*args: Array | None) -> tuple[Array, Callable]:
        with pltpu.force_tpu_interpret_mode():
            return jax.vjp(kernel, *args)

    def backward(vjp: Callable, cotangent: Array) -> tuple[Array | None, ...]:
        with pltpu.force_tpu_interpret_mode():
            return vjp(cotangent)

    run.defvjp(forward, backward)
    return run


# Both lengths are padded to a multiple of the TPU kernel's block (its default, and what its backward
# pass needs along the keys); padded keys are masked through the bias, padded queries cut off.
_TPU_BLOCK = 128


def _pallas_tpu_attention(query: Array, key: Array, value: Array, bias: Array | None,
                          mask: Array | None, interpret: bool = False) -> Array:
    """JAX's Pallas TPU flash attention (`pallas.ops.tpu.flash_attention`): keys/values repeated to
    every query head, the mask folded into its additive bias ``ab``, lengths padded to _TPU_BLOCK.
    A fully masked query row gives the mean of the values, as in "xla", but unlike there it sends
    gradients to its query and the keys (none when its output gets none, as a padding query's)."""
    if not interpret:
        _require_platform("pallas_tpu", "tpu")
    batch, q_len, heads, depth = query.shape
    k_len = key.shape[1]
    q_pad, k_pad = (-length % _TPU_BLOCK for length in (q_len, k_len))
    key, value = _kv_heads_repeated(key, value, heads)

    def kernel_layout(x: Array, pad: int) -> Array:
        return jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pad), (0, 0)))

    ab = None
    if bias is not None or mask is not None or k_pad:
        # Below MASKED_LOGIT, so that a fully masked row averages the real keys only, as in "xla".
        ab = jnp.pad(_folded_bias(bias, mask, (batch, heads, q_len, k_len)),
                     ((0, 0), (0, 0), (0, q_pad), (0, k_pad)), constant_values=2 * MASKED_LOGIT)
    block_sizes = pallas_tpu.BlockSizes.get_default(batch, heads, q_len + q_pad, k_len + k_pad, depth)
    kernel = functools.partial(pallas_tpu.flash_attention, sm_scale=1.0, block_sizes=block_sizes)
    out = (_in_tpu_interpret_mode(kernel) if interpret else kernel)(
        kernel_layout(query, q_pad), kernel_layout(key, k_pad), kernel_layout(value, k_pad), ab)
    return out[:, :, :q_len].transpose(0, 2, 1, 3)


def _pallas_gpu_attention(query: Array, key: Array, value: Array, bias: Array | None,
                          mask: Array | None, interpret: bool = False) -> Array:
    """JAX's Pallas GPU (Triton) flash attention (`pallas.ops.gpu.attention.mha`), keys/values repeated
    to every query head. Its kernel takes no bias and, for masking, only a causal flag and one array
    of segment ids shared by queries and keys, which a general mask does not give: it refuses both."""
    if bias is not None or mask is not None:
        raise ValueError("attention backend 'pallas_gpu' takes no bias or mask (its kernel knows only a "
                         "causal flag and shared segment ids); 'cudnn' takes both on a GPU")
    if not interpret:
        _require_platform("pallas_gpu", "gpu")
    key, value = _kv_heads_repeated(key, value, query.shape[2])
    # Blocks must be powers of two dividing the lengths: the kernel's defaults where the length allows.
    q_len, k_len = query.shape[1], key.shape[1]
    block_sizes = pallas_gpu.BlockSizes(
        block_q=math.gcd(q_len, 128), block_k=math.gcd(k_len, 128),
        block_q_dkv=math.gcd(q_len, 32), block_kv_dkv=math.gcd(k_len, 32),
        block_q_dq=math.gcd(q_len, 32), block_kv_dq=math.gcd(k_len, 32))
    return pallas_gpu.mha(query, key, value, None, sm_scale=1.0, block_sizes=block_sizes,
                          interpret=interpret)


# "xla": ours, the reference; "jax_nn": jax.nn.dot_product_attention's XLA graph; "cudnn": its cuDNN
# flash-attention kernel (GPU only; supports a subset of shapes and dtypes, and says so when not);
# "pallas_tpu" / "pallas_gpu": JAX's Pallas flash-attention kernels (TPU / GPU only); their
# "_interpret" twins run the same kernels in Pallas interpret mode on any machine (slow: for tests).
ATTENTION_BACKENDS: dict[str, Callable[..., Array]] = {
    "xla": _xla_attention,
    "jax_nn": _library_attention,
    "cudnn": functools.partial(_library_attention, implementation="cudnn"),
    "pallas_tpu": _pallas_tpu_attention,
    "pallas_tpu_interpret": functools.partial(_pallas_tpu_attention, interpret=True),
    "pallas_gpu": _pallas_gpu_attention,
    "pallas_gpu_interpret": functools.partial(_pallas_gpu_attention, interpret=True),
}


def dot_product_attention(query: Array, key: Array, value: Array, bias: Array | None = None,
                          mask: Array | None = None, backend: str = "xla") -> Array:
    """softmax(query . key + bias, masked) . value with the chosen backend -> [b, lq, heads, d]."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"Unknown attention backend {backend!r}; "
                         f"available: {', '.join(sorted(ATTENTION_BACKENDS))}")
    return ATTENTION_BACKENDS[backend](query, key, value, bias, mask)


def segment_mask(query_segment_ids: Array, key_segment_ids: Array) -> Array:
    """Segment ids [b, lq], [b, lk] (0 = padding) -> [b, 1, lq, lk]: same non-padding segment."""
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    return (same & (key_segment_ids[:, None, :] != 0))[:, None]


def causal_mask(length: int) -> Array:
    """[1, 1, length, length] lower-triangular mask by sequence index."""
    index = jnp.arange(length)
    return (index[None, :] <= index[:, None])[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given masks, skipping None; None when all are None."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    combined = present[0]
    for mask in present[1:]:
        combined = combined & mask
    return combined


class SelfAttentionContext(NamedTuple):
    """Positions and mask shared by every self-attention layer of a stack."""
    query_positions: Array  # [b or 1, lq]
    key_positions: Array  # [b or 1, lk]
    mask: Array | None  # broadcastable to [b, heads, lq, lk]
    cache_positions: Array | None  # [b, lq]: the cache slot each new token is written to; None outside decoding


class SelfAttentionPositions(nn.Module):
    """Builds the ``SelfAttentionContext`` of a stack.

    Outside decoding (and on the cache-creating call of decoding, ``decode_lengths`` None)
    positions default to ``arange(length)`` and the mask combines segments with (if ``causal``)
    sequence order. While decoding, row ``r`` has ``decode_lengths[r]`` committed tokens in the
    cache: its new tokens go to the next slots (their positions), and each sees every slot up to
    its own, so rows of one batch may hold different numbers of tokens. Segment ids are ignored.
    """
    causal: bool
    decode: bool = False

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None, positions: Array | None,
                 decode_lengths: Array | None = None) -> SelfAttentionContext:
        length = tokens.shape[1]
        if not self.decode:
            return self._full_sequence(length, segment_ids, positions)
        # Only its shape is read: the number of cache slots, fixed by the cache-creating call.
        slot_count = self.variable("cache", "slots", jnp.zeros, (length,), jnp.int8).value.shape[0]
        if decode_lengths is None:
            return self._full_sequence(length, segment_ids, positions)
        new_positions = decode_lengths.astype(jnp.int32)[:, None] + jnp.arange(length, dtype=jnp.int32)
        slots = jnp.arange(slot_count, dtype=jnp.int32)
        mask = (slots[None, None, :] <= new_positions[:, :, None])[:, None]
        return SelfAttentionContext(new_positions, slots[None], mask, new_positions)

    def _full_sequence(self, length: int, segment_ids: Array | None,
                       positions: Array | None) -> SelfAttentionContext:
        if positions is None:
            positions = jnp.arange(length)[None]
        segments = None if segment_ids is None else segment_mask(segment_ids, segment_ids)
        order = causal_mask(length) if self.causal else None
        return SelfAttentionContext(positions, positions, combine_masks(segments, order), None)


class Attention(nn.Module):
    """Multi-head (optionally grouped-query) attention; bias-free projections unless ``qkv_bias``.

    ``qkv_bias`` adds biases to the query, key and value projections (Qwen2).
    ``fold_query_scale`` puts 1/sqrt(head_dim) into the query initialisation (T5) instead of
    scaling at run time (Llama). ``rope_max_wavelength`` turns on rotary embeddings. With
    ``decode`` the keys and values are written to a "cache" collection, row by row, at the slots
    ``cache_positions`` [b, lq] (see ``SelfAttentionPositions``).
    """
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    backend: str = "xla"
    fold_query_scale: bool = False
    rope_max_wavelength: float | None = None
    decode: bool = False
    qkv_bias: bool = False

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None,
                 bias: Array | None = None, positions: Array | None = None,
                 cache_positions: Array | None = None) -> Array:
        """``positions`` [b, l] (RoPE only) belong to the tokens of ``inputs_q``/``inputs_kv``."""
        query_init_scale = 1.0 / self.head_dim if self.fold_query_scale else 1.0
        query = self._project(self.num_heads, "query", query_init_scale)(inputs_q)
        key = self._project(self.num_kv_heads, "key")(inputs_kv)
        value = self._project(self.num_kv_heads, "value")(inputs_kv)
        if self.rope_max_wavelength is not None:
            query = apply_rope(query, positions, self.rope_max_wavelength)
            key = apply_rope(key, positions, self.rope_max_wavelength)
        if not self.fold_query_scale:
            query = query * jnp.asarray(self.head_dim ** -0.5, query.dtype)
        if self.decode:
            key, value = self._cached(key, value, cache_positions)
        heads_axes = ("batch", "length", "heads", "kv")
        query, key, value = (constrain(t, heads_axes) for t in (query, key, value))
        out = dot_product_attention(query, key, value, bias=bias, mask=mask, backend=self.backend)
        out = constrain(out, heads_axes)
        return Projection(features=(inputs_q.shape[-1],), in_axes=("heads", "kv"),
                          out_axes=("embed",), dtype=self.dtype, name="out")(out)

    def _project(self, heads: int, name: str, init_scale: float = 1.0) -> Projection:
        return Projection(features=(heads, self.head_dim), in_axes=("embed",),
                          out_axes=("heads", "kv"), dtype=self.dtype, init_scale=init_scale,
                          use_bias=self.qkv_bias, name=name)

    def _cached(self, key: Array, value: Array,
                cache_positions: Array | None) -> tuple[Array, Array]:
        """Writes each row's key/value at its ``cache_positions``; the first call only creates the cache."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not initialized or cache_positions is None:
            return key, value
        rows = jnp.arange(key.shape[0])[:, None]
        cached_key.value = cached_key.value.at[rows, cache_positions].set(key, mode="drop")
        cached_value.value = cached_value.value.at[rows, cache_positions].set(value, mode="drop")
        return cached_key.value, cached_value.value
