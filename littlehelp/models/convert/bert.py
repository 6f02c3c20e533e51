"""The BERT family: HF `BertModel` / `BertForMaskedLM` folders <-> `BertConfig` and our `Bert` params.

Tensor names are read with or without the "bert." prefix (a bare BertModel's, e.g. all-MiniLM-L6-v2's,
have none); the checkpoint's "architectures" says which heads exist: BertModel has the pooler,
BertForMaskedLM the MLM head (decoder tied to the word embeddings). Export writes the same layout
back, so HF `from_pretrained` of that architecture loads it. Options we do not model (another
position_embedding_type, a decoder, cross-attention, untied MLM decoder, another activation) are
refused by name. The "position_ids" buffer older checkpoints carry is not a parameter and is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from littlehelp.models.bert import ACTIVATIONS, BertConfig
from littlehelp.models.convert.common import (
    ConversionError,
    Family,
    Tensors,
    hf_shapes,
    register,
    require,
    require_shapes,
)
from littlehelp.typing import Params

PREFIX = "bert."
ARCHITECTURES = {
    "BertModel": {"pooler": True, "mlm_head": False},
    "BertForMaskedLM": {"pooler": False, "mlm_head": True},
}
REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "hidden_act",
)
Transform = tuple[Callable[[np.ndarray, BertConfig], np.ndarray], Callable[[np.ndarray, BertConfig], np.ndarray]]

# (HF tensor -> ours, ours -> HF tensor); HF Linear weights are [out, in].
SAME: Transform = (lambda x, c: x, lambda x, c: x)
LINEAR: Transform = (lambda w, c: w.T, lambda w, c: w.T)
HEADS_IN: Transform = (
    lambda w, c: w.T.reshape(c.emb_dim, c.num_heads, c.head_dim),
    lambda w, c: w.reshape(c.emb_dim, -1).T,
)
HEADS_BIAS: Transform = (lambda b, c: b.reshape(c.num_heads, c.head_dim), lambda b, c: b.reshape(-1))
HEADS_OUT: Transform = (
    lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.emb_dim),
    lambda w, c: w.reshape(-1, c.emb_dim).T,
)


def _norm(ours: str, hf: str) -> list[tuple[str, str, Transform]]:
    return [(f"{ours}/scale", f"{hf}.weight", SAME), (f"{ours}/bias", f"{hf}.bias", SAME)]


def _dense(ours: str, hf: str, weight: Transform = LINEAR, bias: Transform = SAME) -> list[tuple[str, str, Transform]]:
    return [(f"{ours}/kernel", f"{hf}.weight", weight), (f"{ours}/bias", f"{hf}.bias", bias)]


LAYER = [
    entry
    for name in ("query", "key", "value")
    for entry in _dense(f"attention/{name}", f"attention.self.{name}", HEADS_IN, HEADS_BIAS)
] + [
    *_dense("attention/out", "attention.output.dense", HEADS_OUT),
    *_norm("attention_norm", "attention.output.LayerNorm"),
    *_dense("intermediate", "intermediate.dense"),
    *_dense("output", "output.dense"),
    *_norm("output_norm", "output.LayerNorm"),
]
EMBEDDINGS = [
    ("token_embedder/embedding", "embeddings.word_embeddings.weight", SAME),
    ("embeddings/position_embedding", "embeddings.position_embeddings.weight", SAME),
    ("embeddings/token_type_embedding", "embeddings.token_type_embeddings.weight", SAME),
    *_norm("embeddings/norm", "embeddings.LayerNorm"),
]
POOLER = _dense("pooler_dense", "pooler.dense")
MLM_HEAD = [
    *_dense("mlm_transform", "cls.predictions.transform.dense"),
    *_norm("mlm_norm", "cls.predictions.transform.LayerNorm"),
    ("mlm_bias", "cls.predictions.bias", SAME),
]


def _refuse(condition: bool, message: str) -> None:
    if condition:
        raise ConversionError(f"config.json: {message}")


def _architecture(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The heads of the one architecture config.json names, or ConversionError."""
    names = hf.get("architectures") or []
    _refuse(
        len(names) != 1 or names[0] not in ARCHITECTURES,
        f"architectures {names!r} is not one of {sorted(ARCHITECTURES)}",
    )
    heads = ARCHITECTURES[names[0]]
    _refuse(
        heads["mlm_head"] and hf.get("tie_word_embeddings", True) is False,
        "tie_word_embeddings false (an untied MLM decoder) is not supported",
    )
    return heads


