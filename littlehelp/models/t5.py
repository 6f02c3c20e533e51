"""T5 v1.1 encoder-decoder: RMSNorm pre-norm, gated-GELU, no biases, untied output layer.

The token embedding ("token_embedder") is shared by encoder and decoder; each stack has one
relative position bias shared by all its layers. Token id 0 is padding; segment ids (0 = padding)
keep packed examples from attending to each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import gin
import jax.numpy as jnp

from littlehelp import flops
from littlehelp.features import (
    DECODER_INPUT_TOKENS,
    DECODER_POSITIONS,
    DECODER_SEGMENT_IDS,
    ENCODER_INPUT_TOKENS,
    ENCODER_POSITIONS,
    ENCODER_SEGMENT_IDS,
)
from littlehelp.models.api import DecodeCache, StepwiseFlaxModel, apply_params, dropout, empty_cache
from littlehelp.models.attention import (
    ATTENTION_BACKENDS,
    Attention,
    AttentionMask,
    KeyValueCache,
    KeyValues,
    SelfAttentionPositions,
    run_with_cache,
)
from littlehelp.models.layers import (
    REMAT_POLICIES,
    Embed,
    GatedMlp,
    Projection,
    RelativePositionBias,
    RMSNorm,
    constrain,
    layer_stack,
    layer_stack_with_outputs,
)
from littlehelp.models.registry import ModelFamily, register
from littlehelp.typing import Array, BatchSpec

COMPUTE_DTYPES = ("float32", "bfloat16")
EMBED_AXES = ("batch", "length", "embed")


def check_positive(config: Any, *names: str) -> None:
    """Raises ValueError naming the first field in ``names`` that is not a positive int."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raises ValueError if field ``name`` is not one of ``choices``."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}")


def check_common(config: Any) -> None:
    """Validates the fields every model config shares (dtype, remat, backend, dropout)."""
    check_choice(config, "dtype", COMPUTE_DTYPES)
    check_choice(config, "remat_policy", REMAT_POLICIES)
    check_choice(config, "attention_backend", tuple(sorted(ATTENTION_BACKENDS)))
    rate = getattr(config, "dropout_rate", 0.0)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{type(config).__name__}.dropout_rate must be in [0, 1), got {rate!r}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
    """Sizes and options of a T5 v1.1 model (defaults: T5 v1.1 small)."""

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    head_dim: int = 64
    mlp_dim: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    dropout_rate: float = 0.0
    dtype: str = "float32"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_backend: str = "xla"

    def __post_init__(self) -> None:
        check_positive(
            self,
            "vocab_size",
            "emb_dim",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "num_encoder_layers",
            "num_decoder_layers",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        )
        check_common(self)

    @property
    def context_length(self) -> None:
        """No limit: relative position buckets take sequences of any length (`api.ModelConfig`)."""
        return None


def _residual(config: Any, x: Array, update: Array, deterministic: bool) -> Array:
    update = nn.Dropout(config.dropout_rate)(update, deterministic=deterministic)
    return constrain(x + update, EMBED_AXES)


def _attention(config: Any, name: str) -> Attention:
    return Attention(
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        head_dim=config.head_dim,
        dtype=jnp.dtype(config.dtype),
        backend=config.attention_backend,
        fold_query_scale=True,
        name=name,
    )


def _mlp_sublayer(config: Any, x: Array, deterministic: bool) -> Array:
    dtype = jnp.dtype(config.dtype)
    h = RMSNorm(dtype=dtype, name="pre_mlp_norm")(x)
    h = GatedMlp(config.mlp_dim, "gelu", config.dropout_rate, dtype, name="mlp")(h, deterministic)
    return _residual(config, x, h, deterministic)


class EncoderLayer(nn.Module):
    """Bidirectional self-attention + gated-GELU MLP, both pre-normed and residual."""

    config: Any  # T5Config or EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: AttentionMask, bias: Array) -> tuple[Array, None]:
        h = RMSNorm(dtype=jnp.dtype(self.config.dtype), name="pre_attention_norm")(x)
        h, _ = _attention(self.config, "attention")(h, h, mask=mask, bias=bias)
        x = _residual(self.config, x, h, self.deterministic)
        return _mlp_sublayer(self.config, x, self.deterministic), None


