"""BERT encoders against HF transformers on the same weights: random small models and all-MiniLM-L6-v2."""

import dataclasses
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from littlehelp.config import ConfigError
from littlehelp.models import BertConfig, build_model, convert
from littlehelp.models.convert import ConversionError
from littlehelp.models.convert import bert as bert_family
from tests.test_flops import _counted

HF_TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=40,
    type_vocab_size=2,
)


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`model` with every parameter redrawn (norm scales and biases included), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3 + (parameter == 1.0) * 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Random HF BertModel (exact gelu) and BertForMaskedLM (gelu_new) folders, and the torch models."""
    torch.manual_seed(0)
    encoder = _perturbed(transformers.BertModel(transformers.BertConfig(**HF_TINY)), 1)
    mlm = _perturbed(transformers.BertForMaskedLM(transformers.BertConfig(**HF_TINY, hidden_act="gelu_new")), 2)
    folders = {}
    for name, model in (("encoder", encoder), ("mlm", mlm)):
        folders[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(folders[name])
    return folders, {"encoder": encoder, "mlm": mlm}


def _padded_tokens(seed: int = 0, lengths: tuple[int, ...] = (12, 7, 1), vocab: int = 99) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(len(lengths), max(lengths)))
    return np.where(np.arange(max(lengths))[None] < np.array(lengths)[:, None], tokens, 0).astype(np.int32)


def _hf_outputs(model: torch.nn.Module, tokens: np.ndarray, **kwargs) -> transformers.utils.ModelOutput:
    with torch.no_grad():
        ids = None if "inputs_embeds" in kwargs else torch.tensor(tokens, dtype=torch.long)
        return model(input_ids=ids, attention_mask=torch.tensor(tokens != 0, dtype=torch.long), **kwargs)


def _max_diff_on_tokens(ours: np.ndarray, reference: np.ndarray, tokens: np.ndarray) -> float:
    """Largest |difference| over the positions that hold tokens (padded positions mean nothing)."""
    return float(np.max(np.abs(np.asarray(ours) - np.asarray(reference))[tokens != 0]))


def test_import_matches_hf_hidden_states_and_pooler_with_padding(hf_folders):
    folders, models = hf_folders
    pretrained = convert.load(folders["encoder"])
    assert pretrained.family == "bert" and pretrained.config.pooler and not pretrained.config.mlm_head
    tokens = _padded_tokens()
    hidden = pretrained.model.hidden_states(pretrained.params, {"encoder_input_tokens": jnp.asarray(tokens)})
    reference = _hf_outputs(models["encoder"], tokens)
    assert _max_diff_on_tokens(hidden, reference.last_hidden_state.numpy(), tokens) <= 1e-4
    pooled = pretrained.model.pooled(pretrained.params, hidden)
    np.testing.assert_allclose(pooled, reference.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_unscanned_layers_and_input_embeddings_match_hf(hf_folders):
    folders, models = hf_folders
    hf_config = json.loads((folders["encoder"] / "config.json").read_text())
    config = dataclasses.replace(bert_family.config_from_hf(hf_config), scan_layers=False)
    params = bert_family.params_from_hf(load_file(str(folders["encoder"] / "model.safetensors")), config)
    model, tokens = build_model(config), _padded_tokens(seed=3)
    embeddings = np.random.default_rng(4).normal(size=(*tokens.shape, config.emb_dim)).astype(np.float32)
    hidden = model.hidden_states(
        params, {"encoder_input_tokens": jnp.asarray(tokens)}, input_embeddings=jnp.asarray(embeddings)
    )
    reference = _hf_outputs(models["encoder"], tokens, inputs_embeds=torch.tensor(embeddings))
    assert _max_diff_on_tokens(hidden, reference.last_hidden_state.numpy(), tokens) <= 1e-4
    words = model.embed(params, jnp.asarray(tokens))
    np.testing.assert_array_equal(words, models["encoder"].embeddings.word_embeddings(torch.tensor(tokens)).detach())


def test_packed_examples_match_hf_on_each_alone(hf_folders):
    folders, models = hf_folders
    pretrained = convert.load(folders["encoder"])
    first, second = _padded_tokens(seed=7, lengths=(5,))[0], _padded_tokens(seed=8, lengths=(3,))[0]
    packed = {
        "encoder_input_tokens": jnp.asarray([[*first, *second, 0]]),
        "encoder_segment_ids": jnp.asarray([[1] * 5 + [2] * 3 + [0]]),
        "encoder_positions": jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2, 0]]),
    }
    hidden = np.asarray(pretrained.model.hidden_states(pretrained.params, packed))[0]
    for rows, tokens in ((slice(0, 5), first), (slice(5, 8), second)):
        reference = _hf_outputs(models["encoder"], tokens[None]).last_hidden_state.numpy()[0]
        np.testing.assert_allclose(hidden[rows], reference, atol=1e-4, rtol=0)


def test_mlm_head_logits_match_hf(hf_folders):
    folders, models = hf_folders
    pretrained = convert.load(folders["mlm"])
    assert pretrained.config.mlm_head and not pretrained.config.pooler and pretrained.config.hidden_act == "gelu_new"
    tokens = _padded_tokens(seed=5)
    logits = pretrained.model.logits(pretrained.params, {"encoder_input_tokens": jnp.asarray(tokens)})
    assert _max_diff_on_tokens(logits, _hf_outputs(models["mlm"], tokens).logits.numpy(), tokens) <= 1e-4


@pytest.mark.parametrize("name, hf_class", [("encoder", transformers.BertModel), ("mlm", transformers.BertForMaskedLM)])
def test_export_loads_in_hf_with_identical_outputs(hf_folders, tmp_path, name, hf_class):
    folders, models = hf_folders
    out = convert.export(convert.load(folders[name]), tmp_path / name)
    reloaded, info = hf_class.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tokens = _padded_tokens(seed=6)
    got, want = _hf_outputs(reloaded.eval(), tokens), _hf_outputs(models[name], tokens)
    for key in ("last_hidden_state", "pooler_output") if name == "encoder" else ("logits",):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5, rtol=0)


def _copy_with(folder, tmp_path, tensors=None, config_changes=None):
    """A copy of an HF folder with its tensors replaced and/or config.json entries changed."""
    target = tmp_path / "changed"
    shutil.copytree(folder, target)
    if tensors is not None:
        save_file(tensors, str(target / "model.safetensors"))
    if config_changes:
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, **config_changes}))
    return target


def test_missing_tensor_is_refused_by_name(hf_folders, tmp_path):
    folders, _ = hf_folders
    tensors = load_file(str(folders["encoder"] / "model.safetensors"))
    del tensors["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(ConversionError, match=r"lacks 1 tensor\(s\): encoder\.layer\.1\.attention\.self\.key\.bias"):
        convert.load(_copy_with(folders["encoder"], tmp_path, tensors=tensors))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key' is not supported"),
        ({"hidden_act": "relu"}, "hidden_act 'relu' is not one of"),
        ({"is_decoder": True}, "is_decoder true is not supported"),
        ({"architectures": ["BertForSequenceClassification"]}, "architectures \\['BertForSequenceClassification'\\]"),
    ],
)
def test_unknown_options_are_refused_by_name(hf_folders, tmp_path, changes, message):
    folders, _ = hf_folders
    with pytest.raises(ConversionError, match=message):
        convert.load(_copy_with(folders["encoder"], tmp_path, config_changes=changes))


def _abstract_params(model, batch, boxed=False):
    """The params `model.init` would create, as shapes (nothing computed)."""
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
    return params if boxed else nn.unbox(params)


def test_logits_without_mlm_head_is_a_one_line_error():
    model = build_model(BertConfig())
    params = _abstract_params(model, {"encoder_input_tokens": jnp.ones((1, 4), jnp.int32)})
    with pytest.raises(ConfigError, match="^BertConfig.mlm_head is False: this BERT has no MLM head[^\n]*$"):
        model.logits_from_hidden(params, jnp.zeros((1, 4, 64)))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="emb_dim 30 must be a multiple of num_heads 4"):
        BertConfig(emb_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="BertConfig.hidden_act must be one of"):
        BertConfig(hidden_act="swish")


@pytest.mark.parametrize("mlm_head", [False, True])
def test_forward_flops_match_traced_count(mlm_head):
    model = build_model(
        BertConfig(vocab_size=100, emb_dim=32, num_layers=2, num_heads=2, mlp_dim=48, mlm_head=mlm_head)
    )
    batch = {"encoder_input_tokens": jnp.ones((2, 12), jnp.int32)}
    params = _abstract_params(model, batch)
    forward = model.logits if mlm_head else model.hidden_states
    assert _counted(lambda p: forward(p, batch), params) == pytest.approx(model.forward_flops(batch), rel=1e-9)


def test_every_parameter_has_logical_axes_of_its_rank():
    model = build_model(BertConfig(mlm_head=True))
    boxed = _abstract_params(model, {"encoder_input_tokens": jnp.ones((1, 4), jnp.int32)}, boxed=True)
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(leaves) == 28 and all(
        isinstance(x, nn.Partitioned) and len(x.names) == len(x.value.shape) for x in leaves
    )


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    """all-MiniLM-L6-v2 imported by us and read by HF."""
    return convert.load(minilm_dir), transformers.AutoModel.from_pretrained(minilm_dir).eval()


def test_minilm_hidden_states_match_hf(minilm, minilm_dir):
    from tokenizers import Tokenizer

    from littlehelp.data.corpus import shakespeare_documents

    pretrained, hf = minilm
    lines = [line.strip() for line in shakespeare_documents("validation")[3].splitlines() if line.strip()][:8]
    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=0)
    tokens = np.array([encoding.ids for encoding in tokenizer.encode_batch(lines)], np.int32)
    assert tokens.shape[0] == 8 and (tokens == 0).any()  # some rows are padded
    hidden = pretrained.model.hidden_states(pretrained.params, {"encoder_input_tokens": jnp.asarray(tokens)})
    diff = _max_diff_on_tokens(hidden, _hf_outputs(hf, tokens).last_hidden_state.numpy(), tokens)
    print(f"all-MiniLM-L6-v2 last hidden states: max |ours - HF| = {diff:.2e}")
    assert diff <= 1e-4
