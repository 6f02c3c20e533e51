"""SoftSRV's data from any file of examples, with no per-domain code.

A file holds one example per line, or JSON Lines with a "text" field (`.jsonl`, or a first line
that is a JSON object); blank lines are skipped. `check_disjoint` refuses files that share an example
(training, validation and test examples must be apart). `register_examples_task` makes a seqio Task
of such examples by split, with the two tokenisations SoftSRV's objective reads:
- "inputs": the example in the sentence embedder's vocabulary with its special tokens, exactly the
  ids `littlehelp.embed.SentenceEmbedder.tokenize` gives (so the context vector the objective pools
  in the step is the embedder's own embedding of the example);
- "targets": the example in the frozen LM's vocabulary, EOS appended.
The encoder-decoder feature converter (unpacked) turns them into the objective's batches.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import numpy as np
import seqio
import tensorflow as tf

from littlehelp.config import ConfigError
from littlehelp.data import pretrained
from littlehelp.data.hf_vocab import TokenizerVocabulary
from littlehelp.embed import SentenceEmbedder
from littlehelp.features import INPUTS, TARGETS

MIN_EXAMPLES = 4


def _texts_of(path: Path, lines: list[str]) -> list[str]:
    """The examples of a file's non-blank lines: the lines themselves, or their JSON "text" fields."""
    if not (path.suffix == ".jsonl" or lines[0].lstrip().startswith("{")):
        return lines
    texts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: line {number} is not JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ConfigError(f"{path}: line {number} has no string field 'text'")
        texts.append(record["text"])
    return texts


def read_examples(path: str | Path, min_examples: int = MIN_EXAMPLES) -> list[str]:
    """The examples in `path` (see the module docstring); a missing, unreadable, empty or too short
    file is refused in one line naming it."""
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read examples from {path}: {type(error).__name__}: {error}") from None
    if not lines:
        raise ConfigError(f"{path} holds no examples (every line is blank)")
    texts = [text for text in _texts_of(path, lines) if text.strip()]
    if len(texts) < min_examples:
        raise ConfigError(f"{path} holds {len(texts)} examples; SoftSRV needs at least {min_examples}")
    return texts


def example_key(text: str) -> str:
    """What two examples must differ in to count as different: their words (whitespace collapsed)."""
    return " ".join(text.split())


def check_disjoint(files: Sequence[tuple[str | Path, Sequence[str]]]) -> None:
    """Refuses, in one line naming both files and an example, any two of `files` [(path, examples)] that
    share an example (compared with whitespace collapsed)."""
    keyed = [(path, {example_key(text): text for text in texts}) for path, texts in files]
    for index, (first, first_keys) in enumerate(keyed):
        for second, second_keys in keyed[index + 1 :]:
            shared = [text for key, text in first_keys.items() if key in second_keys]
            if shared:
                example = shared[0] if len(shared[0]) <= 60 else shared[0][:57] + "..."
                raise ConfigError(
                    f"{first} and {second} share {len(shared)} example(s), e.g. {example!r}: "
                    "training, validation and test examples must be disjoint"
                )


EMBEDDER_IDS = "embedder_ids"  # the source's pre-tokenised "inputs", renamed after seqio tokenizes "targets"


def register_examples_task(
    name: str, splits: Mapping[str, Sequence[str]], lm_vocabulary: seqio.Vocabulary, embedder: SentenceEmbedder | None
) -> str:
    """Registers Task `name` (replacing one of that name) over `splits` {split: texts}; returns `name`.

    Without an `embedder` the Task has "targets" alone: a decoder LM task (fine-tuning on examples).
    """

    def rows(texts: Sequence[str]) -> list[dict[str, Any]]:
        if embedder is None:
            return [{TARGETS: text} for text in texts]
        return [
            {EMBEDDER_IDS: np.asarray(ids, np.int32), TARGETS: text}
            for ids, text in zip(embedder.tokenize(texts), texts)
        ]

    stored = {split: rows(texts) for split, texts in splits.items()}
    signature = {TARGETS: tf.TensorSpec([], tf.string)}
    features = {TARGETS: seqio.Feature(lm_vocabulary, add_eos=True)}
    preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    if embedder is not None:
        signature[EMBEDDER_IDS] = tf.TensorSpec([None], tf.int32)
        features[INPUTS] = seqio.Feature(_embedder_vocabulary(embedder), add_eos=False)
        preprocessors.insert(
            1, functools.partial(seqio.preprocessors.rekey, key_map={INPUTS: EMBEDDER_IDS, TARGETS: TARGETS})
        )

    def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory shard; seqio shuffles examples
        return tf.data.Dataset.from_generator(lambda: iter(stored[split]), output_signature=signature)

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(splits), num_input_examples=None),
        preprocessors=preprocessors,
        output_features=features,
    )
    return name


def _embedder_vocabulary(embedder: SentenceEmbedder) -> seqio.Vocabulary:
    """The embedder's tokenizer as a seqio vocabulary (decoding and the feature's vocabulary size)."""
    return TokenizerVocabulary(embedder.tokenizer, source="sentence embedder")


@gin.configurable(module="softsrv")
def examples_task(
    train_file: str = gin.REQUIRED,
    eval_file: str = gin.REQUIRED,
    lm_vocabulary: seqio.Vocabulary = gin.REQUIRED,
    embedder: str | None = "minilm_l6",
    name: str = "softsrv_examples",
) -> str:
    """gin entry point (`TASK = @softsrv.examples_task()`): registers the examples of `train_file` as the
    'train' split and those of `eval_file` as 'validation', tokenised for the LM and for the sentence
    embedder (a pretrained model's name, `littlehelp.data.pretrained`, or an HF folder; None: a plain
    LM task); returns the Task's name. Bad files are refused before any model is read."""
    splits = {"train": read_examples(train_file), "validation": read_examples(eval_file)}
    if embedder is None:
        return register_examples_task(name, splits, lm_vocabulary, None)
    folder = pretrained.ensure(embedder) if embedder in pretrained.PACKAGES else Path(embedder)
    return register_examples_task(name, splits, lm_vocabulary, SentenceEmbedder.load(folder))