class EncoderStack(nn.Module):
    """Embedded tokens -> final-normed hidden states through ``num_layers`` encoder layers."""

    config: Any  # T5Config or EncoderConfig
    num_layers: int

    @nn.compact
    def __call__(
        self, x: Array, segment_ids: Array, positions: Array | None = None, deterministic: bool = True
    ) -> Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        x = nn.Dropout(cfg.dropout_rate)(constrain(x, EMBED_AXES), deterministic=deterministic)
        context = SelfAttentionPositions(causal=False, name="self_attention_positions")(
            segment_ids, segment_ids, positions
        )
        bias = RelativePositionBias(
            cfg.num_heads,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            bidirectional=True,
            dtype=dtype,
            name="relative_position_bias",
        )(context.query_positions, context.key_positions)
        run = layer_stack(
            EncoderLayer,
            self.num_layers,
            cfg.scan_layers,
            cfg.remat_policy,
            num_broadcast_args=2,
            config=cfg,
            deterministic=deterministic,
        )
        x = run(x, context.mask, bias)
        x = RMSNorm(dtype=dtype, name="final_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, gated-GELU MLP.

    Given its ``cache`` (decoding) the layer also returns the new tokens' self-attention keys and values.
    """

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoded: Array,
        self_mask: AttentionMask,
        cross_mask: AttentionMask,
        self_bias: Array,
        cache_positions: Array | None,
        cache: KeyValues | None,
    ) -> tuple[Array, KeyValues | None]:
        dtype = jnp.dtype(self.config.dtype)
        h = RMSNorm(dtype=dtype, name="pre_self_attention_norm")(x)
        h, new_rows = _attention(self.config, "self_attention")(
            h, h, mask=self_mask, bias=self_bias, cache=cache, cache_positions=cache_positions
        )
        x = _residual(self.config, x, h, self.deterministic)
        h = RMSNorm(dtype=dtype, name="pre_cross_attention_norm")(x)
        h, _ = _attention(self.config, "encoder_decoder_attention")(h, encoded, mask=cross_mask)
        x = _residual(self.config, x, h, self.deterministic)
        return _mlp_sublayer(self.config, x, self.deterministic), (None if cache is None else new_rows)


class DecoderStack(nn.Module):
    """Decoder layers, final norm and the untied "logits_dense" output layer.

    ``return_hidden`` returns the hidden states before the output layer; ``hidden`` applies only
    the output layer to them.
    """

    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: Array | None,
        encoded: Array | None,
        tokens: Array | None,
        segment_ids: Array | None,
        positions: Array | None,
        cross_mask: AttentionMask | None,
        deterministic: bool,
        decode: bool,
        decode_lengths: Array | None = None,
        hidden: Array | None = None,
        return_hidden: bool = False,
    ) -> Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        if hidden is None:
            if x is None or encoded is None or tokens is None or cross_mask is None:
                raise ValueError("DecoderStack needs x, encoded, tokens and cross_mask unless hidden is given")
            hidden = self._body(
                x, encoded, tokens, segment_ids, positions, cross_mask, deterministic, decode, decode_lengths
            )
        if return_hidden:
            return hidden
        logits = Projection(
            features=(cfg.vocab_size,), in_axes=("embed",), out_axes=("vocab",), dtype=dtype, name="logits_dense"
        )(hidden)
        return constrain(logits, ("batch", "length", "vocab"))

    def _body(
        self,
        x: Array,
        encoded: Array,
        tokens: Array,
        segment_ids: Array | None,
        positions: Array | None,
        cross_mask: AttentionMask,
        deterministic: bool,
        decode: bool,
        decode_lengths: Array | None,
    ) -> Array:
        """Embedded decoder inputs -> final-normed hidden states."""
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        x = nn.Dropout(cfg.dropout_rate)(constrain(x, EMBED_AXES), deterministic=deterministic)
        context = SelfAttentionPositions(causal=True, decode=decode, name="self_attention_positions")(
            tokens, segment_ids, positions, decode_lengths
        )
        bias = RelativePositionBias(
            cfg.num_heads,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            bidirectional=False,
            dtype=dtype,
            name="relative_position_bias",
        )(context.query_positions, context.key_positions)
        run = layer_stack_with_outputs(
            DecoderLayer,
            cfg.num_decoder_layers,
            cfg.scan_layers,
            cfg.remat_policy,
            num_broadcast_args=5,
            num_layer_args=1,
            config=cfg,
            deterministic=deterministic,
        )
        shape = (cfg.num_decoder_layers, tokens.shape[0], cfg.num_heads, tokens.shape[1], cfg.head_dim)
        cache = KeyValueCache(shape, dtype, name="key_value_cache") if decode else None
        x = run_with_cache(
            run,
            cache,
            x,
            encoded,
            context.mask,
            cross_mask,
            bias,
            context.cache_positions,
            slots=context.cache_positions,
        )
        x = RMSNorm(dtype=dtype, name="final_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


def _segments(tokens: Array, segment_ids: Array | None) -> Array:
    """Given segment ids, or 1 for every non-padding token."""
    return (tokens != 0).astype(jnp.int32) if segment_ids is None else segment_ids


class T5(nn.Module):
    """T5 v1.1 encoder-decoder returning decoder logits [batch, target_len, vocab].

    ``encoder_input_embeddings`` [b, l, emb] replace the encoder's token embeddings (a soft
    prompt; ``encoder_input_tokens`` still mark padding).
    """

    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, jnp.dtype(cfg.dtype))
        self.encoder = EncoderStack(cfg, cfg.num_encoder_layers)
        self.decoder = DecoderStack(cfg)

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        deterministic: bool = True,
        encoder_input_embeddings: Array | None = None,
    ) -> Array:
        """Teacher-forced logits for ``decoder_input_tokens`` given the encoder input."""
        _, hidden = self.encoder_and_decoder_states(
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            encoder_positions,
            decoder_positions,
            deterministic,
            encoder_input_embeddings,
        )
        return self.logits_from_hidden(hidden)

    def encoder_and_decoder_states(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        deterministic: bool = True,
        encoder_input_embeddings: Array | None = None,
    ) -> tuple[Array, Array]:
        """(encoder states, decoder hidden states before the output layer) of one pass."""
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids, deterministic, encoder_positions, encoder_input_embeddings
        )
        hidden = self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            deterministic,
            return_hidden=True,
        )
        return encoded, hidden

    def embed(self, tokens: Array) -> Array:
        """The shared token embeddings [b, l, emb] (what ``encoder_input_embeddings`` replaces)."""
        return self.token_embedder(tokens)

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        deterministic: bool = True,
        encoder_positions: Array | None = None,
        encoder_input_embeddings: Array | None = None,
    ) -> Array:
        """Encoder hidden states [batch, input_len, emb_dim]."""
        if encoder_input_embeddings is None:
            x = self.token_embedder(encoder_input_tokens)
        else:
            x = encoder_input_embeddings.astype(jnp.dtype(self.config.dtype))
        segments = _segments(encoder_input_tokens, encoder_segment_ids)
        return self.encoder(x, segments, encoder_positions, deterministic)

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        decode_lengths: Array | None = None,
        return_hidden: bool = False,
    ) -> Array:
        """Decoder logits (or hidden states). With ``decode`` the tokens go through the cache after
        each row's ``decode_lengths`` committed tokens (see ``littlehelp.models.api``)."""
        if decoder_segment_ids is not None and encoder_segment_ids is not None:
            cross_mask = AttentionMask(query_segment_ids=decoder_segment_ids, key_segment_ids=encoder_segment_ids)
        else:  # every decoder token in segment 1 and every encoder token but padding: padding keys masked
            cross_mask = AttentionMask(
                query_segment_ids=jnp.ones(decoder_input_tokens.shape, jnp.int32),
                key_segment_ids=_segments(encoder_input_tokens, None),
            )
        x = self.token_embedder(decoder_input_tokens)
        return self.decoder(
            x,
            encoded,
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            cross_mask,
            deterministic,
            decode,
            decode_lengths,
            return_hidden=return_hidden,
        )

    def logits_from_hidden(self, hidden: Array) -> Array:
        """The output layer alone: decoder hidden states -> logits [b, l, vocab]."""
        return self.decoder(None, None, None, None, None, None, True, False, hidden=hidden)


