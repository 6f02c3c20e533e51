"""Multi-head attention: one backend switch, masks, the attention layer and its KV cache.

Conventions: query [b, lq, heads, d]; key/value [b, lk, kv_heads, d] with ``heads`` a multiple of
``kv_heads`` (grouped-query attention); ``bias`` is additive and broadcastable to
[b, heads, lq, lk]; ``mask`` is an ``AttentionMask``: which keys each query may attend to, described by
its structure (causal order, segment ids, and a dense boolean part only for what has none), so that
kernels which mask by structure (the Pallas flash-attention kernels) never see a dense mask.
``dot_product_attention`` does not scale the query: callers fold 1/sqrt(d) in beforehand.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.gpu import attention as pallas_gpu
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_tpu

from littlehelp.models.layers import Projection, apply_rope, constrain
from littlehelp.typing import Array, Dtype

MASKED_LOGIT = -1e10


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query may attend to, by structure, for kernels that mask without a dense mask.

    A key is visible to a query when every part present allows it:

    - ``causal``: the key's index is at most the query's (both counted from the start);
    - ``query_segment_ids`` [b or 1, lq] (0 = padding): the key is in the query's segment and is not
      padding. The keys' ids are ``key_segment_ids`` [b or 1, lk] in cross-attention; in self-attention
      leave that None, the keys then share the queries' ids (kernels with one shared array rely on it);
    - ``dense``: boolean (True = may attend) broadcastable to [b, heads, lq, lk], for what has no
      structure (the decoding mask); kernels take it as a dense bias, or not at all.

    With no part present every key is visible, as with no mask. ``to_dense`` gives the boolean mask
    for backends that take one.
    """

    causal: bool = flax.struct.field(pytree_node=False, default=False)
    query_segment_ids: Array | None = None
    key_segment_ids: Array | None = None
    dense: Array | None = None

    @property
    def effective_key_segment_ids(self) -> Array | None:
        """The keys' segment ids: ``key_segment_ids``, or the queries' in self-attention."""
        return self.query_segment_ids if self.key_segment_ids is None else self.key_segment_ids

    def to_dense(self, q_len: int, k_len: int) -> Array | None:
        """The boolean mask [b or 1, heads or 1, lq, lk] of every part present; None when none is."""
        parts = [self.dense]
        key_segment_ids = self.effective_key_segment_ids
        if self.query_segment_ids is not None and key_segment_ids is not None:
            parts.append(segment_mask(self.query_segment_ids, key_segment_ids))
        if self.causal:
            parts.append(causal_mask(q_len, k_len))
        present = [part for part in parts if part is not None]
        return functools.reduce(jnp.logical_and, present) if present else None


def segment_mask(query_segment_ids: Array, key_segment_ids: Array) -> Array:
    """Segment ids [b, lq], [b, lk] (0 = padding) -> [b, 1, lq, lk]: same non-padding segment."""
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    return (same & (key_segment_ids[:, None, :] != 0))[:, None]


def causal_mask(q_len: int, k_len: int | None = None) -> Array:
    """[1, 1, lq, lk] (lk defaults to lq): key index <= query index, both counted from the start."""
    k_len = q_len if k_len is None else k_len
    return (jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None])[None, None]


def _dense_mask(mask: AttentionMask | None, query: Array, key: Array) -> Array | None:
    """The boolean mask of ``mask`` for queries [b, lq, ...] and keys [b, lk, ...]; None without one."""
    return None if mask is None else mask.to_dense(query.shape[1], key.shape[1])


