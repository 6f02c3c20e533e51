"""Llama-family decoders (HF "llama" and "qwen2") <-> our `DecoderLM`.

HF stores linear weights as [out, in]; our kernels are [in, ...out] with the heads split out
(query [emb, heads, head_dim], out [heads, head_dim, emb]). RoPE (rotate-half), RMSNorm (float32,
eps inside the root) and SwiGLU match HF's Llama; tied logits are not scaled (`scale_tied_logits`
False). Qwen2 adds biases to q/k/v (`qkv_bias`). Anything else HF can express and we cannot
(rope scaling, sliding windows, other activations, MLP or output biases) is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
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
from littlehelp.models.decoder import DEFAULT_CONTEXT_LENGTH, DecoderConfig
from littlehelp.typing import Params

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# HF per-layer name -> (our path in a layer, kind of weight)
LAYER_WEIGHTS = {
    "self_attn.q_proj.weight": (("attention", "query", "kernel"), "heads_out"),
    "self_attn.k_proj.weight": (("attention", "key", "kernel"), "kv_heads_out"),
    "self_attn.v_proj.weight": (("attention", "value", "kernel"), "kv_heads_out"),
    "self_attn.o_proj.weight": (("attention", "out", "kernel"), "heads_in"),
    "mlp.gate_proj.weight": (("mlp", "wi_0", "kernel"), "linear"),
    "mlp.up_proj.weight": (("mlp", "wi_1", "kernel"), "linear"),
    "mlp.down_proj.weight": (("mlp", "wo", "kernel"), "linear"),
    "input_layernorm.weight": (("pre_attention_norm", "scale"), "vector"),
    "post_attention_layernorm.weight": (("pre_mlp_norm", "scale"), "vector"),
}
QKV_BIASES = {
    "self_attn.q_proj.bias": (("attention", "query", "bias"), "heads_bias"),
    "self_attn.k_proj.bias": (("attention", "key", "bias"), "kv_heads_bias"),
    "self_attn.v_proj.bias": (("attention", "value", "bias"), "kv_heads_bias"),
}


def _source(hf: Mapping[str, Any]) -> str:
    return f"HF {hf.get('model_type')!r} config"


def _refuse(hf: Mapping[str, Any], what: str) -> None:
    raise ConversionError(f"{_source(hf)}: {what} is not supported by littlehelp's DecoderLM")


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """The RoPE base of plain (unscaled) rotary embeddings; scaled variants are refused."""
    rope = hf.get("rope_parameters")
    if rope is not None:
        if rope.get("rope_type", "default") != "default":
            _refuse(hf, f"rope_parameters.rope_type {rope.get('rope_type')!r}")
        return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if hf.get("rope_scaling") is not None:
        _refuse(hf, f"rope_scaling {hf['rope_scaling']!r}")
    return float(hf.get("rope_theta", 10000.0))


def _check_supported(hf: Mapping[str, Any]) -> None:
    """Refuses, by name, every option of `hf` our DecoderLM does not implement."""
    if hf.get("model_type") not in ARCHITECTURES:
        raise ConversionError(f"{_source(hf)}: the llama family reads model_type 'llama' or 'qwen2'")
    if hf.get("hidden_act", "silu") != "silu":
        _refuse(hf, f"hidden_act {hf['hidden_act']!r}")
    for flag in ("mlp_bias", "use_sliding_window") + (("attention_bias",) if hf["model_type"] == "llama" else ()):
        if hf.get(flag):
            _refuse(hf, f"{flag}=True")
    if hf.get("attention_dropout", 0.0):
        _refuse(hf, f"attention_dropout {hf['attention_dropout']!r}")
    other_layers = sorted(set(hf.get("layer_types") or ["full_attention"]) - {"full_attention"})
    if other_layers:
        _refuse(hf, f"layer_types {other_layers}")


def config_from_hf(hf: Mapping[str, Any]) -> DecoderConfig:
    """An HF Llama / Qwen2 config.json dict -> our DecoderConfig (float32, scanned layers)."""
    _check_supported(hf)
    heads = int(hf["num_attention_heads"])
    return DecoderConfig(
        vocab_size=int(hf["vocab_size"]),
        emb_dim=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        mlp_dim=int(hf["intermediate_size"]),
        rope_max_wavelength=_rope_theta(hf),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        scale_tied_logits=False,
        qkv_bias=hf["model_type"] == "qwen2",
        context_length=int(hf.get("max_position_embeddings") or DEFAULT_CONTEXT_LENGTH),
    )


def hf_config(config: DecoderConfig) -> dict[str, Any]:
    """Our DecoderConfig -> an HF config.json dict (Qwen2 when it has q/k/v biases, else Llama)."""
    if config.tie_embeddings and config.scale_tied_logits:
        raise ConversionError("DecoderConfig.scale_tied_logits=True has no HF Llama equivalent")
    model_type = "qwen2" if config.qkv_bias else "llama"
    return {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.emb_dim,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "max_position_embeddings": config.context_length,
        "rope_theta": config.rope_max_wavelength,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_max_wavelength},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def to_ours(weight: np.ndarray, kind: str, heads: int, head_dim: int) -> np.ndarray:
    """One HF tensor ([out, in] for matrices) -> our layout for a weight of `kind`.

    Kinds: "heads_out" (q/k/v: [emb, heads, head_dim]), "heads_bias" ([heads, head_dim]), "heads_in"
    (attention output: [heads, head_dim, emb]), "linear" (transposed) and "vector" (as is).
    """
    if kind == "heads_out":
        return weight.T.reshape(weight.shape[1], heads, head_dim)
    if kind == "heads_bias":
        return weight.reshape(heads, head_dim)
    if kind == "heads_in":
        return weight.T.reshape(heads, head_dim, weight.shape[0])
    return weight.T if kind == "linear" else weight


def to_hf(value: np.ndarray, kind: str) -> np.ndarray:
    """Inverse of `to_ours`."""
    if kind == "heads_out":
        return value.reshape(value.shape[0], -1).T
    if kind == "heads_bias":
        return value.reshape(-1)
    if kind == "heads_in":
        return value.reshape(-1, value.shape[-1]).T
    return value.T if kind == "linear" else value


def _to_ours(weight: np.ndarray, kind: str, config: DecoderConfig) -> np.ndarray:
    """`to_ours` with the head count of `kind` ("kv_..." kinds have num_kv_heads)."""
    heads = config.num_kv_heads if kind.startswith("kv_") else config.num_heads
    return to_ours(weight, kind.removeprefix("kv_"), heads, config.head_dim)


def set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """tree[path[0]]...[path[-1]] = value, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """tree[path[0]]...[path[-1]]."""
    for key in path:
        tree = tree[key]
    return tree


