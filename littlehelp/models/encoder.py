"""Encoder-only bidirectional transformer (the T5 v1.1 encoder stack) with an MLM head."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import gin
import jax.numpy as jnp

from littlehelp import flops
from littlehelp.features import ENCODER_INPUT_TOKENS, ENCODER_SEGMENT_IDS
from littlehelp.models.api import apply_params, dropout
from littlehelp.models.layers import Embed, Projection, constrain
from littlehelp.models.registry import ModelFamily, register
from littlehelp.models.t5 import EncoderStack, check_common, check_positive
from littlehelp.typing import Array, Batch, BatchSpec, Params


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
        check_positive(
            self,
            "vocab_size",
            "emb_dim",
            "num_layers",
            "num_heads",
            "head_dim",
            "mlp_dim",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        )
        check_common(self)

    @property
    def context_length(self) -> None:
        """No limit: relative position buckets take sequences of any length (`api.ModelConfig`)."""
        return None


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
        self.mlm_head = Projection(
            features=(cfg.vocab_size,), in_axes=("embed",), out_axes=("vocab",), dtype=jnp.dtype(cfg.dtype)
        )

    def __call__(
        self,
        tokens: Array,
        segment_ids: Array | None = None,
        deterministic: bool = True,
        token_embedder: Embed | None = None,
        input_embeddings: Array | None = None,
    ) -> Array:
        """Hidden states; segment ids (0 = padding) keep packed examples apart.

        ``input_embeddings`` [b, l, emb] replace the token embeddings (``tokens`` still mark padding).
        """
        embedder = self.token_embedder if token_embedder is None else token_embedder
        segments = (tokens != 0).astype(jnp.int32) if segment_ids is None else segment_ids
        x = embedder(tokens) if input_embeddings is None else input_embeddings.astype(jnp.dtype(self.config.dtype))
        hidden = self.encoder(x, segments, None, deterministic)
        if self.is_initializing():
            self.mlm_logits(hidden)  # create the head's parameters at init
        return hidden

    def mlm_logits(self, hidden: Array) -> Array:
        """Masked-language-model logits [b, l, vocab] from ``__call__``'s hidden states."""
        return constrain(self.mlm_head(hidden), ("batch", "length", "vocab"))

    def embed(self, tokens: Array) -> Array:
        """The token embeddings [b, l, emb] (what ``input_embeddings`` replaces)."""
        return self.token_embedder(tokens)


@dataclasses.dataclass(frozen=True)
class EncoderModel:
    """The model seam (`api.Model`) of an `Encoder` with its MLM head, on "encoder_input_tokens"."""

    config: EncoderConfig

    @property
    def module(self) -> Encoder:
        return Encoder(self.config)

    def init(self, rng: Array, batch: Batch) -> Params:
        return self.module.init(rng, batch[ENCODER_INPUT_TOKENS])["params"]

    def embed(self, params: Params, tokens: Array) -> Array:
        return apply_params(self.module, params, tokens, method=Encoder.embed)

    def hidden_states(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        deterministic, rngs = dropout(rng, self.config.dropout_rate)
        return apply_params(
            self.module,
            params,
            batch[ENCODER_INPUT_TOKENS],
            batch.get(ENCODER_SEGMENT_IDS),
            deterministic,
            rngs=rngs,
            input_embeddings=input_embeddings,
        )

    def logits_from_hidden(self, params: Params, hidden: Array) -> Array:
        return apply_params(self.module, params, hidden, method=Encoder.mlm_logits)

    def logits(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        return self.logits_from_hidden(params, self.hidden_states(params, batch, rng, input_embeddings))

    def forward_flops(self, batch: BatchSpec) -> float:
        size, length = batch[ENCODER_INPUT_TOKENS].shape
        return flops.encoder_forward_flops(self.config, size, length, with_vocab_head=True)


register(ModelFamily("encoder", EncoderConfig, EncoderModel))