def _xla_attention(query: Array, key: Array, value: Array, bias: Array | None, mask: AttentionMask | None) -> Array:
    """Reference attention in plain XLA ops; softmax in float32."""
    batch, q_len, heads, depth = query.shape
    kv_heads, k_len = key.shape[2], key.shape[1]
    dense = _dense_mask(mask, query, key)
    grouped = query.reshape(batch, q_len, kv_heads, heads // kv_heads, depth)
    logits = jnp.einsum("bqngd,bknd->bngqk", grouped, key).astype(jnp.float32)
    logits = logits.reshape(batch, heads, q_len, k_len)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if dense is not None:
        logits = jnp.where(dense, logits, MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    probs = probs.reshape(batch, kv_heads, heads // kv_heads, q_len, k_len)
    # Contracted head-major, then transposed: XLA reads head-major values (the decoding cache) as they are.
    out = jnp.einsum("bngqk,bknd->bngqd", probs, value).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, q_len, heads, depth)


def _require_platform(backend: str, platform: str) -> None:
    """Refuses, in one line, a backend whose kernel is built for another platform than this run's."""
    if jax.default_backend() == platform:
        return
    interpreted = f"{backend}_interpret"
    hint = f"; {interpreted!r} runs it in Pallas interpret mode" if interpreted in ATTENTION_BACKENDS else ""
    raise ValueError(
        f"attention backend {backend!r} needs a {platform.upper()}; "
        f"this run's JAX backend is {jax.default_backend()!r}{hint}"
    )


def _library_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None,
    mask: AttentionMask | None,
    implementation: Literal["xla", "cudnn"] = "xla",
) -> Array:
    """`jax.nn.dot_product_attention`, JAX's own attention (its XLA graph, or cuDNN's fused flash
    attention with implementation='cudnn'); bias as here, the mask as its dense boolean mask, no
    query scaling."""
    if implementation == "cudnn":
        _require_platform("cudnn", "gpu")
    return jax.nn.dot_product_attention(
        query, key, value, bias=bias, mask=_dense_mask(mask, query, key), scale=1.0, implementation=implementation
    )


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
    def run(*args: Any) -> Array:
        with pltpu.force_tpu_interpret_mode():
            return kernel(*args)

    def forward(*args: Any) -> tuple[Array, Callable]:
        with pltpu.force_tpu_interpret_mode():
            return jax.vjp(kernel, *args)

    def backward(vjp: Callable, cotangent: Array) -> tuple[Any, ...]:
        with pltpu.force_tpu_interpret_mode():
            return vjp(cotangent)

    run.defvjp(forward, backward)
    return run


# Both lengths are padded to a multiple of the TPU kernel's block (its default, and what its backward
# pass needs along the keys); padded queries are cut off, padded keys masked by a segment id no query has.
_TPU_BLOCK = 128
_PADDED_KEY_SEGMENT = -1


def _tpu_segment_ids(
    mask: AttentionMask, batch: int, q_len: int, k_len: int, q_pad: int, k_pad: int
) -> pallas_tpu.SegmentIds | None:
    """The TPU kernel's segment ids (plain equality) for ``mask``'s, padded: padded keys get
    _PADDED_KEY_SEGMENT, which no query has. Without segments every real token is in segment 0;
    without segments or padded keys, None. Ours also exclude padding keys (id 0) where the kernel's
    let a padding query attend them: rows differ only for padding queries (id 0), as no real query
    shares a segment with padding."""
    if mask.query_segment_ids is None and not k_pad:
        return None

    def padded(ids: Array | None, length: int, pad: int, fill: int) -> Array:
        ids = jnp.zeros((batch, length), jnp.int32) if ids is None else ids.astype(jnp.int32)
        return jnp.pad(jnp.broadcast_to(ids, (batch, length)), ((0, 0), (0, pad)), constant_values=fill)

    return pallas_tpu.SegmentIds(
        q=padded(mask.query_segment_ids, q_len, q_pad, 0),
        kv=padded(mask.effective_key_segment_ids, k_len, k_pad, _PADDED_KEY_SEGMENT),
    )


def _pallas_tpu_attention(
    query: Array, key: Array, value: Array, bias: Array | None, mask: AttentionMask | None, interpret: bool = False
) -> Array:
    """JAX's Pallas TPU flash attention (`pallas.ops.tpu.flash_attention`): keys/values repeated to
    every query head, lengths padded to _TPU_BLOCK. The mask's causal flag and segment ids go to the
    kernel's own; only a bias or a dense mask part makes a dense [b, heads, lq, lk] float32 bias ``ab``
    (the dense part folded in as MASKED_LOGIT). Rows of padding queries (segment id 0) differ from
    "xla"'s (see ``_tpu_segment_ids``); a row a dense mask masks fully gives the mean of the values, as
    in "xla", but sends gradients to its query and the keys (none when its output gets none)."""
    if not interpret:
        _require_platform("pallas_tpu", "tpu")
    mask = AttentionMask() if mask is None else mask
    batch, q_len, heads, depth = query.shape
    k_len = key.shape[1]
    q_pad, k_pad = (-length % _TPU_BLOCK for length in (q_len, k_len))
    key, value = _kv_heads_repeated(key, value, heads)

    def kernel_layout(x: Array, pad: int) -> Array:
        return jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pad), (0, 0)))

    ab = None
    if bias is not None or mask.dense is not None:
        # Padding is masked by segment ids, far below MASKED_LOGIT (the kernel's mask value is
        # -0.7 * float32 max): a row the dense part masks fully averages the real keys only, as in "xla".
        ab = jnp.pad(
            _folded_bias(bias, mask.dense, (batch, heads, q_len, k_len)), ((0, 0), (0, 0), (0, q_pad), (0, k_pad))
        )
    segment_ids = _tpu_segment_ids(mask, batch, q_len, k_len, q_pad, k_pad)
    block_sizes = pallas_tpu.BlockSizes.get_default(batch, heads, q_len + q_pad, k_len + k_pad, depth)
    kernel = functools.partial(pallas_tpu.flash_attention, causal=mask.causal, sm_scale=1.0, block_sizes=block_sizes)
    out = (_in_tpu_interpret_mode(kernel) if interpret else kernel)(
        kernel_layout(query, q_pad), kernel_layout(key, k_pad), kernel_layout(value, k_pad), ab, segment_ids
    )
    return out[:, :, :q_len].transpose(0, 2, 1, 3)