@dataclasses.dataclass(frozen=True)
class T5Model(StepwiseFlaxModel):
    """The model seam (`api.StepwiseModel`) of a `T5`, on seqio's encoder-decoder features.

    `input_embeddings` replace the encoder's token embeddings; decoding is conditioned on
    `init_cache`'s inputs {"encoder_input_tokens": [b, l]} (optionally "encoder_input_embeddings").
    """

    config: T5Config

    @property
    def module(self) -> T5:
        return T5(self.config)

    def init(self, rng: Array, batch: Mapping[str, Array]) -> Any:
        return self.module.init(rng, batch[ENCODER_INPUT_TOKENS], batch[DECODER_INPUT_TOKENS])["params"]

    def embed(self, params: Any, tokens: Array) -> Array:
        return apply_params(self.module, params, tokens, method=T5.embed)

    def embedding_table(self, params: Any) -> Array:
        """The shared token embedding table [vocab, emb] (SpacTor's generator reads it, ELECTRA-style)."""
        return nn.unbox(params["token_embedder"]["embedding"])

    def _apply(
        self, params: Any, batch: Mapping[str, Array], rng: Array | None, input_embeddings: Array | None, method: Any
    ) -> Any:
        deterministic, rngs = dropout(rng, self.config.dropout_rate)
        return apply_params(
            self.module,
            params,
            batch[ENCODER_INPUT_TOKENS],
            batch[DECODER_INPUT_TOKENS],
            encoder_segment_ids=batch.get(ENCODER_SEGMENT_IDS),
            decoder_segment_ids=batch.get(DECODER_SEGMENT_IDS),
            encoder_positions=batch.get(ENCODER_POSITIONS),
            decoder_positions=batch.get(DECODER_POSITIONS),
            deterministic=deterministic,
            rngs=rngs,
            encoder_input_embeddings=input_embeddings,
            method=method,
        )

    def encoder_and_decoder_states(
        self, params: Any, batch: Mapping[str, Array], rng: Array | None = None, input_embeddings: Array | None = None
    ) -> tuple[Array, Array]:
        """(encoder states [b, l_in, emb], decoder hidden states [b, l_out, emb]) of one pass."""
        return self._apply(params, batch, rng, input_embeddings, T5.encoder_and_decoder_states)

    def hidden_states(
        self, params: Any, batch: Mapping[str, Array], rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        return self.encoder_and_decoder_states(params, batch, rng, input_embeddings)[1]

    def logits(
        self, params: Any, batch: Mapping[str, Array], rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        return self._apply(params, batch, rng, input_embeddings, T5.__call__)

    def logits_from_hidden(self, params: Any, hidden: Array) -> Array:
        return apply_params(self.module, params, hidden, method=T5.logits_from_hidden)

    def forward_flops(self, batch: BatchSpec) -> float:
        size, inputs_length = batch[ENCODER_INPUT_TOKENS].shape
        return flops.t5_forward_flops(self.config, size, inputs_length, batch[DECODER_INPUT_TOKENS].shape[1])

    def init_cache(
        self, params: Any, batch_size: int, max_length: int, inputs: Mapping[str, Array] | None = None
    ) -> DecodeCache:
        if inputs is None or ENCODER_INPUT_TOKENS not in inputs:
            raise ValueError("T5Model.init_cache needs inputs={'encoder_input_tokens': [b, l]} to condition on")
        encoder_tokens = inputs[ENCODER_INPUT_TOKENS]
        encoded = self.module.apply(
            {"params": params},
            encoder_tokens,
            None,
            True,
            None,
            inputs.get("encoder_input_embeddings"),
            method=T5.encode,
        )
        decoder_tokens = jnp.zeros((batch_size, max_length), jnp.int32)

        def create():
            return apply_params(
                self.module,
                params,
                encoded,
                encoder_tokens,
                decoder_tokens,
                decode=True,
                mutable=["cache"],
                method=T5.decode,
            )[1]["cache"]

        return empty_cache(create, batch_size, {"encoded": encoded, ENCODER_INPUT_TOKENS: encoder_tokens})

    def _decode_call(
        self, params: Any, cache: DecodeCache, tokens: Array, return_hidden: bool, input_embeddings: Array | None
    ) -> tuple[Array, Any]:
        if input_embeddings is not None:
            raise ValueError("T5Model decodes from decoder tokens; give soft prompts to init_cache's encoder inputs")
        out, mutated = self.module.apply(
            {"params": params, "cache": cache.layers},
            cache.context["encoded"],
            cache.context[ENCODER_INPUT_TOKENS],
            tokens,
            decode=True,
            decode_lengths=cache.lengths,
            return_hidden=return_hidden,
            mutable=["cache"],
            method=T5.decode,
        )
        return out, mutated["cache"]


register(ModelFamily("t5", T5Config, T5Model))
