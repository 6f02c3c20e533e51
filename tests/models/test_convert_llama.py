"""Llama-family import/export against HF transformers on the same random weights (safetensors and GGUF)."""

import json

import numpy as np
import pytest
import torch

from littlehelp.models import convert
from littlehelp.models.convert import ConversionError
from littlehelp.models.convert import gguf as gguf_format
from tests.helpers import remove_tensor

SIZES = dict(
    vocab_size=96,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    max_position_embeddings=64,
)
ROPE = {"rope_type": "default", "rope_theta": 50000.0}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norm scales around 1, biases too), so no mapping hides behind an init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.3 * noise if "norm" in name else 0.15 * noise)
    return model.eval()


def hf_model(kind: str, tied: bool, seed: int = 0) -> torch.nn.Module:
    """A random small HF LlamaForCausalLM or Qwen2ForCausalLM in float32."""
    import transformers

    if kind == "llama":
        config = transformers.LlamaConfig(**SIZES, rope_parameters=ROPE, tie_word_embeddings=tied)
        return _randomize(transformers.LlamaForCausalLM(config), seed)
    config = transformers.Qwen2Config(**SIZES, rope_parameters=ROPE, tie_word_embeddings=tied)
    return _randomize(transformers.Qwen2ForCausalLM(config), seed)


def tokens(batch: int = 2, length: int = 12, vocab: int = SIZES["vocab_size"]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, size=(batch, length)).astype(np.int32)


def hf_logits(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()


def our_logits(pretrained: convert.Pretrained, ids: np.ndarray) -> np.ndarray:
    return np.asarray(pretrained.model.logits(pretrained.params, {"decoder_input_tokens": ids}))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [False, True])
def test_safetensors_logits_match_hf_and_export_round_trips(tmp_path, kind, tied):
    from transformers import AutoModelForCausalLM

    reference = hf_model(kind, tied)
    reference.save_pretrained(tmp_path / "hf")
    pretrained = convert.load(tmp_path / "hf")
    assert pretrained.family == "llama"
    assert pretrained.config.tie_embeddings == tied and pretrained.config.qkv_bias == (kind == "qwen2")
    assert pretrained.config.rope_max_wavelength == ROPE["rope_theta"]
    assert pretrained.config.context_length == SIZES["max_position_embeddings"]
    ids = tokens()
    expected = hf_logits(reference, ids)
    assert np.abs(our_logits(pretrained, ids) - expected).max() <= 1e-4

    exported = AutoModelForCausalLM.from_pretrained(convert.export(pretrained, tmp_path / "ours")).eval()
    assert type(exported) is type(reference)
    assert exported.config.max_position_embeddings == SIZES["max_position_embeddings"]
    np.testing.assert_array_equal(hf_logits(exported, ids), expected)


def test_missing_tensor_is_named(tmp_path):
    hf_model("llama", tied=False).save_pretrained(tmp_path)
    remove_tensor(tmp_path, "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ConversionError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        convert.load(tmp_path)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"model_type": "mistral"}, "'mistral'"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "rope_type 'linear'"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"mlp_bias": True}, "mlp_bias"),
    ],
)
def test_unsupported_configs_are_refused_by_name(tmp_path, change, named):
    hf_model("llama", tied=True).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ConversionError, match=named):
        convert.load(tmp_path)


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf row order for a Llama q/k weight (HF rotate-half -> interleaved)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _gguf_name(name: str) -> tuple[str, str]:
    """An HF tensor name -> (its llama.cpp name, its HF module name within a layer or the model)."""
    names = {hf: ours for ours, hf in {**gguf_format.LAYER_NAMES, **gguf_format.GLOBAL_NAMES}.items()}
    prefix = "model.layers."
    if name.startswith(prefix):
        index, rest = name[len(prefix) :].split(".", 1)
        module, suffix = rest.rsplit(".", 1)
        return f"blk.{index}.{names[module]}.{suffix}", module
    module, suffix = name.rsplit(".", 1)
    return f"{names[module]}.{suffix}", module


def write_gguf(path, model: torch.nn.Module) -> None:
    """`model` (an HF LlamaForCausalLM) as an F32 GGUF file, named and permuted as llama.cpp writes it."""
    import gguf

    config, writer = model.config, gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(["a", "b", "ab"] + [f"t{i}" for i in range(3, config.vocab_size)])
    writer.add_token_types([1] * config.vocab_size)
    writer.add_token_merges(["a b"])
    writer.add_eos_token_id(2)
    heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_key_value_heads}
    for name, value in model.state_dict().items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        gguf_name, module = _gguf_name(name)
        value = value.numpy()
        writer.add_tensor(
            gguf_name, np.ascontiguousarray(_llama_cpp_permute(value, heads[module]) if module in heads else value)
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_logits_match_hf(tmp_path, tied):
    reference = hf_model("llama", tied, seed=1)
    write_gguf(tmp_path / "tiny.gguf", reference)
    pretrained = convert.load(tmp_path / "tiny.gguf")
    assert pretrained.config.tie_embeddings == tied and pretrained.config.num_kv_heads == 2
    assert pretrained.config.context_length == SIZES["max_position_embeddings"]  # GGUF llama.context_length
    ids = tokens()
    assert np.abs(our_logits(pretrained, ids) - hf_logits(reference, ids)).max() <= 1e-4


def test_gguf_unknown_architecture_is_named(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConversionError, match="general.architecture 'mamba'"):
        convert.load(tmp_path / "other.gguf")
