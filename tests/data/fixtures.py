"""Helpers for the data tests: generated text tasks (no download) and the real corpus when set up."""

import numpy as np
import pytest
import seqio

from littlehelp.data import corpus, tasks

# Byte ids are 3..258; the 100 sentinels are 358 (<extra_id_0>) down to 259, so they never collide.
BYTE_SENTINEL_VOCABULARY = seqio.ByteVocabulary(extra_ids=100)
WORDS = "the of and to a in that is was he for it with as his on be at by had not are but from or".split()


def generated_documents(split: str, count: int = 300) -> tuple[str, ...]:
    """Deterministic random-word documents of varied length (a different stream per split)."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    return tuple(" ".join(rng.choice(WORDS, size=rng.integers(5, 400))) for _ in range(count))


def register_generated_tasks() -> str:
    """Registers `generated_{span_corruption,lm,prefix_lm}` (byte vocabulary + 100 sentinels); returns "generated"."""
    source = tasks.TextSource(generated_documents)
    tasks.register_text_tasks("generated", source, BYTE_SENTINEL_VOCABULARY, shuffle_buffer_size=64)
    return "generated"


requires_corpus = pytest.mark.skipif(
    not corpus.shakespeare_ready(), reason="data cache not set up (run scripts/setup_data.py or make test)"
)
