"""Built-in seqio Tasks and Mixtures (registered on import).

Per text source `<name>` (`shakespeare`, the default corpus; `code`, the standard library's .py
files; `c4`, TFDS c4/en), with the default sentencepiece vocabulary (8000 pieces + 100 sentinels):
- `<name>_span_corruption`: T5 span corruption (encoder-decoder; noise density 0.15, mean span 3);
- `<name>_lm`: decoder LM over the concatenated token stream;
- `<name>_prefix_lm`: encoder-decoder, a random prefix of each chunk in, the rest out.
Mixtures: `shakespeare_code_span_corruption` and `shakespeare_code_lm` (3:1).

Offline fallbacks with a byte vocabulary, needing nothing but Python: `docstrings_lm` and
`docstrings_prefix_lm` (the standard library's docstrings, first half in, second half out).

`register_text_tasks` registers the same three tasks for any other source and vocabulary;
`text_task` (gin) does it for a built-in source and a model's own vocabulary (an imported model's):
`TASK = @tasks.text_task()` with `tasks.text_task.name = 'shakespeare_lm'` gives
`<vocabulary_name>.shakespeare_lm`; `text_mixture` does the same for the Shakespeare + code mixture
(`TASK = @tasks.text_mixture()`, `tasks.text_mixture.objective = 'lm'`:
`<vocabulary_name>.shakespeare_code_lm`, rates MIXTURE_RATES).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from littlehelp.data import corpus, preprocessors, vocab
from littlehelp.features import INPUTS, TARGETS

BYTE_VOCABULARY = seqio.ByteVocabulary(extra_ids=0)
TEXT_KEY = "text"
SHUFFLE_BUFFER_SIZE = 4096
C4_TFDS_NAME = "c4/en:3.1.0"
MIXTURE_RATES = {"shakespeare": 3.0, "code": 1.0}


class TextSource(seqio.DataSource):
    """{"text"} examples from `documents_fn(split)`, shuffled by seed and sharded in memory.

    Each host keeps every num_shards-th document of the (shuffled) order, so hosts read disjoint
    shards of the same deterministic order.
    """

    def __init__(self, documents_fn: Callable[[str], Sequence[str]], splits: Sequence[str] = corpus.SPLITS):
        super().__init__(splits=splits)
        self._documents_fn = documents_fn

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        """The documents of `split` as a dataset of {"text": string}."""
        del sequence_length, use_cached, num_epochs  # applied by the Task
        documents = self._documents_fn(split)
        order = np.random.default_rng(seed).permutation(len(documents)) if shuffle else np.arange(len(documents))
        if shard_info is not None:
            order = order[shard_info.index :: shard_info.num_shards]
        texts = np.array([documents[i] for i in order], dtype=object)
        return tf.data.Dataset.from_tensor_slices({TEXT_KEY: tf.constant(texts, tf.string)})


def _head(text_key: str) -> list:
    """Text -> tokenized "targets" (documents), then the cache boundary: chunking and noise follow it."""
    return [
        functools.partial(seqio.preprocessors.rekey, key_map={TARGETS: text_key}),
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
        seqio.CacheDatasetPlaceholder(),
    ]


def register_text_tasks(
    name: str,
    source: seqio.DataSource,
    vocabulary: seqio.Vocabulary,
    text_key: str = TEXT_KEY,
    shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE,
) -> list[str]:
    """Registers `<name>_span_corruption`, `<name>_lm` and `<name>_prefix_lm`; returns the names.

    Names already registered are left as they are.
    """
    both = {INPUTS: seqio.Feature(vocabulary, add_eos=True), TARGETS: seqio.Feature(vocabulary, add_eos=True)}
    tasks = {
        f"{name}_span_corruption": ([preprocessors.span_corruption, seqio.preprocessors.append_eos_after_trim], both),
        f"{name}_prefix_lm": ([preprocessors.prefix_lm, seqio.preprocessors.append_eos_after_trim], both),
        f"{name}_lm": ([preprocessors.lm_chunks], {TARGETS: seqio.Feature(vocabulary, add_eos=False)}),
    }
    for task_name, (tail, features) in tasks.items():
        if task_name not in seqio.TaskRegistry.names():
            seqio.TaskRegistry.add(
                task_name,
                source=source,
                preprocessors=_head(text_key) + tail,
                output_features=features,
                shuffle_buffer_size=shuffle_buffer_size,
            )
    return list(tasks)


def _docstrings_dataset(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory shard; seqio shuffles examples
    return tf.data.Dataset.from_tensor_slices({TEXT_KEY: list(corpus.stdlib_docstrings(split))})


def _split_in_half(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """{"text"} -> {"inputs": first half, "targets": second half}, cut at a space near the middle."""

    def split(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        words = tf.strings.split(example[TEXT_KEY])
        half = tf.size(words) // 2
        return {
            INPUTS: tf.strings.reduce_join(words[:half], separator=" "),
            TARGETS: tf.strings.reduce_join(words[half:], separator=" "),
        }

    return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)


def _register_docstring_task(name: str, head: list, features: dict[str, seqio.Feature]) -> None:
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_docstrings_dataset, splits=list(corpus.SPLITS)),
        preprocessors=head + [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features=features,
    )


def _register_mixtures() -> None:
    for objective in ("span_corruption", "lm"):
        name = f"shakespeare_code_{objective}"
        if name not in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.add(name, [(f"{source}_{objective}", rate) for source, rate in MIXTURE_RATES.items()])


def _text_sources() -> dict[str, seqio.DataSource]:
    return {
        "shakespeare": TextSource(corpus.shakespeare_documents),
        "code": TextSource(corpus.stdlib_code),
        "c4": seqio.TfdsDataSource(tfds_name=C4_TFDS_NAME, splits=["train", "validation"]),
    }


TEXT_OBJECTIVES = ("span_corruption", "prefix_lm", "lm")


@gin.configurable(module="tasks")
def text_task(
    name: str = gin.REQUIRED, vocabulary: seqio.Vocabulary = gin.REQUIRED, vocabulary_name: str = gin.REQUIRED
) -> str:
    """Registers built-in text task `name` (`<source>_<objective>`, e.g. 'code_lm') tokenised with
    `vocabulary` as `<vocabulary_name>.<name>` and returns that name."""
    sources = _text_sources()
    source, _, objective = name.partition("_")
    if source not in sources or objective not in TEXT_OBJECTIVES:
        known = [f"{s}_{o}" for s in sources for o in TEXT_OBJECTIVES]
        raise ValueError(f"tasks.text_task.name={name!r} is not a built-in text task; choose one of {', '.join(known)}")
    register_text_tasks(f"{vocabulary_name}.{source}", sources[source], vocabulary)
    return f"{vocabulary_name}.{name}"


@gin.configurable(module="tasks")
def text_mixture(
    objective: str = gin.REQUIRED, vocabulary: seqio.Vocabulary = gin.REQUIRED, vocabulary_name: str = gin.REQUIRED
) -> str:
    """Registers the Shakespeare + code mixture of `objective` (one of TEXT_OBJECTIVES, rates MIXTURE_RATES)
    tokenised with `vocabulary` as `<vocabulary_name>.shakespeare_code_<objective>` and returns that name."""
    if objective not in TEXT_OBJECTIVES:
        raise ValueError(f"tasks.text_mixture.objective={objective!r} is not one of {', '.join(TEXT_OBJECTIVES)}")
    rates = [
        (text_task(f"{source}_{objective}", vocabulary, vocabulary_name), rate)
        for source, rate in MIXTURE_RATES.items()
    ]
    name = f"{vocabulary_name}.{'_'.join(MIXTURE_RATES)}_{objective}"
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, rates)
    return name


def _register_all() -> None:
    default = vocab.default_vocabulary()
    for name, source in _text_sources().items():
        register_text_tasks(name, source, default)
    _register_mixtures()
    _register_docstring_task(
        "docstrings_lm",
        [functools.partial(seqio.preprocessors.rekey, key_map={TARGETS: TEXT_KEY})],
        {TARGETS: seqio.Feature(BYTE_VOCABULARY, add_eos=True)},
    )
    _register_docstring_task(
        "docstrings_prefix_lm",
        [_split_in_half],
        {
            INPUTS: seqio.Feature(BYTE_VOCABULARY, add_eos=True),
            TARGETS: seqio.Feature(BYTE_VOCABULARY, add_eos=True),
        },
    )


_register_all()
