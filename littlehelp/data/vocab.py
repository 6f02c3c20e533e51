"""The default vocabulary: a sentencepiece unigram model trained on the default corpus at set-up.

T5's conventions: pad 0, EOS 1, UNK 2, no BOS, and 100 sentinel ids appended at the top
(`<extra_id_0>` is the last id). Byte fallback keeps any text, code included, encodable without UNK.
The model is cached beside the corpus with a `.sha256` file written after it: a model without one
is partial and retrained; one whose hash differs is reported by name, and so is one that cannot be
loaded (`load_vocabulary`).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import seqio
import tensorflow as tf
from google.protobuf import message

from littlehelp.data import corpus
from littlehelp.errors import LittlehelpError

VOCAB_PIECES = 8000  # sentencepiece pieces, specials and byte pieces included
NUM_SENTINELS = 100
MODEL_VOCAB_SIZE = 8192  # VOCAB_PIECES + NUM_SENTINELS, padded to a multiple of 128 for the model
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# What loading a vocabulary file raises: an unreadable file (tf.io.gfile), a corrupt protocol
# buffer, or a model sentencepiece refuses.
_LOAD_ERRORS = (tf.errors.OpError, message.Error, RuntimeError)


class VocabularyError(LittlehelpError):
    """A vocabulary that cannot be loaded; the message names its file."""


def train_sentencepiece(lines: Iterable[str], model_path: Path, vocab_size: int) -> Path:
    """Trains a unigram sentencepiece model with T5's special ids on `lines`; writes `model_path`."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=model_path.parent, delete=False, suffix=".tmp") as staging:
        staging.write(model.getvalue())
    os.replace(staging.name, model_path)
    return model_path


def _checksum_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".sha256")


def ensure_sentencepiece(root: Path | None = None, vocab_size: int = VOCAB_PIECES) -> Path:
    """The default corpus's sentencepiece model file, trained on its training split when absent."""
    directory = corpus.ensure_shakespeare(root)
    model_path = directory / f"spm_unigram_{vocab_size}.model"
    checksum = _checksum_path(model_path)
    if not checksum.is_file():
        lines = (
            line for text in corpus.shakespeare_documents("train", root) for line in text.splitlines() if line.strip()
        )
        train_sentencepiece(lines, model_path, vocab_size)
        checksum.write_text(corpus.sha256_of(model_path), encoding="utf-8")
    elif not model_path.is_file() or corpus.sha256_of(model_path) != checksum.read_text(encoding="utf-8").strip():
        raise corpus.CorpusError(
            f"{model_path} is missing or corrupt (SHA-256 differs from {checksum}); delete both files to retrain it"
        )
    return model_path


class DefaultVocabulary(seqio.SentencePieceVocabulary):
    """The cached default sentencepiece model with 100 sentinels, built on first use."""

    def __init__(self, extra_ids: int = NUM_SENTINELS):
        super().__init__("", extra_ids=extra_ids)

    def _model_context(self):
        if not self._model:
            self._sentencepiece_model_file = str(ensure_sentencepiece())
        return super()._model_context()

    def __eq__(self, other) -> bool:
        return isinstance(other, DefaultVocabulary) and other.extra_ids == self.extra_ids

    def __hash__(self) -> int:
        return hash((DefaultVocabulary, self.extra_ids))


def default_vocabulary() -> seqio.SentencePieceVocabulary:
    """The default vocabulary: VOCAB_PIECES + NUM_SENTINELS ids, sentinels at the top."""
    return DefaultVocabulary()


def load_vocabulary(vocabulary: seqio.Vocabulary) -> None:
    """Loads `vocabulary` now (seqio loads lazily, often inside a traced tf.data function).

    Raises `VocabularyError` naming the file when it cannot be loaded (with how to rebuild the
    default vocabulary's); a `LittlehelpError` such as a checksum mismatch propagates as it is.
    """
    try:
        _ = vocabulary.vocab_size  # loads a lazily loaded vocabulary
    except LittlehelpError:
        raise
    except _LOAD_ERRORS as error:
        path = getattr(vocabulary, "sentencepiece_model_file", None) or type(vocabulary).__name__
        hint = "; delete it and its .sha256 to retrain" if isinstance(vocabulary, DefaultVocabulary) else ""
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise VocabularyError(f"vocabulary {path} cannot be loaded: {reason}{hint}") from None
