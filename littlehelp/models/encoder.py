"""Encoder-only bidirectional transformer (the T5 v1.1 encoder stack) with an MLM head."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from littlehelp.models.layers import Embed, Projection, constrain
from littlehelp.models.t5 import EncoderStack, check_common, check_positive

Array = jax.Array


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Sizes and options of an encoder-only model (defaults: a tiny model)."""
    vocab_size: int = 512
    emb_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 32
    mlp_dim: int = 128
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_backend: str = "xla"
    dropout_rate: float = 0.0
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128

    def __post_init__(self) -> None:
        check_positive(self, "vocab_size", "emb_dim", "num_layers", "num_heads", "head_dim",
                       "mlp_dim", "relative_attention_num_buckets",
                       "relative_attention_max_distance")
        check_common(self)


class Encoder(nn.Module):
    """Tokens [b, l] -> final-normed hidden states [b, l, emb]; token id 0 is padding.

    Pass ``token_embedder`` (an ``Embed`` bound elsewhere, e.g. a T5 model's) to share
    embeddings; otherwise the encoder owns one named "token_embedder".
    """
    config: EncoderConfig

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, jnp.dtype(cfg.dtype))
        self.encoder = EncoderStack(cfg, cfg.num_layers)
        self.mlm_head = Projection(features=(cfg.vocab_size,), in_axes=("embed",),
                                   out_axes=("vocab",), dtype=jnp.dtype(cfg.dtype))

    def __call__(self, tokens: Array, segment_ids: Array | None = None,
                 deterministic: bool = True, token_embedder: Embed | None = None) -> Array:
        """Hidden states; segment ids (0 = padding) keep packed examples apart."""
        embedder = self.token_embedder if token_embedder is None else token_embedder
        segments = (tokens != 0).astype(jnp.int32) if segment_ids is None else segment_ids
        hidden = self.encoder(embedder(tokens), segments, None, deterministic)
        if self.is_initializing():
            self.mlm_logits(hidden)  # create the head's parameters at init
        return hidden

    def mlm_logits(self, hidden: Array) -> Array:
        """Masked-language-model logits [b, l, vocab] from ``__call__``'s hidden states."""
        return constrain(self.mlm_head(hidden), ("batch", "length", "vocab"))
