"""Matrix-multiply FLOPs per architecture, for tokens/s, MFU and compute accounting.

Each model's seam counts its own forward pass (`Model.forward_flops`) with these helpers; a new model
family (`littlehelp.models.registry`) counts its own beside its model, with no entry here.

Convention (docs/benchmarks.md): 2 FLOPs per multiply-add of every matrix product in the forward
pass, counting attention scores (QK^T) and values (AV) over the full [length, length] square that
is computed (causal masks do not halve it), cross-attention K/V projections on encoder tokens, and
the output layer. Embedding lookups, norms and elementwise ops are not counted. A training step costs
3x the forward pass (forward + backward through activations and weights).

With B the batch, L lengths, d the model width, h heads of size k (h_kv for keys/values), f the MLP
width, V the vocabulary:
  attention block, queries on Lq tokens, keys/values on Lk tokens:
      2*B*(Lq*d*h*k + 2*Lk*d*h_kv*k + Lq*h*k*d) + 2*2*B*h*Lq*Lk*k
  gated MLP (two input projections, one output) on L tokens:   2*B*L*3*d*f
  output layer on L tokens:                                      2*B*L*d*V
"""

from __future__ import annotations

TRAIN_MULTIPLIER = 3.0


def attention_flops(batch: int, q_len: int, kv_len: int, d: int, heads: int, kv_heads: int, head_dim: int) -> float:
    """Projections, scores and weighted values of one attention block."""
    projections = 2 * batch * (q_len * d * heads * head_dim * 2 + 2 * kv_len * d * kv_heads * head_dim)
    scores_and_values = 2 * 2 * batch * heads * q_len * kv_len * head_dim
    return float(projections + scores_and_values)


def gated_mlp_flops(batch: int, length: int, d: int, mlp_dim: int) -> float:
    """A gated MLP (gated-GELU or SwiGLU): two input projections and one output projection."""
    return float(2 * batch * length * 3 * d * mlp_dim)


def t5_forward_flops(config, batch: int, inputs_length: int, targets_length: int) -> float:
    """Forward FLOPs of a T5 v1.1 encoder-decoder (`config`: a littlehelp.models.T5Config)."""
    d, h, k, f = config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim
    encoder_layer = attention_flops(batch, inputs_length, inputs_length, d, h, h, k) + gated_mlp_flops(
        batch, inputs_length, d, f
    )
    decoder_layer = (
        attention_flops(batch, targets_length, targets_length, d, h, h, k)
        + attention_flops(batch, targets_length, inputs_length, d, h, h, k)
        + gated_mlp_flops(batch, targets_length, d, f)
    )
    output = 2.0 * batch * targets_length * d * config.vocab_size
    return config.num_encoder_layers * encoder_layer + config.num_decoder_layers * decoder_layer + output


def decoder_forward_flops(config, batch: int, length: int) -> float:
    """Forward FLOPs of a decoder-only LM (`config`: a littlehelp.models.DecoderConfig)."""
    d, f = config.emb_dim, config.mlp_dim
    layer = attention_flops(
        batch, length, length, d, config.num_heads, config.num_kv_heads, config.head_dim
    ) + gated_mlp_flops(batch, length, d, f)
    return config.num_layers * layer + 2.0 * batch * length * d * config.vocab_size


def encoder_forward_flops(config, batch: int, length: int, with_vocab_head: bool = False) -> float:
    """Forward FLOPs of an encoder-only model (`config`: a littlehelp.models.EncoderConfig)."""
    d, h, k, f = config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim
    layer = attention_flops(batch, length, length, d, h, h, k) + gated_mlp_flops(batch, length, d, f)
    head = 2.0 * batch * length * d * config.vocab_size if with_vocab_head else 0.0
    return config.num_layers * layer + head
