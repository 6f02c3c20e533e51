"""SoftSRV's data: files of lines or JSONL read as examples and refused by name when bad; the registered
Task's "inputs" are the real MiniLM's own ids, so the context vector the objective pools from a batch
equals `SentenceEmbedder.embed` of the example, and its "targets" are the LM's ids + EOS. The contexts
soft prompts sample from are the training split's embeddings, never a validation example's."""

import json

import jax
import numpy as np
import pytest
import seqio

from littlehelp.config import ConfigError
from littlehelp.data import pipeline, vocab
from littlehelp.embed import SentenceEmbedder
from littlehelp.models import DecoderConfig, build_model
from softsrv import synthesis
from softsrv.data import read_examples, register_examples_task
from softsrv.objective import SoftPromptObjective
from softsrv.prompts import NonContextualPrompt

TEXTS = [
    "def add(a, b):\n    return a + b",
    "To be, or not to be: that is the question.",
    "SELECT name FROM users WHERE id = 3;",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def embedder(minilm_dir):
    return SentenceEmbedder.load(minilm_dir)


def test_lines_and_jsonl_are_read_as_examples(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\nthree\nfour\n", encoding="utf-8")
    assert read_examples(tmp_path / "a.txt") == ["one", "two", "three", "four"]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS)))
    assert read_examples(tmp_path / "b.jsonl") == TEXTS


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read examples from .*missing.txt: FileNotFoundError"),
        ("\n \n", "holds no examples"),
        ("one\ntwo\n", "holds 2 examples; SoftSRV needs at least 4"),
        ('{"text": "a"}\n{"txt": "b"}\n', "line 2 has no string field 'text'"),
        ('{"text": "a"}\n{not json\n', "line 2 is not JSON"),
    ],
)
def test_bad_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "missing.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        read_examples(path)


def test_the_context_pooled_from_a_batch_is_the_embedders_embedding(embedder):
    lm_vocabulary = vocab.default_vocabulary()
    register_examples_task("softsrv_test_examples", {"train": TEXTS}, lm_vocabulary, embedder)
    data = pipeline.DatasetConfig(
        "softsrv_test_examples", {"inputs": 32, "targets": 48}, 4, pack=False, shuffle=False, repeat=False
    )
    features = next(pipeline.host_dataset(data).as_numpy_iterator())
    lm = build_model(
        DecoderConfig(vocab_size=8192, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
    )
    objective = SoftPromptObjective(NonContextualPrompt(2, 16), lm, embedder.pretrained.model)
    context = jax.jit(objective.context)({"embedder": embedder.pretrained.params}, features["encoder_input_tokens"])
    np.testing.assert_allclose(context, embedder.embed(TEXTS), rtol=1e-4, atol=1e-5)
    targets = [list(lm_vocabulary.encode(t)) + [1] for t in TEXTS]
    for row, expected in zip(features["decoder_target_tokens"], targets):
        assert list(row[: len(expected)]) == expected and not row[len(expected) :].any()
    assert seqio.get_mixture_or_task("softsrv_test_examples").output_features["targets"].add_eos


def test_sampling_contexts_are_the_training_examples_embeddings_never_a_scored_one(embedder):
    register_examples_task(
        "softsrv_test_splits", {"train": TEXTS[:2], "validation": TEXTS[2:]}, vocab.default_vocabulary(), embedder
    )
    lm = build_model(
        DecoderConfig(vocab_size=8192, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
    )
    objective = SoftPromptObjective(NonContextualPrompt(2, 16), lm, embedder.pretrained.model)
    z = synthesis.contexts(
        objective, {"embedder": embedder.pretrained.params}, "softsrv_test_splits", {"inputs": 32, "targets": 48}
    )
    np.testing.assert_allclose(z, embedder.embed(TEXTS[:2]), rtol=1e-4, atol=1e-5)
    scored = embedder.embed(TEXTS[2:])
    assert np.abs(z[:, None] - scored[None]).max(-1).min() > 0.05  # no context is a validation example's


def test_context_rows_use_every_context_once_before_any_twice():
    rows = synthesis.context_rows(3, 7, seed=1)
    assert sorted(rows[:3]) == sorted(rows[3:6]) == [0, 1, 2] and rows[6] in (0, 1, 2)
    assert len({tuple(synthesis.context_rows(5, 5, seed)) for seed in range(4)}) > 1  # the seed sets the order
