"""Decoder-only language model, Llama-style: RoPE, grouped-query attention, SwiGLU, RMSNorm."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from littlehelp.models.attention import Attention, SelfAttentionPositions
from littlehelp.models.layers import (Embed, GatedMlp, Projection, RMSNorm, constrain,
                                      layer_stack)
from littlehelp.models.t5 import EMBED_AXES, check_common, check_positive

Array = jax.Array


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Sizes and options of a decoder-only LM (defaults: a tiny model)."""
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

    def __post_init__(self) -> None:
        check_positive(self, "vocab_size", "emb_dim", "num_layers", "num_heads", "num_kv_heads",
                       "head_dim", "mlp_dim")
        check_common(self)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"DecoderConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads, got {self.num_kv_heads!r}")
        if self.head_dim % 2:
            raise ValueError(f"DecoderConfig.head_dim must be even for RoPE, got {self.head_dim!r}")
        if not self.rope_max_wavelength > 0 or not self.norm_eps > 0:
            raise ValueError("DecoderConfig.rope_max_wavelength and norm_eps must be positive, got "
                             f"{self.rope_max_wavelength!r} and {self.norm_eps!r}")


class DecoderBlock(nn.Module):
    """Pre-normed causal self-attention (RoPE, GQA) and SwiGLU MLP with residuals."""
    config: DecoderConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, positions: Array,
                 cache_index: Array | None) -> tuple[Array, None]:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        h = RMSNorm(cfg.norm_eps, dtype, name="pre_attention_norm")(x)
        h = Attention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, dtype,
                      cfg.attention_backend, rope_max_wavelength=cfg.rope_max_wavelength,
                      decode=self.decode, name="attention")(
                          h, h, mask=mask, positions=positions, cache_index=cache_index)
        x = self._residual(x, h)
        h = RMSNorm(cfg.norm_eps, dtype, name="pre_mlp_norm")(x)
        h = GatedMlp(cfg.mlp_dim, "silu", cfg.dropout_rate, dtype, name="mlp")(
            h, self.deterministic)
        return self._residual(x, h), None

    def _residual(self, x: Array, update: Array) -> Array:
        update = nn.Dropout(self.config.dropout_rate)(update, deterministic=self.deterministic)
        return constrain(x + update, EMBED_AXES)


class DecoderLM(nn.Module):
    """Causal LM: tokens [b, l] -> next-token logits [b, l, vocab].

    Token id 0 is padding. For packed sequences pass ``segment_ids`` (0 = padding) and
    ``positions`` that restart at 0 in every segment. With ``decode`` each call appends the given
    tokens to a "cache" collection (create it first by calling once with the full length).
    Tied output logits are scaled by emb_dim**-0.5.
    """
    config: DecoderConfig

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None = None,
                 positions: Array | None = None, deterministic: bool = True,
                 decode: bool = False) -> Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype, name="token_embedder")
        x = constrain(embedder(tokens), EMBED_AXES)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        context = SelfAttentionPositions(causal=True, decode=decode,
                                         name="self_attention_positions")(
            tokens, segment_ids, positions)
        run = layer_stack(DecoderBlock, cfg.num_layers, cfg.scan_layers, cfg.remat_policy,
                          num_broadcast_args=3, config=cfg, deterministic=deterministic,
                          decode=decode)
        query_positions = jnp.broadcast_to(context.query_positions, tokens.shape)
        x = run(x, context.mask, query_positions, context.cache_index)
        x = RMSNorm(cfg.norm_eps, dtype, name="final_norm")(x)
        if cfg.tie_embeddings:
            logits = embedder.attend(x) * jnp.asarray(cfg.emb_dim ** -0.5, dtype)
        else:
            logits = Projection(features=(cfg.vocab_size,), in_axes=("embed",),
                                out_axes=("vocab",), dtype=dtype, name="logits_dense")(x)
        return constrain(logits, ("batch", "length", "vocab"))
