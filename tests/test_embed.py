"""SentenceEmbedder on all-MiniLM-L6-v2 against HF transformers + mean pooling + L2 normalisation."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from littlehelp.data.corpus import shakespeare_documents
from littlehelp.embed import SentenceEmbedder, length_buckets
from littlehelp.models.convert import ConversionError


@pytest.fixture(scope="module")
def embedder(minilm_dir):
    return SentenceEmbedder.load(minilm_dir, batch_size=16)


@pytest.fixture(scope="module")
def hf(minilm_dir):
    return transformers.AutoTokenizer.from_pretrained(minilm_dir), transformers.AutoModel.from_pretrained(
        minilm_dir
    ).eval()


def _hf_embeddings(hf, texts: list[str], max_length: int = 512) -> np.ndarray:
    """sentence-transformers' recipe: HF last hidden states, masked mean, L2 normalisation."""
    tokenizer, model = hf
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"][..., None].float()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).numpy()


def _sentences(count: int = 50) -> list[str]:
    lines = [line.strip() for document in shakespeare_documents("validation")[:3] for line in document.splitlines()]
    return [line for line in lines if len(line.split()) >= 3][:count]


def test_embeddings_match_hf_mean_pooling_in_input_order(embedder, hf):
    texts = _sentences()
    lengths = [len(ids) for ids in embedder.tokenize(texts)]
    assert len(texts) == 50 and len(set(lengths)) > 5  # mixed lengths: the batches are reordered
    ours = embedder.embed(texts)
    assert ours.shape == (50, 384) and ours.dtype == np.float32
    diff = float(np.max(np.abs(ours - _hf_embeddings(hf, texts))))
    print(f"SentenceEmbedder vs HF + mean pooling + L2 normalisation on 50 sentences: max |diff| = {diff:.2e}")
    assert diff <= 1e-5


def test_long_text_is_truncated_to_the_model_length_keeping_special_tokens(embedder, hf):
    long_text = " ".join(_sentences(200))
    tokenizer, _ = hf
    ids = embedder.tokenize([long_text, "short"])
    assert ids[0] == tokenizer(long_text, truncation=True, max_length=512)["input_ids"]
    assert ids[1] == tokenizer("short")["input_ids"] and len(ids[0]) == 512
    one_row = SentenceEmbedder(embedder.pretrained, embedder.tokenizer, embedder.max_length, batch_size=1)
    np.testing.assert_allclose(one_row.embed([long_text]), _hf_embeddings(hf, [long_text]), atol=1e-5, rtol=0)


def test_compiles_at_most_once_per_length_bucket(embedder):
    assert length_buckets(512) == (16, 32, 64, 128, 256, 512) and length_buckets(100) == (16, 32, 64, 100)
    embedder.embed(_sentences(40))
    sizes = embedder._embed._cache_size()
    embedder.embed(list(reversed(_sentences(40))) + ["One more line, of a length seen before."])
    assert embedder._embed._cache_size() == sizes <= len(embedder.buckets)


def test_pooling_other_than_mean_is_refused_by_name(minilm_dir, tmp_path):
    folder = tmp_path / "cls_pooled"
    shutil.copytree(minilm_dir, folder)
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(ConversionError, match="pooling pooling_mode_cls_token is not supported"):
        SentenceEmbedder.load(folder)