def _pallas_gpu_attention(
    query: Array, key: Array, value: Array, bias: Array | None, mask: AttentionMask | None, interpret: bool = False
) -> Array:
    """JAX's Pallas GPU (Triton) flash attention (`pallas.ops.gpu.attention.mha`), keys/values repeated
    to every query head. Its kernel masks only by a causal flag and one array of segment ids shared by
    queries and keys: it takes a mask's causal flag and self-attention segment ids, and refuses a bias,
    a dense mask part and cross-attention segment ids. Its segments are plain equality, so rows of
    padding queries (id 0) attend padding keys, unlike "xla"'s; real rows agree."""
    mask = AttentionMask() if mask is None else mask
    if bias is not None or mask.dense is not None or mask.key_segment_ids is not None:
        raise ValueError(
            "attention backend 'pallas_gpu' takes no bias, dense mask or cross-attention segment "
            "ids (its kernel knows only a causal flag and segment ids shared by queries and keys); "
            "'cudnn' takes them all on a GPU"
        )
    if not interpret:
        _require_platform("pallas_gpu", "gpu")
    batch, q_len, heads = query.shape[:3]
    key, value = _kv_heads_repeated(key, value, heads)
    segment_ids = mask.query_segment_ids
    if segment_ids is not None:
        segment_ids = jnp.broadcast_to(segment_ids.astype(jnp.int32), (batch, q_len))
    # Blocks must be powers of two dividing the lengths: the kernel's defaults where the length allows.
    k_len = key.shape[1]
    block_sizes = pallas_gpu.BlockSizes(
        block_q=math.gcd(q_len, 128),
        block_k=math.gcd(k_len, 128),
        block_q_dkv=math.gcd(q_len, 32),
        block_kv_dkv=math.gcd(k_len, 32),
        block_q_dq=math.gcd(q_len, 32),
        block_kv_dq=math.gcd(k_len, 32),
    )
    return pallas_gpu.mha(
        query, key, value, segment_ids, sm_scale=1.0, causal=mask.causal, block_sizes=block_sizes, interpret=interpret
    )


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


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: AttentionMask | None = None,
    backend: str = "xla",
) -> Array:
    """softmax(query . key + bias, masked) . value with the chosen backend -> [b, lq, heads, d]."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"Unknown attention backend {backend!r}; available: {', '.join(sorted(ATTENTION_BACKENDS))}")
    if mask is not None:
        _check_mask(mask, query.shape[1], key.shape[1])
    return ATTENTION_BACKENDS[backend](query, key, value, bias, mask)


def _check_mask(mask: AttentionMask, q_len: int, k_len: int) -> None:
    """Refuses, in one line, a mask that is no ``AttentionMask`` or whose segment ids cannot be right."""
    if not isinstance(mask, AttentionMask):
        raise TypeError(
            f"attention mask must be an AttentionMask (a dense boolean mask goes in its "
            f"'dense' field), got {type(mask).__name__}"
        )
    if mask.key_segment_ids is not None and mask.query_segment_ids is None:
        raise ValueError("AttentionMask.key_segment_ids given without query_segment_ids")
    if mask.query_segment_ids is not None and mask.key_segment_ids is None and q_len != k_len:
        raise ValueError(
            f"AttentionMask without key_segment_ids is self-attention, but there are {q_len} "
            f"queries and {k_len} keys; give the keys' segment ids"
        )


class SelfAttentionContext(NamedTuple):
    """Positions and mask shared by every self-attention layer of a stack."""

    query_positions: Array  # [b or 1, lq]
    key_positions: Array  # [b or 1, lk]
    mask: AttentionMask
    cache_positions: Array | None  # [b, lq]: the cache slot each new token is written to; None outside decoding


class SelfAttentionPositions(nn.Module):
    """Builds the ``SelfAttentionContext`` of a stack.

    Outside decoding (and on the cache-creating call of decoding, ``decode_lengths`` None)
    positions default to ``arange(length)`` and the mask is structured: the segment ids (shared by
    queries and keys) and, if ``causal``, sequence order. While decoding, row ``r`` has
    ``decode_lengths[r]`` committed tokens in the cache: its new tokens go to the next slots (their
    positions), and each sees every slot up to its own, so rows of one batch may hold different
    numbers of tokens; that mask has no structure a kernel takes, so it is dense. Segment ids are
    ignored there.
    """

    causal: bool
    decode: bool = False

    @nn.compact
    def __call__(
        self, tokens: Array, segment_ids: Array | None, positions: Array | None, decode_lengths: Array | None = None
    ) -> SelfAttentionContext:
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
        return SelfAttentionContext(new_positions, slots[None], AttentionMask(dense=mask), new_positions)

    def _full_sequence(self, length: int, segment_ids: Array | None, positions: Array | None) -> SelfAttentionContext:
        if positions is None:
            positions = jnp.arange(length)[None]
        mask = AttentionMask(causal=self.causal, query_segment_ids=segment_ids)
        return SelfAttentionContext(positions, positions, mask, None)


class KeyValues(NamedTuple):
    """Keys and values: cached, head-major [..., b, kv_heads, slots, head_dim] (attention reads them
    without transposing), or new tokens' rows [..., b, l, kv_heads, head_dim] to write there."""

    keys: Array
    values: Array


