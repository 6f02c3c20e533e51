"""Built-in seqio Tasks.

- `docstrings_lm`: decoder LM over the standard library's docstrings (byte vocabulary).
- `docstrings_prefix_lm`: encoder-decoder: the first half of a docstring in, the second half out.

Both need nothing but Python itself, so tests and the demo run on any machine.
"""

from __future__ import annotations

import functools

import seqio
import tensorflow as tf

from littlehelp.data import corpus

BYTE_VOCABULARY = seqio.ByteVocabulary(extra_ids=0)


def _docstrings_dataset(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory shard; seqio shuffles examples
    return tf.data.Dataset.from_tensor_slices({"text": list(corpus.stdlib_docstrings(split))})


def _split_in_half(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """{"text"} -> {"inputs": first half, "targets": second half}, cut at a space near the middle."""

    def split(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        words = tf.strings.split(example["text"])
        half = tf.size(words) // 2
        return {
            "inputs": tf.strings.reduce_join(words[:half], separator=" "),
            "targets": tf.strings.reduce_join(words[half:], separator=" "),
        }

    return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)


def _register(name: str, preprocessors: list, features: dict[str, seqio.Feature]) -> None:
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_docstrings_dataset, splits=["train", "validation"]),
        preprocessors=preprocessors + [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features=features,
    )


_register(
    "docstrings_lm",
    [functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"})],
    {"targets": seqio.Feature(BYTE_VOCABULARY, add_eos=True)},
)
_register(
    "docstrings_prefix_lm",
    [_split_in_half],
    {
        "inputs": seqio.Feature(BYTE_VOCABULARY, add_eos=True),
        "targets": seqio.Feature(BYTE_VOCABULARY, add_eos=True),
    },
)