def stack_layers(layers: list[dict[str, Any]], scan_layers: bool) -> dict[str, Any]:
    """Per-layer trees -> our stack's params: one "layers" tree stacked on axis 0, or layers_i."""
    if not scan_layers:
        return {f"layers_{i}": layer for i, layer in enumerate(layers)}
    return {"layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}


def layer_params(stack: Mapping[str, Any], index: int, scan_layers: bool) -> Mapping[str, Any]:
    """Layer `index`'s tree from our stack's params (inverse of `stack_layers`)."""
    if not scan_layers:
        return stack[f"layers_{index}"]
    return jax.tree.map(lambda x: np.asarray(x)[index], stack["layers"])


def _layer_weights(config: DecoderConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    return {**LAYER_WEIGHTS, **(QKV_BIASES if config.qkv_bias else {})}


def expected_names(config: DecoderConfig) -> list[str]:
    """Every HF tensor name a model of `config` has."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    names += [f"model.layers.{i}.{name}" for i in range(config.num_layers) for name in _layer_weights(config)]
    return names + ([] if config.tie_embeddings else ["lm_head.weight"])


def params_from_hf(tensors: Tensors, config: DecoderConfig, source: str = "HF checkpoint") -> Params:
    """HF Llama / Qwen2 tensors -> our DecoderLM params (missing or misshapen tensors refused by name)."""
    require(tensors, expected_names(config), source)
    require_shapes(tensors, hf_shapes("llama", config), source)
    layers = []
    for i in range(config.num_layers):
        layer: dict[str, Any] = {}
        for name, (path, kind) in _layer_weights(config).items():
            set_path(layer, path, _to_ours(np.asarray(tensors[f"model.layers.{i}.{name}"]), kind, config))
        layers.append(layer)
    params = {
        "token_embedder": {"embedding": np.asarray(tensors["model.embed_tokens.weight"])},
        "final_norm": {"scale": np.asarray(tensors["model.norm.weight"])},
        **stack_layers(layers, config.scan_layers),
    }
    if not config.tie_embeddings:
        params["logits_dense"] = {"kernel": np.asarray(tensors["lm_head.weight"]).T}
    return params


def hf_tensors(params: Params, config: DecoderConfig) -> dict[str, np.ndarray]:
    """Our DecoderLM params -> HF Llama / Qwen2 tensors."""
    out = {
        "model.embed_tokens.weight": np.asarray(params["token_embedder"]["embedding"]),
        "model.norm.weight": np.asarray(params["final_norm"]["scale"]),
    }
    for i in range(config.num_layers):
        layer = layer_params(params, i, config.scan_layers)
        for name, (path, kind) in _layer_weights(config).items():
            out[f"model.layers.{i}.{name}"] = to_hf(np.asarray(get_path(layer, path)), kind.removeprefix("kv_"))
    if not config.tie_embeddings:
        out["lm_head.weight"] = np.asarray(params["logits_dense"]["kernel"]).T
    return out


FAMILY = register(
    Family(
        "llama",
        tuple(ARCHITECTURES),
        config_from_hf,
        params_from_hf,
        hf_config,
        hf_tensors,
        objective_file="models/decoder_only.gin",
    )
)
