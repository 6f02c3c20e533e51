"""BERT-family encoder (post-LN, biased projections, absolute positions), e.g. imported all-MiniLM-L6-v2.

Embeddings: word + absolute position + token type (always type 0), then LayerNorm. Each layer:
x = LN(x + attention(x)); x = LN(x + W2 act(W1 x)), every projection with a bias. Padding: segment
ids (0 = padding) when the batch has them, else tokens equal to `pad_token_id`; packed examples keep
apart by segment and take their positions from "encoder_positions". Outputs at padded positions are
not meaningful. Dropout (`dropout_rate`, only with an rng) falls on the embeddings and each residual
branch; attention probabilities get none.

Heads: `pooler` (tanh dense on the first token, as HF's BertModel) and `mlm_head` (HF's
BertForMaskedLM head, decoder tied to the word embeddings). A model without the MLM head (a sentence
embedder such as MiniLM) has hidden states and no logits: `logits_from_hidden` raises ConfigError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from littlehelp import flops
from littlehelp.config import ConfigError
from littlehelp.features import ENCODER_INPUT_TOKENS, ENCODER_POSITIONS, ENCODER_SEGMENT_IDS
from littlehelp.models.api import apply_params, dropout
from littlehelp.models.attention import AttentionMask, dot_product_attention
from littlehelp.models.layers import Axes, Embed, Projection, constrain, layer_stack, logical_param
from littlehelp.models.registry import ModelFamily, register
from littlehelp.models.t5 import EMBED_AXES, check_choice, check_common, check_positive
from littlehelp.typing import Array, Batch, BatchSpec, Params

HEADS_AXES = ("batch", "length", "heads", "kv")
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # HF "gelu": exact, with erf
    "gelu_new": lambda x: nn.gelu(x, approximate=True),  # HF "gelu_new": the tanh approximation
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and options of a BERT encoder (defaults: a tiny model); head size is emb_dim / num_heads."""

    vocab_size: int = 512
    emb_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    mlp_dim: int = 128
    max_position_embeddings: int = 128
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    pooler: bool = True
    mlm_head: bool = False
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_backend: str = "xla"
    dropout_rate: float = 0.0

    def __post_init__(self) -> None:
        check_positive(
            self,
            "vocab_size",
            "emb_dim",
            "num_layers",
            "num_heads",
            "mlp_dim",
            "max_position_embeddings",
            "type_vocab_size",
        )
        check_choice(self, "hidden_act", tuple(ACTIVATIONS))
        check_common(self)
        if self.emb_dim % self.num_heads:
            raise ValueError(f"BertConfig.emb_dim {self.emb_dim} must be a multiple of num_heads {self.num_heads}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"BertConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id must be in [0, vocab_size), got {self.pad_token_id!r}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.num_heads

    @property
    def context_length(self) -> int:
        """The longest sequence: one position embedding per position (`api.ModelConfig`)."""
        return self.max_position_embeddings


class LayerNorm(nn.Module):
    """Layer norm with a learned scale and bias, computed in float32."""

    epsilon: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (x.shape[-1],)
        scale = logical_param(self, "scale", nn.initializers.ones, ("embed",), features)
        bias = logical_param(self, "bias", nn.initializers.zeros, ("embed",), features)
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.epsilon)
        return (normed * scale + bias).astype(self.dtype)


def _dense(features: tuple[int, ...], in_axes: Axes, out_axes: Axes, dtype: jnp.dtype, **kwargs) -> Projection:
    """A linear map with a bias (BERT's every projection)."""
    return Projection(features=features, in_axes=in_axes, out_axes=out_axes, dtype=dtype, use_bias=True, **kwargs)