def write_rows(cache: Array, rows: Array, slots: Array) -> Array:
    """``rows`` [..., b, l, kv_heads, d] written into ``cache`` [..., b, kv_heads, slots, d] at each row's
    ``slots`` [b, l] (leading axes, e.g. layers, alike); slots past the end are dropped."""
    batch, heads = jnp.arange(slots.shape[0])[:, None, None], jnp.arange(rows.shape[-2])
    return cache.at[..., batch, heads, slots[:, :, None], :].set(rows, mode="drop")


class KeyValueCache(nn.Module):
    """The keys and values of every self-attention layer of a stack, in the "cache" collection:
    [layers, b, kv_heads, slots, head_dim] each, made (zeros of ``shape``) by the cache-creating call.

    Calling it gives the cached `KeyValues`, which the stack hands its layers one slice each; each
    layer writes its new tokens' rows into its slice to attend to them and returns the rows; `write`
    puts every layer's rows into the cache at once after the stack has run. A scan over the layers so
    reads the cache without building a new one: only the new rows are written.
    """

    shape: tuple[int, ...]
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.keys = self.variable("cache", "cached_key", jnp.zeros, self.shape, self.dtype)
        self.values = self.variable("cache", "cached_value", jnp.zeros, self.shape, self.dtype)

    def __call__(self) -> KeyValues:
        return KeyValues(self.keys.value, self.values.value)

    def write(self, rows: KeyValues, slots: Array) -> None:
        """Every layer's new rows [layers, b, l, kv_heads, d] at each row's ``slots`` [b, l]."""
        self.keys.value = write_rows(self.keys.value, rows.keys, slots)
        self.values.value = write_rows(self.values.value, rows.values, slots)


