"""Decoder-only language model, Llama-style: RoPE, grouped-query attention, SwiGLU, RMSNorm."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import gin
import jax.numpy as jnp

from littlehelp import flops
from littlehelp.features import DECODER_INPUT_TOKENS, DECODER_POSITIONS, DECODER_SEGMENT_IDS
from littlehelp.models.api import DecodeCache, StepwiseFlaxModel, apply_params, dropout, empty_cache
from littlehelp.models.attention import (
    Attention,
    AttentionMask,
    KeyValueCache,
    KeyValues,
    SelfAttentionPositions,
    run_with_cache,
)
from littlehelp.models.layers import Embed, GatedMlp, Projection, RMSNorm, constrain, layer_stack_with_outputs
from littlehelp.models.registry import ModelFamily, register
from littlehelp.models.t5 import EMBED_AXES, check_common, check_positive
from littlehelp.typing import Array, Batch, BatchSpec, Params

DEFAULT_CONTEXT_LENGTH = 2048  # HF LlamaConfig's default max_position_embeddings


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Sizes and options of a decoder-only LM (defaults: a tiny model).

    `context_length` is the longest sequence (prompt plus new tokens) decoding accepts; imported models
    take it from their file (HF max_position_embeddings, GGUF context_length).
    """

    vocab_size: int = 512
    emb_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mlp_dim: int = 176
    rope_max_wavelength: float = 10000.0
    norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_backend: str = "xla"
    tie_embeddings: bool = False
    scale_tied_logits: bool = True  # tied logits times emb_dim**-0.5 (HF Llama: False)
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
    context_length: int = DEFAULT_CONTEXT_LENGTH

    def __post_init__(self) -> None:
        check_positive(
            self,
            "vocab_size",
            "emb_dim",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "mlp_dim",
            "context_length",
        )
        check_common(self)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads, got {self.num_kv_heads!r}"
            )
        if self.head_dim % 2:
            raise ValueError(f"DecoderConfig.head_dim must be even for RoPE, got {self.head_dim!r}")
        if not self.rope_max_wavelength > 0 or not self.norm_eps > 0:
            raise ValueError(
                "DecoderConfig.rope_max_wavelength and norm_eps must be positive, got "
                f"{self.rope_max_wavelength!r} and {self.norm_eps!r}"
            )


class DecoderBlock(nn.Module):
    """Pre-normed causal self-attention (RoPE, GQA) and SwiGLU MLP with residuals.

    Given its ``cache`` (decoding) the block also returns the new tokens' keys and values.
    """

    config: DecoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(
        self, x: Array, mask: AttentionMask, positions: Array, cache_positions: Array | None, cache: KeyValues | None
    ) -> tuple[Array, KeyValues | None]:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        h = RMSNorm(cfg.norm_eps, dtype, name="pre_attention_norm")(x)
        h, new_rows = Attention(
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            dtype,
            cfg.attention_backend,
            rope_max_wavelength=cfg.rope_max_wavelength,
            qkv_bias=cfg.qkv_bias,
            name="attention",
        )(h, h, mask=mask, positions=positions, cache=cache, cache_positions=cache_positions)
        x = self._residual(x, h)
        h = RMSNorm(cfg.norm_eps, dtype, name="pre_mlp_norm")(x)
        h = GatedMlp(cfg.mlp_dim, "silu", cfg.dropout_rate, dtype, name="mlp")(h, self.deterministic)
        return self._residual(x, h), (None if cache is None else new_rows)

    def _residual(self, x: Array, update: Array) -> Array:
        update = nn.Dropout(self.config.dropout_rate)(update, deterministic=self.deterministic)
        return constrain(x + update, EMBED_AXES)


