"""GGUF files of the Llama family (general.architecture "llama" or "qwen2") -> `Pretrained`.

Every tensor is dequantised to float32 and renamed to its HF name, then the llama family's
`params_from_hf` maps it (one mapping for both formats). A dequantised matrix's numpy shape is
ggml's `ne` reversed, [out, in] as HF's. llama.cpp stores a Llama's `attn_q`/`attn_k` rows in its
interleaved-RoPE order; `_unpermute` restores HF's rotate-half order (Qwen2 files are not permuted).
A truncated file is refused naming where it ends: the metadata header, the tensor table or a tensor's data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from littlehelp.models.convert import llama
from littlehelp.models.convert.common import ConversionError, Pretrained, check_params, config_of
from littlehelp.models.decoder import DEFAULT_CONTEXT_LENGTH

ARCHITECTURES = ("llama", "qwen2")
LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _field(reader: Any, key: str, source: str, default: Any = None) -> Any:
    """The value of metadata `key` (ConversionError naming it when absent and no default)."""
    field = reader.fields.get(key)
    if field is not None:
        return field.contents()
    if default is None:
        raise ConversionError(f"{source} lacks GGUF metadata {key!r}")
    return default


def _architecture(reader: Any, source: str) -> str:
    arch = _field(reader, "general.architecture", source)
    if arch not in ARCHITECTURES:
        raise ConversionError(
            f"{source}: general.architecture {arch!r} is not supported; known: {', '.join(ARCHITECTURES)}"
        )
    return arch


def _check_rope(reader: Any, arch: str, head_dim: int, source: str) -> None:
    """Refuses rope scaling and partial rotary dimensions, which our DecoderLM does not implement."""
    scaling = _field(reader, f"{arch}.rope.scaling.type", source, "none")
    if scaling != "none":
        raise ConversionError(f"{source}: {arch}.rope.scaling.type {scaling!r} is not supported")
    rotary = _field(reader, f"{arch}.rope.dimension_count", source, head_dim)
    if rotary != head_dim:
        raise ConversionError(
            f"{source}: {arch}.rope.dimension_count {rotary} differs from the head size "
            f"{head_dim}; partial rotary embeddings are not supported"
        )


def _decimal(value: Any) -> float:
    """A float32 metadata value as the shortest decimal that is the same float32 (1e-05, not 9.99999975e-06)."""
    return float(str(np.float32(value)))


def hf_config_of(reader: Any, tensor_names: set[str], source: str) -> dict[str, Any]:
    """The HF config.json dict a GGUF file's metadata describes."""
    arch = _architecture(reader, source)

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", source, default)

    emb, heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    head_dim = int(meta("attention.key_length", emb // heads))
    expert_count = int(meta("expert_count", 0))
    if expert_count:
        raise ConversionError(f"{source}: {arch}.expert_count {expert_count} (mixture of experts) is not supported")
    _check_rope(reader, arch, head_dim, source)
    return {
        "model_type": arch,
        "vocab_size": len(_field(reader, "tokenizer.ggml.tokens", source)),
        "hidden_size": emb,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(meta("context_length", DEFAULT_CONTEXT_LENGTH)),
        "rope_theta": _decimal(meta("rope.freq_base", 10000.0)),
        "rms_norm_eps": _decimal(meta("attention.layer_norm_rms_epsilon")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }


def hf_name(name: str) -> str:
    """A GGUF tensor name (`blk.3.attn_q.weight`, `token_embd.weight`) -> its HF name."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    return name


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved-RoPE row order of a q/k weight [heads * hd, ...] -> HF's rotate-half order."""
    head_dim = weight.shape[0] // heads
    return weight.reshape(heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def hf_tensors_of(reader: Any, hf_config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor of the file dequantised to float32 under its HF name (q/k rows in HF's order)."""
    from gguf.quants import dequantize

    permuted = (
        {"self_attn.q_proj": hf_config["num_attention_heads"], "self_attn.k_proj": hf_config["num_key_value_heads"]}
        if hf_config["model_type"] == "llama"
        else {}
    )
    tensors = {}
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        value = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(shape)
        name = hf_name(tensor.name)
        module = name.rsplit(".", 1)[0].split(".", 3)[-1]
        tensors[name] = _unpermute(value, permuted[module]) if module in permuted else value
    return tensors


def _vocabulary(path: Path) -> Any:
    from littlehelp.data.hf_vocab import TokenizerVocabulary

    return TokenizerVocabulary.from_gguf(path)


class _CheckedReader(GGUFReader):
    """A GGUFReader that refuses a truncated file by name: where it ends (the metadata header or the
    tensor-info table), or the first tensor whose data it lacks."""

    def __init__(self, path: Path):
        self.source = str(path)
        super().__init__(path)

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        if int(offset) + np.dtype(dtype).itemsize * int(count) > len(self.data):
            raise ConversionError(
                f"{self.source} is truncated: it ends at byte {len(self.data)}, inside its {self._section()}"
            )
        return super()._get(offset, dtype, count, override_order)

    def _section(self) -> str:
        """The part being read: the metadata header until all its key/values are read, then the tensor table."""
        fields = getattr(self, "fields", {})
        kv_count = fields.get("GGUF.kv_count")
        read = len(fields) - 3  # GGUF.version, GGUF.tensor_count and GGUF.kv_count are not key/values
        return "metadata header" if kv_count is None or read < int(kv_count.parts[0][0]) else "tensor-info table"

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        for field in fields:
            _, name, _, dims, ggml_type, offset = field.parts
            block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(int(ggml_type[0]))]
            end = start_offs + int(offset[0]) + int(np.prod(dims)) * type_size // block_size
            if end > len(self.data):
                raise ConversionError(
                    f"{self.source} is truncated: it ends at byte {len(self.data)}, inside the "
                    f"data of tensor {bytes(name).decode()!r} (which ends at byte {end})"
                )
        super()._build_tensors(start_offs, fields)


def _reader(path: Path) -> GGUFReader:
    """A reader of GGUF file `path`; a truncated file or one that is not GGUF is refused naming it."""
    try:
        return _CheckedReader(path)
    except ConversionError:
        raise
    except (ValueError, KeyError) as error:
        raise ConversionError(f"{path} is not a readable GGUF file: {error}") from None


def load(path: str | Path) -> Pretrained:
    """A Llama-family GGUF file -> `Pretrained` (float32 params, our DecoderLM, its vocabulary)."""
    from littlehelp.models import build_model

    path, source = Path(path), str(path)
    reader = _reader(path)
    hf_config = hf_config_of(reader, {tensor.name for tensor in reader.tensors}, source)
    config = config_of(llama.FAMILY, hf_config, source)
    params = llama.params_from_hf(hf_tensors_of(reader, hf_config), config, source)
    model = build_model(config)
    return Pretrained("llama", config, model, check_params(model, params, source), _vocabulary(path), source)