class BertAttention(nn.Module):
    """Bidirectional multi-head self-attention with biased query/key/value/output projections."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: AttentionMask) -> Array:
        cfg = self.config
        query, key, value = (self._project(x, name) for name in ("query", "key", "value"))
        query = query * jnp.asarray(cfg.head_dim**-0.5, query.dtype)
        out = dot_product_attention(query, key, value, mask=mask, backend=cfg.attention_backend)
        return _dense((x.shape[-1],), ("heads", "kv"), ("embed",), jnp.dtype(cfg.dtype), name="out")(
            constrain(out, HEADS_AXES)
        )

    def _project(self, x: Array, name: str) -> Array:
        cfg = self.config
        heads = _dense((cfg.num_heads, cfg.head_dim), ("embed",), ("heads", "kv"), jnp.dtype(cfg.dtype), name=name)(x)
        return constrain(heads, HEADS_AXES)


class BertLayer(nn.Module):
    """Self-attention and the MLP, each added to the residual and then layer-normed (post-LN)."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array, mask: AttentionMask) -> tuple[Array, None]:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        x = self._residual_norm(x, BertAttention(cfg, name="attention")(x, mask), "attention_norm")
        h = _dense((cfg.mlp_dim,), ("embed",), ("mlp",), dtype, name="intermediate")(x)
        h = constrain(ACTIVATIONS[cfg.hidden_act](h), ("batch", "length", "mlp"))
        h = _dense((cfg.emb_dim,), ("mlp",), ("embed",), dtype, name="output")(h)
        return self._residual_norm(x, h, "output_norm"), None

    def _residual_norm(self, x: Array, update: Array, name: str) -> Array:
        update = nn.Dropout(self.config.dropout_rate)(update, deterministic=self.deterministic)
        normed = LayerNorm(self.config.layer_norm_eps, jnp.dtype(self.config.dtype), name=name)(x + update)
        return constrain(normed, EMBED_AXES)


class BertEmbeddings(nn.Module):
    """Adds absolute position and token-type embeddings to word embeddings, then LayerNorm and dropout."""

    config: BertConfig

    @nn.compact
    def __call__(self, words: Array, positions: Array, deterministic: bool) -> Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)

        def table(name: str, rows: int) -> Array:
            return logical_param(self, name, nn.initializers.normal(0.02), (None, "embed"), (rows, cfg.emb_dim))

        position = jnp.take(table("position_embedding", cfg.max_position_embeddings), positions, axis=0)
        token_type = table("token_type_embedding", cfg.type_vocab_size)[0]
        x = words.astype(jnp.float32) + position + token_type
        x = LayerNorm(cfg.layer_norm_eps, dtype, name="norm")(x)
        return nn.Dropout(cfg.dropout_rate)(constrain(x, EMBED_AXES), deterministic=deterministic)


class BertStack(nn.Module):
    """The ``num_layers`` BERT layers (scanned when ``scan_layers``)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: AttentionMask, deterministic: bool) -> Array:
        cfg = self.config
        run = layer_stack(
            BertLayer,
            cfg.num_layers,
            cfg.scan_layers,
            cfg.remat_policy,
            num_broadcast_args=1,
            config=cfg,
            deterministic=deterministic,
        )
        return run(x, mask)


class Bert(nn.Module):
    """Tokens [b, l] -> hidden states [b, l, emb] of the last layer; heads as the config says."""

    config: BertConfig

    def setup(self) -> None:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype, stddev=0.02)
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertStack(cfg)
        if cfg.pooler:
            self.pooler_dense = _dense((cfg.emb_dim,), ("embed",), (None,), dtype)  # "embed" once per kernel
        if cfg.mlm_head:
            self.mlm_transform = _dense((cfg.emb_dim,), ("embed",), (None,), dtype)
            self.mlm_norm = LayerNorm(cfg.layer_norm_eps, dtype)
            self.mlm_bias = logical_param(self, "mlm_bias", nn.initializers.zeros, ("vocab",), (cfg.vocab_size,))

    def __call__(
        self,
        tokens: Array,
        segment_ids: Array | None = None,
        positions: Array | None = None,
        deterministic: bool = True,
        input_embeddings: Array | None = None,
    ) -> Array:
        """Hidden states; ``input_embeddings`` [b, l, emb] replace the word embeddings (``tokens`` still
        mark padding), position and token-type embeddings are added to them as to word embeddings."""
        cfg, length = self.config, tokens.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(
                f"length {length} exceeds BertConfig.max_position_embeddings {cfg.max_position_embeddings}"
            )
        segments = (tokens != cfg.pad_token_id).astype(jnp.int32) if segment_ids is None else segment_ids
        positions = jnp.arange(length)[None] if positions is None else positions
        words = self.embed(tokens) if input_embeddings is None else input_embeddings
        x = self.embeddings(words, positions, deterministic)
        hidden = self.encoder(x, AttentionMask(query_segment_ids=segments), deterministic)
        if self.is_initializing():  # create the heads' parameters at init
            if cfg.pooler:
                self.pooled(hidden)
            if cfg.mlm_head:
                self.mlm_logits(hidden)
        return hidden

    def embed(self, tokens: Array) -> Array:
        """The word embeddings [b, l, emb] (what ``input_embeddings`` replaces)."""
        return self.token_embedder(tokens)

    def pooled(self, hidden: Array) -> Array:
        """HF's pooler output [b, emb]: tanh(dense(hidden state of the first token))."""
        return jnp.tanh(self.pooler_dense(hidden[:, 0]))

    def mlm_logits(self, hidden: Array) -> Array:
        """Masked-LM logits [..., vocab]: LN(act(dense(hidden))) against the tied word embeddings, plus a bias."""
        h = self.mlm_norm(ACTIVATIONS[self.config.hidden_act](self.mlm_transform(hidden)))
        logits = self.token_embedder.attend(h) + self.mlm_bias.astype(h.dtype)
        return constrain(logits, ("batch", "length", "vocab")) if logits.ndim == 3 else logits


