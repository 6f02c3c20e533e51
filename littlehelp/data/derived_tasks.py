"""Tasks derived from a registered Task: some splits replaced by streams built from the source's own.

Selection stages (a chosen subset of a split) and the teacher-label store (splits with stored labels
beside each example) register their result this way: the new Task has no preprocessing of
its own, its output features are the source's, and every other split reads the source unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import seqio
import tensorflow as tf


def source_split(task: seqio.Task, split: str, sequence_length: Mapping[str, int] | None) -> tf.data.Dataset:
    """`task`'s preprocessed `split` in source order, one epoch (at `sequence_length`, None: untrimmed)."""
    return task.get_dataset(
        sequence_length=None if sequence_length is None else dict(sequence_length),
        split=split,
        shuffle=False,
        num_epochs=1,
        try_in_mem_cache=False,
    )


# Features that the replaced splits of a derived Task hold beyond its output features (e.g. an
# example's weight, stored teacher labels): Task name -> {feature: spec}, as registered.
_EXTRA_FEATURES: dict[str, dict[str, tf.TensorSpec]] = {}


def extra_features(task: str) -> dict[str, tf.TensorSpec]:
    """The features beyond its output features that Task `task`'s replaced splits hold (none for a
    Task not derived here): what the feature converters carry, known without reading the data."""
    return dict(_EXTRA_FEATURES.get(task, {}))


def register_with_splits(
    name: str,
    source: seqio.Task,
    replacements: Mapping[str, Callable[[], tf.data.Dataset]],
    sequence_length: Mapping[str, int] | None,
) -> seqio.Task:
    """Registers Task `name` (replacing one of that name): each `replacements[split]()` as that split,
    the source's other splits read from the source at `sequence_length`; no preprocessing of its own.
    The replacements' features beyond the source's output features are recorded (`extra_features`)."""

    def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one shard; seqio shuffles examples
        if split in replacements:
            return replacements[split]()
        return source_split(source, split, sequence_length)

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    _EXTRA_FEATURES[name] = {
        feature: spec
        for replacement in replacements.values()
        for feature, spec in replacement().element_spec.items()
        if feature not in source.output_features and not feature.endswith("_pretokenized")
    }
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(source.splits), num_input_examples=None),
        preprocessors=[],
        output_features=source.output_features,
    )
