"""Tasks derived from a registered Task: one split replaced by a stream built from the source's own.

Selection stages (a chosen subset of the split) and the teacher-label store (the split with stored
labels beside each example) register their result this way: the new Task has no preprocessing of
its own, its output features are the source's, and every split but the replaced one reads the
source unchanged.
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


def register_with_split(
    name: str,
    source: seqio.Task,
    replaced_split: str,
    replacement: Callable[[], tf.data.Dataset],
    sequence_length: Mapping[str, int] | None,
) -> seqio.Task:
    """Registers Task `name` (replacing one of that name): `replacement()` as its `replaced_split`, the
    source's other splits read from the source at `sequence_length`; no preprocessing of its own."""

    def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one shard; seqio shuffles examples
        if split != replaced_split:
            return source_split(source, split, sequence_length)
        return replacement()

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(source.splits), num_input_examples=None),
        preprocessors=[],
        output_features=source.output_features,
    )
