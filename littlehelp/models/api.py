"""The model seam: one small typed protocol every model kind implements, over pure params pytrees.

Objectives, decoding, inference and the method packages call a `Model` (or, to decode, a
`StepwiseModel`) and never dispatch on model classes. A model is built from its config with
`littlehelp.models.build_model(config)`, by the family registered for the config's class
(`littlehelp.models.registry`).

The forward pass is split in two so a loss can apply the output head chunk by chunk over the
sequence: `hidden_states` (final-normed, before the head) and `logits_from_hidden`. Wherever tokens
go in (the decoder LM's input, the T5 encoder's input), `input_embeddings` may replace their
embeddings, e.g. to prepend a soft prompt; `embed` gives the embeddings tokens would have.

Stepwise decoding keeps per-row state: `init_cache`, `prefill` (a prompt in one forward pass),
`extend` (k tokens per row) and `rollback` (each row keeps its own number of tokens).

`Model.config` is a `ModelConfig`: the few fields every family's config has. Code that holds a
`Model` reads those alone; anything else it reads through the family's own config class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, cast, runtime_checkable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from littlehelp.typing import Array, Batch, BatchSpec, Params


@flax.struct.dataclass
class DecodeCache:
    """Per-row decoding state: committed lengths, the layers' keys/values, and model context.

    Slots at or past a row's length hold no committed token: they are masked out and overwritten.
    `context` holds what every step needs besides the cache (T5: the encoder states and input).
    """

    lengths: Array  # [b] int32: tokens committed per row
    layers: Any  # the flax "cache" collection (keys and values of every self-attention layer)
    context: Any = None


def rollback(cache: DecodeCache, lengths: Array) -> DecodeCache:
    """Sets each row's committed length (a row may keep fewer tokens than another)."""
    return dataclasses.replace(cache, lengths=jnp.asarray(lengths, jnp.int32))


@runtime_checkable
class ModelConfig(Protocol):
    """What code holding a `Model` may read of `Model.config`; every registered family's config has these
    (as fields or properties). Read any other field only through the family's own config class."""

    @property
    def vocab_size(self) -> int:
        """The vocabulary's size: token ids are below it, and logits are [..., vocab_size]."""

    @property
    def emb_dim(self) -> int:
        """The width of the token embeddings (`Model.embed`) and of the final hidden states (`Model.hidden_states`)."""

    @property
    def dtype(self) -> str:
        """The name of the activations' dtype ("float32" or "bfloat16"): `jnp.dtype(config.dtype)`."""

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model takes (its absolute or trained positions); None when only relative
        positions bound nothing (T5)."""


@runtime_checkable
class Model(Protocol):
    """What every model kind implements (all methods are pure functions of `params`)."""

    @property
    def config(self) -> ModelConfig:
        """The model's config (its family's config class)."""

    def init(self, rng: Array, batch: Batch) -> Params:
        """Logically annotated (boxed) parameters for batches shaped like `batch`."""

    def embed(self, params: Params, tokens: Array) -> Array:
        """The input embeddings [b, l, emb] of `tokens`: what `input_embeddings` replaces."""

    def hidden_states(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        """Final hidden states [b, l, emb] before the output head; dropout only when `rng` is given."""

    def logits_from_hidden(self, params: Params, hidden: Array) -> Array:
        """The output head alone: hidden states [..., emb] -> logits [..., vocab]."""

    def logits(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        """`logits_from_hidden(hidden_states(...))`."""

    def forward_flops(self, batch: BatchSpec) -> float:
        """Matrix-multiply FLOPs of one forward pass on a batch of these shapes (littlehelp/flops.py)."""


@runtime_checkable
class StepwiseModel(Model, Protocol):
    """A model that decodes step by step with per-row state."""

    def init_cache(self, params: Params, batch_size: int, max_length: int, inputs: Batch | None = None) -> DecodeCache:
        """An empty cache of `max_length` slots per row; `inputs` are what the model is conditioned
        on (T5: {"encoder_input_tokens": [b, l]}, encoded once here)."""

    def prefill(
        self, params: Params, cache: DecodeCache, tokens: Array, lengths: Array, input_embeddings: Array | None = None
    ) -> tuple[Array, DecodeCache]:
        """Right-padded prompts [b, p] of `lengths` in one forward pass after the committed tokens
        -> (logits [b, vocab] of each row's last prompt token, cache with `lengths` more tokens)."""

    def extend(self, params: Params, cache: DecodeCache, tokens: Array) -> tuple[Array, DecodeCache]:
        """Appends `tokens` [b, k] to every row -> (logits [b, k, vocab], cache with k more tokens)."""


class StepwiseFlaxModel:
    """`prefill` and `extend` over a flax module's decode call; a subclass supplies `_decode_call`."""

    def _decode_call(
        self, params: Params, cache: DecodeCache, tokens: Array, return_hidden: bool, input_embeddings: Array | None
    ) -> tuple[Array, Any]:
        """(logits or hidden states of `tokens` placed after each row's committed tokens, new layers)."""
        raise NotImplementedError

    def logits_from_hidden(self, params: Params, hidden: Array) -> Array:
        raise NotImplementedError

    def prefill(
        self, params: Params, cache: DecodeCache, tokens: Array, lengths: Array, input_embeddings: Array | None = None
    ) -> tuple[Array, DecodeCache]:
        """See `StepwiseModel.prefill`: the head runs on each row's last prompt position only."""
        lengths = jnp.asarray(lengths, jnp.int32)
        hidden, layers = self._decode_call(params, cache, tokens, True, input_embeddings)
        last = jnp.take_along_axis(hidden, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)
        logits = self.logits_from_hidden(params, last)[:, 0]
        return logits, dataclasses.replace(cache, lengths=cache.lengths + lengths, layers=layers)

    def extend(self, params: Params, cache: DecodeCache, tokens: Array) -> tuple[Array, DecodeCache]:
        """See `StepwiseModel.extend`."""
        logits, layers = self._decode_call(params, cache, tokens, False, None)
        return logits, dataclasses.replace(cache, lengths=cache.lengths + tokens.shape[1], layers=layers)


def apply_params(module: nn.Module, params: Params, *args: Any, **kwargs: Any) -> Array:
    """`module.apply({"params": params}, *args, **kwargs)` where it returns one array (no `mutable=`): what a
    seam's methods return. (flax types apply's result as that or an (output, variables) pair.)"""
    return cast(Array, module.apply({"params": params}, *args, **kwargs))


def empty_cache(create: Any, batch_size: int, context: Any = None) -> DecodeCache:
    """A `DecodeCache` of zeros shaped like the "cache" collection `create()` returns (no compute)."""
    shapes = jax.eval_shape(create)
    layers = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return DecodeCache(jnp.zeros((batch_size,), jnp.int32), layers, context)


def dropout(rng: Array | None, rate: float) -> tuple[bool, dict[str, Array]]:
    """(deterministic, rngs) for a flax apply: dropout runs only with an `rng` and a positive rate. Every
    model family's seam calls it, and so do method packages applying modules of their own (SpacTor's generator)."""
    if rng is None or rate <= 0:
        return True, {}
    return False, {"dropout": rng}