def config_from_hf(hf: Mapping[str, Any]) -> BertConfig:
    """HF BERT config.json -> BertConfig; options we do not model are refused by name."""
    missing = [key for key in REQUIRED_KEYS if key not in hf]
    _refuse(bool(missing), f"lacks {', '.join(missing)}")
    position = hf.get("position_embedding_type", "absolute")
    _refuse(position != "absolute", f"position_embedding_type {position!r} is not supported (only 'absolute')")
    for flag in ("is_decoder", "add_cross_attention"):
        _refuse(bool(hf.get(flag)), f"{flag} true is not supported (an encoder only)")
    _refuse(hf["hidden_act"] not in ACTIVATIONS, f"hidden_act {hf['hidden_act']!r} is not one of {sorted(ACTIVATIONS)}")
    return BertConfig(
        vocab_size=hf["vocab_size"],
        emb_dim=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        type_vocab_size=hf["type_vocab_size"],
        layer_norm_eps=float(hf["layer_norm_eps"]),
        hidden_act=hf["hidden_act"],
        pad_token_id=int(hf.get("pad_token_id") or 0),
        dropout_rate=float(hf.get("hidden_dropout_prob", 0.0)),
        **_architecture(hf),
    )


def _entries(config: BertConfig) -> list[tuple[str, str, Transform]]:
    """Every (our path, HF name without the "bert." prefix, transform) of layers outside the stack."""
    return EMBEDDINGS + (POOLER if config.pooler else []) + (MLM_HEAD if config.mlm_head else [])


def _layer_name(index: int, hf: str) -> str:
    return f"encoder.layer.{index}.{hf}"


def _set(tree: dict[str, Any], path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def _get(tree: Params, path: str) -> np.ndarray:
    for name in path.split("/"):
        tree = tree[name]
    return np.asarray(tree)


def _hf_name(name: str, config: BertConfig) -> str:
    """The HF name of a tensor: "bert."-prefixed in a BertForMaskedLM, except its "cls." head."""
    return f"{PREFIX}{name}" if config.mlm_head and not name.startswith("cls.") else name


def params_from_hf(tensors: Tensors, config: BertConfig, source: str = "HF checkpoint") -> Params:
    """HF BERT tensors (with or without "bert.") -> our params; missing or misshapen tensors refused by name."""
    bare = {name.removeprefix(PREFIX): value for name, value in tensors.items()}
    layer_names = [_layer_name(i, hf) for i in range(config.num_layers) for _, hf, _ in LAYER]
    require(bare, [hf for _, hf, _ in _entries(config)] + layer_names, source)
    shapes = {name.removeprefix(PREFIX): shape for name, shape in hf_shapes("bert", config).items()}
    require_shapes(bare, shapes, source)
    params: dict[str, Any] = {}
    for ours, hf, (to_ours, _) in _entries(config):
        _set(params, ours, to_ours(np.asarray(bare[hf], np.float32), config))
    for ours, hf, (to_ours, _) in LAYER:
        per_layer = [
            to_ours(np.asarray(bare[_layer_name(i, hf)], np.float32), config) for i in range(config.num_layers)
        ]
        if config.scan_layers:
            _set(params, f"encoder/layers/{ours}", np.stack(per_layer))
        else:
            for i, value in enumerate(per_layer):
                _set(params, f"encoder/layers_{i}/{ours}", value)
    return params


def hf_tensors(params: Params, config: BertConfig) -> dict[str, np.ndarray]:
    """Our params -> HF tensors of the config's architecture (BertModel or BertForMaskedLM)."""
    tensors = {_hf_name(hf, config): to_hf(_get(params, ours), config) for ours, hf, (_, to_hf) in _entries(config)}
    for ours, hf, (_, to_hf) in LAYER:
        for i in range(config.num_layers):
            value = (
                _get(params, f"encoder/layers/{ours}")[i]
                if config.scan_layers
                else _get(params, f"encoder/layers_{i}/{ours}")
            )
            tensors[_hf_name(_layer_name(i, hf), config)] = to_hf(value, config)
    return tensors


def hf_config(config: BertConfig) -> dict[str, Any]:
    """BertConfig -> HF config.json (attention-probability dropout 0: our model has none)."""
    heads = {"pooler": config.pooler, "mlm_head": config.mlm_head}
    names = [name for name, known in ARCHITECTURES.items() if known == heads]
    if not names:
        raise ConversionError(
            f"a BertConfig with pooler={config.pooler}, mlm_head={config.mlm_head} has no HF "
            f"architecture here; exported are {sorted(ARCHITECTURES)}"
        )
    return {
        "architectures": names,
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.emb_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_dim,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": 0.0,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "dtype": "float32",
    }


FAMILY = register(Family("bert", ("bert",), config_from_hf, params_from_hf, hf_config, hf_tensors))
