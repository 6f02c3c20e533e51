"""T5 v1.1 (HF "t5" with feed_forward_proj "gated-gelu", unscaled untied head) <-> our `T5`.

The math is the same on both sides: neither scales attention logits (our queries fold the scale
into their initialisation only), the relative position buckets are T5's (bidirectional in the
encoder, causal in the decoder; HF keeps each stack's table in its block 0), GELU is the tanh
approximation ("gelu_new") and RMSNorm has eps 1e-6 in float32. The original T5 (ReLU MLP, output
scaled by d_model**-0.5 for the tied head) is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from littlehelp.models.convert.common import (
    ConversionError,
    Family,
    Tensors,
    hf_shapes,
    register,
    require,
    require_shapes,
)
from littlehelp.models.convert.llama import get_path, layer_params, set_path, stack_layers, to_hf, to_ours
from littlehelp.models.t5 import T5Config
from littlehelp.typing import Params

NORM_EPS = 1e-6  # our T5's RMSNorm epsilon
Weights = dict[str, tuple[tuple[str, ...], str]]  # HF name within a block -> (our path in a layer, kind)


def _attention(hf_prefix: str, ours: str) -> Weights:
    kinds = {"q": "heads_out", "k": "heads_out", "v": "heads_out", "o": "heads_in"}
    names = {"q": "query", "k": "key", "v": "value", "o": "out"}
    return {f"{hf_prefix}.{w}.weight": ((ours, names[w], "kernel"), kind) for w, kind in kinds.items()}


def _mlp(hf_prefix: str) -> Weights:
    return {f"{hf_prefix}.DenseReluDense.{w}.weight": (("mlp", w, "kernel"), "linear") for w in ("wi_0", "wi_1", "wo")}


def _norm(hf_prefix: str, ours: str) -> Weights:
    return {f"{hf_prefix}.layer_norm.weight": ((ours, "scale"), "vector")}


ENCODER_LAYER: Weights = {
    **_attention("layer.0.SelfAttention", "attention"),
    **_norm("layer.0", "pre_attention_norm"),
    **_mlp("layer.1"),
    **_norm("layer.1", "pre_mlp_norm"),
}
DECODER_LAYER: Weights = {
    **_attention("layer.0.SelfAttention", "self_attention"),
    **_norm("layer.0", "pre_self_attention_norm"),
    **_attention("layer.1.EncDecAttention", "encoder_decoder_attention"),
    **_norm("layer.1", "pre_cross_attention_norm"),
    **_mlp("layer.2"),
    **_norm("layer.2", "pre_mlp_norm"),
}
RELATIVE_BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def _refuse(what: str) -> None:
    raise ConversionError(f"HF 't5' config: {what} is not supported (littlehelp's T5 is T5 v1.1)")


def _scales_decoder_outputs(hf: Mapping[str, Any]) -> bool:
    """HF's rule: an explicit scale_decoder_outputs, else scaled unless tie_word_embeddings is False."""
    return bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False))


def config_from_hf(hf: Mapping[str, Any]) -> T5Config:
    """An HF T5 v1.1 config.json dict -> our T5Config (float32, scanned layers)."""
    if hf.get("feed_forward_proj", "relu") != "gated-gelu":
        _refuse(f"feed_forward_proj {hf.get('feed_forward_proj', 'relu')!r} (the original T5 when 'relu')")
    if _scales_decoder_outputs(hf):
        _refuse("scale_decoder_outputs (the original T5's output scaled by d_model**-0.5)")
    if float(hf.get("layer_norm_epsilon", NORM_EPS)) != NORM_EPS:
        _refuse(f"layer_norm_epsilon {hf['layer_norm_epsilon']!r} (ours is {NORM_EPS})")
    layers = int(hf["num_layers"])
    return T5Config(
        vocab_size=int(hf["vocab_size"]),
        emb_dim=int(hf["d_model"]),
        num_heads=int(hf["num_heads"]),
        head_dim=int(hf["d_kv"]),
        mlp_dim=int(hf["d_ff"]),
        num_encoder_layers=layers,
        num_decoder_layers=int(hf.get("num_decoder_layers") or layers),
        dropout_rate=float(hf.get("dropout_rate", 0.1)),
        relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
    )


