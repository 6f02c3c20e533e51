"""The SpacTor generator: a small encoder-only transformer with an MLM head that reads the T5 model's
token embeddings.

Embedding sharing (ELECTRA's choice when the generator is narrower than the discriminator): the
generator has no embedding table of its own. It is called with the T5 model's table [vocab, d_model],
looks its tokens up there and, when its width differs, maps them to its width with a learned
projection ("embedding_projection", [d_model, generator width]). Gradients of the MLM loss therefore
reach the shared T5 table as well as the generator's own weights. The MLM head is the core
Encoder's untied output layer.
"""

from __future__ import annotations

import flax.linen as nn
import gin
import jax.numpy as jnp

from littlehelp.models import Encoder, EncoderConfig, T5Config
from littlehelp.models.layers import Projection
from littlehelp.typing import Array


@gin.configurable(module="spactor")
def generator_config(
    t5_config: T5Config = gin.REQUIRED, width_fraction: float = 1.0, depth_fraction: float = 1 / 3
) -> EncoderConfig:
    """An EncoderConfig `width_fraction` as wide as the T5 encoder (width, heads and MLP scaled;
    head size kept) and `depth_fraction` as deep (layers rounded, at least 1). The defaults, as wide
    and a third as deep, are the study's reading of the SpacTor paper (docs/methods/spactor.md)."""
    for name, fraction in (("width_fraction", width_fraction), ("depth_fraction", depth_fraction)):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"generator_config.{name} must be in (0, 1], got {fraction!r}")
    num_heads = max(1, round(t5_config.num_heads * width_fraction))
    return EncoderConfig(
        vocab_size=t5_config.vocab_size,
        emb_dim=max(1, round(t5_config.emb_dim * width_fraction)),
        num_layers=max(1, round(t5_config.num_encoder_layers * depth_fraction)),
        num_heads=num_heads,
        head_dim=t5_config.head_dim,
        mlp_dim=max(1, round(t5_config.mlp_dim * width_fraction)),
        dtype=t5_config.dtype,
        scan_layers=t5_config.scan_layers,
        remat_policy=t5_config.remat_policy,
        attention_backend=t5_config.attention_backend,
        dropout_rate=t5_config.dropout_rate,
        relative_attention_num_buckets=t5_config.relative_attention_num_buckets,
        relative_attention_max_distance=t5_config.relative_attention_max_distance,
    )


class Generator(nn.Module):
    """Tokens [b, l] and a shared embedding table [vocab, d] -> MLM logits [b, l, vocab]."""

    config: EncoderConfig

    @nn.compact
    def __call__(
        self, tokens: Array, shared_embedding: Array, segment_ids: Array | None = None, deterministic: bool = True
    ) -> Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        projection = None
        if shared_embedding.shape[-1] != cfg.emb_dim:
            # The generator width is its own axis; "mlp" shards it the way an MLP input kernel is.
            projection = Projection(
                features=(cfg.emb_dim,), in_axes=("embed",), out_axes=("mlp",), dtype=dtype, name="embedding_projection"
            )

        def embed(ids: Array) -> Array:
            vectors = jnp.take(shared_embedding, ids, axis=0).astype(dtype)
            return vectors if projection is None else projection(vectors)

        encoder = Encoder(cfg, name="encoder")
        hidden = encoder(tokens, segment_ids, deterministic, token_embedder=embed)
        return encoder.mlm_logits(hidden)
