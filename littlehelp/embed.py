"""Sentence embeddings from an imported BERT folder (sentence-transformers layout, e.g. all-MiniLM-L6-v2).

    embedder = SentenceEmbedder.load(pretrained.ensure("minilm_l6"))
    vectors = embedder.embed(["A sentence.", "Another one."])   # [2, 384] float32, unit length

Texts are tokenised with the folder's `tokenizer.json` (the `tokenizers` library; the file's own padding
and truncation are turned off), each truncated to the model's maximum length with its special tokens
kept, then embedded in batches of similar lengths: sorted by length, each batch padded to the smallest
of a few length buckets that holds it (and to `batch_size` rows), so at most one compile per bucket.
An embedding is the mean of the last hidden states over the text's tokens, L2-normalised. The folder's
`1_Pooling/config.json` must ask for mean pooling; any other mode is refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Encoding, Tokenizer

from littlehelp.features import ENCODER_INPUT_TOKENS, ENCODER_SEGMENT_IDS
from littlehelp.models import BertConfig, convert
from littlehelp.models.convert import TOKENIZER_FILE, ConversionError, Pretrained

POOLING_FILE = "1_Pooling/config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
MIN_BUCKET = 16


def check_mean_pooling(directory: Path) -> None:
    """Raises ConversionError unless the folder's pooling config asks for mean pooling alone."""
    path = directory / POOLING_FILE
    if not path.is_file():
        raise ConversionError(f"{directory} has no {POOLING_FILE}: its pooling is unknown")
    modes = {key: value for key, value in json.loads(path.read_text()).items() if key.startswith("pooling_mode_")}
    others = sorted(key for key, on in modes.items() if on and key != "pooling_mode_mean_tokens")
    if others or not modes.get("pooling_mode_mean_tokens"):
        raise ConversionError(
            f"{path}: pooling {', '.join(others) or 'without pooling_mode_mean_tokens'} "
            "is not supported (only pooling_mode_mean_tokens)"
        )


def max_length_of(directory: Path, max_position_embeddings: int) -> int:
    """The model's maximum tokens per text: its position table, or less where tokenizer_config.json says so."""
    path = directory / TOKENIZER_CONFIG_FILE
    limit = json.loads(path.read_text()).get("model_max_length") if path.is_file() else None
    return min(max_position_embeddings, int(limit)) if isinstance(limit, (int, float)) else max_position_embeddings


def length_buckets(max_length: int) -> tuple[int, ...]:
    """Padded lengths: powers of two from MIN_BUCKET below `max_length`, then `max_length` itself."""
    buckets, size = [], MIN_BUCKET
    while size < max_length:
        buckets.append(size)
        size *= 2
    return (*buckets, max_length)


def bert_config(pretrained: Pretrained) -> BertConfig:
    """`pretrained`'s config, or ConversionError when it is not a BERT encoder."""
    if pretrained.family != "bert" or not isinstance(pretrained.config, BertConfig):
        raise ConversionError(f"{pretrained.source}: a {pretrained.family} model, not a BERT encoder")
    return pretrained.config


def mean_pooled(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """L2-normalised mean of `hidden` [b, l, d] over the positions where `mask` [b, l] is 1."""
    mask = mask.astype(jnp.float32)[..., None]
    mean = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


class SentenceEmbedder:
    """Mean-pooled, L2-normalised BERT sentence embeddings of lists of texts (see the module docstring)."""

    def __init__(self, pretrained: Pretrained, tokenizer: Tokenizer, max_length: int, batch_size: int = 64):
        self.config = bert_config(pretrained)
        self.pretrained, self.tokenizer = pretrained, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.buckets = length_buckets(max_length)
        self._params = jax.device_put(pretrained.params)
        self._embed = jax.jit(self._embed_batch)

    @classmethod
    def load(cls, path: str | Path, batch_size: int = 64) -> SentenceEmbedder:
        """The embedder of an HF folder with config.json, safetensors, tokenizer.json and 1_Pooling/."""
        directory = Path(path).expanduser()
        check_mean_pooling(directory)
        pretrained = convert.load(directory)
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        max_length = max_length_of(directory, bert_config(pretrained).max_position_embeddings)
        return cls(pretrained, tokenizer, max_length, batch_size)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text with its special tokens, truncated to `max_length` tokens in all."""
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(False)
        return [
            self._truncated(encoding, room).ids
            for encoding in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ]

    def _truncated(self, encoding: Encoding, room: int) -> Encoding:
        encoding.truncate(room)
        return self.tokenizer.post_process(encoding)

    def _embed_batch(self, params: object, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        batch = {ENCODER_INPUT_TOKENS: tokens, ENCODER_SEGMENT_IDS: mask}
        return mean_pooled(self.pretrained.model.hidden_states(params, batch), mask)

    def _padded(self, rows: list[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """`rows` as [batch_size, bucket] tokens and mask, padded with the pad id (mask 0)."""
        length = next(bucket for bucket in self.buckets if bucket >= max(map(len, rows)))
        tokens = np.full((self.batch_size, length), self.config.pad_token_id, np.int32)
        mask = np.zeros((self.batch_size, length), np.int32)
        for row, ids in enumerate(rows):
            tokens[row, : len(ids)], mask[row, : len(ids)] = ids, 1
        return tokens, mask

    def batches(self, ids: Sequence[Sequence[int]]) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
        """(indices into `ids`, tokens, mask) of each padded batch, shortest texts first."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            yield chosen, *self._padded([ids[i] for i in chosen])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings [len(texts), emb] float32, in the order of `texts`."""
        ids = self.tokenize(texts)
        out = np.zeros((len(ids), self.config.emb_dim), np.float32)
        for chosen, tokens, mask in self.batches(ids):
            out[chosen] = np.asarray(self._embed(self._params, tokens, mask))[: len(chosen)]
        return out