def hf_config(config: T5Config) -> dict[str, Any]:
    """Our T5Config -> an HF T5 v1.1 config.json dict."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_heads": config.num_heads,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": NORM_EPS,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "is_encoder_decoder": True,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    }


def _stacks(config: T5Config) -> dict[str, tuple[int, Weights]]:
    return {
        "encoder": (config.num_encoder_layers, ENCODER_LAYER),
        "decoder": (config.num_decoder_layers, DECODER_LAYER),
    }


def expected_names(config: T5Config) -> list[str]:
    """Every HF tensor name our conversion reads (lm_head.weight is optional: HF ties it to `shared`)."""
    names = ["shared.weight"]
    for stack, (count, weights) in _stacks(config).items():
        names += [f"{stack}.{RELATIVE_BIAS}", f"{stack}.final_layer_norm.weight"]
        names += [f"{stack}.block.{i}.{name}" for i in range(count) for name in weights]
    return names


def _stack_from_hf(tensors: Tensors, config: T5Config, stack: str) -> dict[str, Any]:
    count, weights = _stacks(config)[stack]
    layers = []
    for i in range(count):
        layer: dict[str, Any] = {}
        for name, (path, kind) in weights.items():
            weight = np.asarray(tensors[f"{stack}.block.{i}.{name}"])
            set_path(layer, path, to_ours(weight, kind, config.num_heads, config.head_dim))
        layers.append(layer)
    return {
        "relative_position_bias": {"rel_embedding": np.asarray(tensors[f"{stack}.{RELATIVE_BIAS}"]).T},
        "final_norm": {"scale": np.asarray(tensors[f"{stack}.final_layer_norm.weight"])},
        **stack_layers(layers, config.scan_layers),
    }


def params_from_hf(tensors: Tensors, config: T5Config, source: str = "HF checkpoint") -> Params:
    """HF T5 v1.1 tensors -> our T5 params (missing or misshapen tensors refused by name)."""
    require(tensors, expected_names(config), source)
    require_shapes(tensors, hf_shapes("t5", config), source)
    params = {
        "token_embedder": {"embedding": np.asarray(tensors["shared.weight"])},
        "encoder": _stack_from_hf(tensors, config, "encoder"),
        "decoder": _stack_from_hf(tensors, config, "decoder"),
    }
    head = tensors.get("lm_head.weight", tensors["shared.weight"])
    params["decoder"]["logits_dense"] = {"kernel": np.asarray(head).T}
    return params


def _stack_to_hf(params: Params, config: T5Config, stack: str) -> dict[str, np.ndarray]:
    count, weights = _stacks(config)[stack]
    ours = params[stack]
    out = {
        f"{stack}.{RELATIVE_BIAS}": np.asarray(ours["relative_position_bias"]["rel_embedding"]).T,
        f"{stack}.final_layer_norm.weight": np.asarray(ours["final_norm"]["scale"]),
    }
    for i in range(count):
        layer = layer_params(ours, i, config.scan_layers)
        for name, (path, kind) in weights.items():
            out[f"{stack}.block.{i}.{name}"] = to_hf(np.asarray(get_path(layer, path)), kind)
    return out


def hf_tensors(params: Params, config: T5Config) -> dict[str, np.ndarray]:
    """Our T5 params -> HF T5 v1.1 tensors (untied lm_head)."""
    return {
        "shared.weight": np.asarray(params["token_embedder"]["embedding"]),
        **_stack_to_hf(params, config, "encoder"),
        **_stack_to_hf(params, config, "decoder"),
        "lm_head.weight": np.asarray(params["decoder"]["logits_dense"]["kernel"]).T,
    }


FAMILY = register(
    Family(
        "t5",
        ("t5",),
        config_from_hf,
        params_from_hf,
        hf_config,
        hf_tensors,
        objective_file="models/encoder_decoder.gin",
    )
)