def bert_forward_flops(config: BertConfig, batch: int, length: int, with_mlm_head: bool) -> float:
    """Forward FLOPs (littlehelp/flops.py's convention): layers with a two-matrix MLP, and the MLM head."""
    d, h, k = config.emb_dim, config.num_heads, config.head_dim
    layer = flops.attention_flops(batch, length, length, d, h, h, k) + 2.0 * batch * length * 2 * d * config.mlp_dim
    head = 2.0 * batch * length * d * (d + config.vocab_size) if with_mlm_head else 0.0
    return config.num_layers * layer + head


@dataclasses.dataclass(frozen=True)
class BertModel:
    """The model seam (`api.Model`) of a `Bert` on "encoder_input_tokens" (+ "encoder_segment_ids",
    "encoder_positions"); logits need `BertConfig.mlm_head`."""

    config: BertConfig

    @property
    def module(self) -> Bert:
        return Bert(self.config)

    def init(self, rng: Array, batch: Batch) -> Params:
        tokens = batch[ENCODER_INPUT_TOKENS]  # only its shape is used: an array or a ShapeDtypeStruct
        return self.module.init(rng, jnp.zeros(tokens.shape, jnp.int32))["params"]

    def embed(self, params: Params, tokens: Array) -> Array:
        return apply_params(self.module, params, tokens, method=Bert.embed)

    def hidden_states(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        deterministic, rngs = dropout(rng, self.config.dropout_rate)
        return apply_params(
            self.module,
            params,
            batch[ENCODER_INPUT_TOKENS],
            batch.get(ENCODER_SEGMENT_IDS),
            batch.get(ENCODER_POSITIONS),
            deterministic,
            input_embeddings,
            rngs=rngs,
        )

    def pooled(self, params: Params, hidden: Array) -> Array:
        """HF's pooler output [b, emb] from `hidden_states` (needs `BertConfig.pooler`)."""
        if not self.config.pooler:
            raise ConfigError("BertConfig.pooler is False: this BERT has no pooler")
        return apply_params(self.module, params, hidden, method=Bert.pooled)

    def logits_from_hidden(self, params: Params, hidden: Array) -> Array:
        if not self.config.mlm_head:
            raise ConfigError(
                "BertConfig.mlm_head is False: this BERT has no MLM head, so no logits (use hidden_states)"
            )
        return apply_params(self.module, params, hidden, method=Bert.mlm_logits)

    def logits(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        return self.logits_from_hidden(params, self.hidden_states(params, batch, rng, input_embeddings))

    def forward_flops(self, batch: BatchSpec) -> float:
        size, length = batch[ENCODER_INPUT_TOKENS].shape
        return bert_forward_flops(self.config, size, length, with_mlm_head=self.config.mlm_head)


register(ModelFamily("bert", BertConfig, BertModel))