class DecoderLM(nn.Module):
    """Causal LM: tokens [b, l] -> next-token logits [b, l, vocab].

    Token id 0 is padding. For packed sequences pass ``segment_ids`` (0 = padding) and
    ``positions`` that restart at 0 in every segment. ``input_embeddings`` [b, l, emb] replace the
    token embeddings (a soft prompt; ``tokens`` still mark padding). ``return_hidden`` returns the
    final-normed hidden states instead of logits; ``hidden`` skips the body and applies only the
    output head. With ``decode`` the call appends the tokens to a "cache" collection after each
    row's ``decode_lengths`` committed tokens (create the cache first with one call at the full
    length and ``decode_lengths`` None; see ``littlehelp.models.api``). Tied output logits are
    scaled by emb_dim**-0.5 when ``scale_tied_logits``.
    """

    config: DecoderConfig

    @nn.compact
    def __call__(
        self,
        tokens: Array | None,
        segment_ids: Array | None = None,
        positions: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        decode_lengths: Array | None = None,
        input_embeddings: Array | None = None,
        hidden: Array | None = None,
        return_hidden: bool = False,
    ) -> Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype, name="token_embedder")
        if hidden is None:
            if tokens is None:
                raise ValueError("DecoderLM needs tokens unless hidden is given")
            x = embedder(tokens) if input_embeddings is None else input_embeddings.astype(dtype)
            hidden = self._body(
                constrain(x, EMBED_AXES), tokens, segment_ids, positions, deterministic, decode, decode_lengths
            )
        if return_hidden:
            return hidden
        if cfg.tie_embeddings:
            logits = embedder.attend(hidden)
            if cfg.scale_tied_logits:
                logits = logits * jnp.asarray(cfg.emb_dim**-0.5, dtype)
        else:
            logits = Projection(
                features=(cfg.vocab_size,), in_axes=("embed",), out_axes=("vocab",), dtype=dtype, name="logits_dense"
            )(hidden)
        return constrain(logits, ("batch", "length", "vocab"))

    def _body(
        self,
        x: Array,
        tokens: Array,
        segment_ids: Array | None,
        positions: Array | None,
        deterministic: bool,
        decode: bool,
        decode_lengths: Array | None,
    ) -> Array:
        """Embedded inputs -> final-normed hidden states through the decoder blocks."""
        cfg = self.config
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        context = SelfAttentionPositions(causal=True, decode=decode, name="self_attention_positions")(
            tokens, segment_ids, positions, decode_lengths
        )
        run = layer_stack_with_outputs(
            DecoderBlock,
            cfg.num_layers,
            cfg.scan_layers,
            cfg.remat_policy,
            num_broadcast_args=3,
            num_layer_args=1,
            config=cfg,
            deterministic=deterministic,
        )
        query_positions = jnp.broadcast_to(context.query_positions, tokens.shape)
        shape = (cfg.num_layers, tokens.shape[0], cfg.num_kv_heads, tokens.shape[1], cfg.head_dim)
        cache = KeyValueCache(shape, jnp.dtype(cfg.dtype), name="key_value_cache") if decode else None
        x = run_with_cache(
            run, cache, x, context.mask, query_positions, context.cache_positions, slots=context.cache_positions
        )
        return RMSNorm(cfg.norm_eps, jnp.dtype(cfg.dtype), name="final_norm")(x)


@dataclasses.dataclass(frozen=True)
class DecoderLMModel(StepwiseFlaxModel):
    """The model seam (`api.StepwiseModel`) of a `DecoderLM`, on seqio's LM features."""

    config: DecoderConfig

    @property
    def module(self) -> DecoderLM:
        return DecoderLM(self.config)

    def init(self, rng: Array, batch: Batch) -> Params:
        return self.module.init(rng, batch[DECODER_INPUT_TOKENS])["params"]

    def embed(self, params: Params, tokens: Array) -> Array:
        cfg = self.config
        embedder = Embed(cfg.vocab_size, cfg.emb_dim, jnp.dtype(cfg.dtype))
        return apply_params(embedder, params["token_embedder"], tokens)

    def _apply(
        self, params: Params, batch: Batch, rng: Array | None, input_embeddings: Array | None, return_hidden: bool
    ) -> Array:
        deterministic, rngs = dropout(rng, self.config.dropout_rate)
        return apply_params(
            self.module,
            params,
            batch[DECODER_INPUT_TOKENS],
            segment_ids=batch.get(DECODER_SEGMENT_IDS),
            positions=batch.get(DECODER_POSITIONS),
            deterministic=deterministic,
            rngs=rngs,
            input_embeddings=input_embeddings,
            return_hidden=return_hidden,
        )

    def hidden_states(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        return self._apply(params, batch, rng, input_embeddings, return_hidden=True)

    def logits(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        return self._apply(params, batch, rng, input_embeddings, return_hidden=False)

    def logits_from_hidden(self, params: Params, hidden: Array) -> Array:
        return apply_params(self.module, params, None, hidden=hidden)

    def forward_flops(self, batch: BatchSpec) -> float:
        size, length = batch[DECODER_INPUT_TOKENS].shape
        return flops.decoder_forward_flops(self.config, size, length)

    def init_cache(self, params: Params, batch_size: int, max_length: int, inputs: Batch | None = None) -> DecodeCache:
        tokens = jnp.zeros((batch_size, max_length), jnp.int32)

        def create():
            return apply_params(self.module, params, tokens, decode=True, mutable=["cache"])[1]["cache"]

        return empty_cache(create, batch_size)

    def _decode_call(
        self, params: Params, cache: DecodeCache, tokens: Array, return_hidden: bool, input_embeddings: Array | None
    ) -> tuple[Array, Any]:
        out, mutated = self.module.apply(
            {"params": params, "cache": cache.layers},
            tokens,
            decode=True,
            decode_lengths=cache.lengths,
            input_embeddings=input_embeddings,
            return_hidden=return_hidden,
            mutable=["cache"],
        )
        return out, mutated["cache"]


register(ModelFamily("decoder", DecoderConfig, DecoderLMModel))