def run_with_cache(
    run: Callable[..., tuple[Array, Any]], cache: KeyValueCache | None, x: Array, *args: Any, slots: Array | None
) -> Array:
    """``run(x, *args, cached) -> (x, new rows)`` (a stack from `layers.layer_stack_with_outputs`) -> x.

    While decoding (a ``cache``, and ``slots`` [b, l] for the new tokens) each layer gets its slice of
    the cache and every layer's new rows are written after the stack; otherwise (no cache, or the
    cache-creating call, which only makes it) the layers run without one.
    """
    cached = None if cache is None else cache()  # the cache-creating call makes it here
    if slots is None:
        return run(x, *args, None)[0]
    x, new_rows = run(x, *args, cached)
    assert cache is not None  # slots come with a cache
    cache.write(new_rows, slots)
    return x


class Attention(nn.Module):
    """Multi-head (optionally grouped-query) attention; bias-free projections unless ``qkv_bias``.

    ``qkv_bias`` adds biases to the query, key and value projections (Qwen2).
    ``fold_query_scale`` puts 1/sqrt(head_dim) into the query initialisation (T5) instead of
    scaling at run time (Llama). ``rope_max_wavelength`` turns on rotary embeddings. Given a
    ``cache`` (this layer's `KeyValues`, [b, kv_heads, slots, head_dim]) the new keys and values are
    written there, row by row, at the slots ``cache_positions`` [b, lq] (see ``SelfAttentionPositions``),
    the queries attend to the cache, and the call returns (output, the new `KeyValues` [b, lq, ...]) for
    the stack to write into its `KeyValueCache`.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    backend: str = "xla"
    fold_query_scale: bool = False
    rope_max_wavelength: float | None = None
    qkv_bias: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: AttentionMask | None = None,
        bias: Array | None = None,
        positions: Array | None = None,
        cache: KeyValues | None = None,
        cache_positions: Array | None = None,
    ) -> tuple[Array, KeyValues]:
        """(output, the new tokens' keys and values: the rows a decoding cache stores). ``positions`` [b, l]
        (RoPE only) belong to the tokens of ``inputs_q``/``inputs_kv``; ``cache_positions`` go with a ``cache``."""
        query_init_scale = 1.0 / self.head_dim if self.fold_query_scale else 1.0
        query = self._project(self.num_heads, "query", query_init_scale)(inputs_q)
        key = self._project(self.num_kv_heads, "key")(inputs_kv)
        value = self._project(self.num_kv_heads, "value")(inputs_kv)
        if self.rope_max_wavelength is not None:
            if positions is None:
                raise ValueError("Attention with RoPE needs the tokens' positions")
            query = apply_rope(query, positions, self.rope_max_wavelength)
            key = apply_rope(key, positions, self.rope_max_wavelength)
        if not self.fold_query_scale:
            query = query * jnp.asarray(self.head_dim**-0.5, query.dtype)
        new_rows = KeyValues(key, value)
        if cache is not None:  # attention takes [b, slots, kv_heads, d]: XLA folds the swap into its dots
            if cache_positions is None:
                raise ValueError("Attention with a cache needs the new tokens' cache_positions")
            key, value = (
                write_rows(cached, rows, cache_positions).swapaxes(1, 2) for cached, rows in zip(cache, new_rows)
            )
        heads_axes = ("batch", "length", "heads", "kv")
        query, key, value = (constrain(t, heads_axes) for t in (query, key, value))
        out = dot_product_attention(query, key, value, bias=bias, mask=mask, backend=self.backend)
        out = constrain(out, heads_axes)
        out = Projection(
            features=(inputs_q.shape[-1],), in_axes=("heads", "kv"), out_axes=("embed",), dtype=self.dtype, name="out"
        )(out)
        return out, new_rows

    def _project(self, heads: int, name: str, init_scale: float = 1.0) -> Projection:
        return Projection(
            features=(heads, self.head_dim),
            in_axes=("embed",),
            out_axes=("heads", "kv"),
            dtype=self.dtype,
            init_scale=init_scale,
            use_bias=self.qkv_bias,
            name=name,
        )
