"""T5 v1.1 import/export against HF transformers' T5ForConditionalGeneration on the same random weights."""

import json

import numpy as np
import pytest
import torch

from littlehelp.models import convert
from littlehelp.models.convert import ConversionError
from tests.helpers import remove_tensor

SIZES = dict(
    vocab_size=80,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=40,
    dropout_rate=0.0,
)


def hf_t5(seed: int = 0) -> torch.nn.Module:
    """A random small T5 v1.1 (gated-GELU, untied lm_head), every parameter random."""
    import transformers

    config = transformers.T5Config(**SIZES, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = transformers.T5ForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator))
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.3 * noise if "layer_norm" in name else 0.2 * noise)
    return model.eval()


def batch(inputs: int = 50, targets: int = 45) -> dict[str, np.ndarray]:
    """Random non-padding ids; lengths past max_distance so every bucket kind is used."""
    rng = np.random.default_rng(0)
    decoder = rng.integers(1, SIZES["vocab_size"], size=(2, targets)).astype(np.int32)
    decoder[:, 0] = 0  # the decoder start token
    return {
        "encoder_input_tokens": rng.integers(1, SIZES["vocab_size"], size=(2, inputs)).astype(np.int32),
        "decoder_input_tokens": decoder,
    }


def hf_logits(model: torch.nn.Module, ids: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(ids["encoder_input_tokens"].astype(np.int64)),
            decoder_input_ids=torch.from_numpy(ids["decoder_input_tokens"].astype(np.int64)),
        ).logits.numpy()


def test_safetensors_logits_match_hf_and_export_round_trips(tmp_path):
    from transformers import T5ForConditionalGeneration

    reference = hf_t5()
    reference.save_pretrained(tmp_path / "hf")
    pretrained = convert.load(tmp_path / "hf")
    assert pretrained.family == "t5" and pretrained.config.num_decoder_layers == 3
    ids = batch()
    expected = hf_logits(reference, ids)
    ours = np.asarray(pretrained.model.logits(pretrained.params, ids))
    assert np.abs(ours - expected).max() <= 1e-4

    exported = T5ForConditionalGeneration.from_pretrained(convert.export(pretrained, tmp_path / "ours")).eval()
    np.testing.assert_array_equal(hf_logits(exported, ids), expected)


def test_missing_tensor_is_named(tmp_path):
    hf_t5().save_pretrained(tmp_path)
    remove_tensor(tmp_path, "decoder.block.2.layer.1.EncDecAttention.k.weight")
    with pytest.raises(ConversionError, match=r"decoder\.block\.2\.layer\.1\.EncDecAttention\.k\.weight"):
        convert.load(tmp_path)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"feed_forward_proj": "relu"}, "feed_forward_proj 'relu'"),
        ({"scale_decoder_outputs": True}, "scale_decoder_outputs"),
        ({"model_type": "mt6"}, "'mt6'"),
    ],
)
def test_unsupported_configs_are_refused_by_name(tmp_path, change, named):
    hf_t5().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ConversionError, match=named):
        convert.load(tmp_path)
