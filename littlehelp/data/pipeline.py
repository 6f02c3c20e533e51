"""seqio Task -> feature converter -> global batches -> this process's rows -> global sharded jax.Arrays.

Batches are a pure function of (task, seed, batch index), whatever the number of processes: a
resumed run asks for the batches from its `ResumePoint` on and gets exactly those an uninterrupted run
would have seen next, also when it resumes on another host or device count. It gets there at once from
the tf.data iterator's saved state (written with each checkpoint), or else by replaying the batches
before it.

Every process reads the same global stream (the whole split, not a shard of it), batches it at the
global batch size and keeps only its own rows (`process_rows`), those that
`jax.make_array_from_process_local_data` places on its devices. The trade-off: each host tokenises
and packs every example of every global batch, so its input work grows with the global batch, not
with its share of it (`scripts/bench_input.py` measures what one host can feed); in exchange the
data never depends on how the job was launched.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
from absl import logging
from google.protobuf.message import DecodeError
from jax.sharding import Mesh

from littlehelp import checkpoints, partitioning
from littlehelp.config import ConfigError
from littlehelp.data import preprocessors, vocab
from littlehelp.features import TARGETS, TEACHER_IDS, TEACHER_LOG_PROBS, TEACHER_LOG_REST
from littlehelp.objectives import EXAMPLE_WEIGHTS

EXAMPLE_WEIGHT = "example_weight"  # optional Task feature: one positive float32 weight per example

# seqio packs only 1-D int32 sequences and keeps each one's nonzero entries, so a carried feature
# travels as int32 sequences with no zero in them. seqio packs in batches of max(lengths) examples, so
# the top-k slots travel in groups: a group of g slots is one sequence of g entries per target token,
# with g at most MAX_CARRIED_LENGTH / length (a packing batch of at most that many examples).
_WEIGHT_BITS = "example_weight_bits"  # the weight's float32 bits (a positive float's bits are nonzero)
_TEACHER_LOG_REST_BITS = "teacher_log_rest_bits"  # the float16 log rest's bits | MARKER
MAX_CARRIED_LENGTH = 2048


def _slot_groups(top_k: int, length: int) -> list[tuple[int, int]]:
    """The (first, last + 1) slots of each group of top-k slots carried as one sequence."""
    size = max(1, min(top_k, MAX_CARRIED_LENGTH // length))
    return [(start, min(start + size, top_k)) for start in range(0, top_k, size)]


def _group_keys(group: int) -> tuple[str, str]:
    """A slot group's carried sequences: each id + 1, and each float16 log-probability's bits | MARKER."""
    return f"teacher_id_plus_one_{group}", f"teacher_log_prob_bits_{group}"


_MARKER = 1 << 16  # above a float16's 16 bits: makes every encoded value nonzero
TEACHER_LABELS = (TEACHER_IDS, TEACHER_LOG_PROBS, TEACHER_LOG_REST)


def _float16_bits(values: tf.Tensor) -> tf.Tensor:
    """float16 `values` as nonzero int32 (their 16 bits, with `_MARKER` set), flattened."""
    bits = tf.cast(tf.bitcast(tf.cast(values, tf.float16), tf.uint16), tf.int32)
    return tf.reshape(tf.bitwise.bitwise_or(bits, _MARKER), [-1])


def _from_float16_bits(encoded: tf.Tensor) -> tf.Tensor:
    """Inverse of `_float16_bits` as float32 (padding, 0, reads as 0.0)."""
    bits = tf.cast(tf.bitwise.bitwise_and(encoded, 0xFFFF), tf.uint16)
    return tf.cast(tf.bitcast(bits, tf.float16), tf.float32)


def _carried_sequences(features: dict[str, tf.Tensor], weighted: bool, top_k: int, length: int) -> dict[str, tf.Tensor]:
    """The example with its weight and teacher labels as the int32 sequences that carry them through packing."""
    carried = {name: x for name, x in features.items() if name not in (EXAMPLE_WEIGHT, *TEACHER_LABELS)}
    if weighted:
        bits = tf.bitcast(tf.cast(features[EXAMPLE_WEIGHT], tf.float32), tf.int32)
        carried[_WEIGHT_BITS] = tf.fill(tf.shape(features[TARGETS]), bits)
    if top_k:
        ids = tf.cast(features[TEACHER_IDS], tf.int32) + 1
        for group, (start, end) in enumerate(_slot_groups(top_k, length)):
            id_key, bits_key = _group_keys(group)
            carried[id_key] = tf.reshape(ids[:, start:end], [-1])
            carried[bits_key] = _float16_bits(features[TEACHER_LOG_PROBS][:, start:end])
        carried[_TEACHER_LOG_REST_BITS] = _float16_bits(features[TEACHER_LOG_REST])
    return carried


# The mixin only ever comes before a seqio feature converter, whose methods it extends: type-checked as one.
_SeqioConverter: Any = seqio.FeatureConverter if TYPE_CHECKING else object


class _CarriesPerTokenFeatures(_SeqioConverter):
    """Feature-converter mixin for two optional kinds of Task feature, packed or not:

    - `example_weight` (a positive scalar, e.g. a selector's importance weight) yields model feature
      `example_weights` [length]: each target token carries its example's weight, padding 0;
    - stored teacher labels (`teacher_ids` [n, k] int32, `teacher_log_probs` [n, k] and
      `teacher_log_rest` [n] float16, one row per target token) yield the same three model features,
      `teacher_ids` and `teacher_log_probs` flattened to [length * k] (seqio packs rank-1 features
      only; `objectives.stored_teacher_labels` reshapes them) and `teacher_log_rest` [length], the
      log-probabilities as float32, under the target token they belong to; padding holds id 0 and
      log-probability 0.

    Tasks without them convert as in seqio.
    """

    _weighted = False
    _top_k = 0  # the stored labels' k (0: none)

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        self.carry(ds.element_spec)
        return super().__call__(ds, task_feature_lengths)

    def carry(self, task_features: Mapping[str, tf.TensorSpec]) -> None:
        """Sets which optional features this converter carries, from a Task's feature specs."""
        self._weighted = EXAMPLE_WEIGHT in task_features
        self._top_k = int(task_features[TEACHER_IDS].shape[-1]) if TEACHER_IDS in task_features else 0

    @property
    def MODEL_FEATURES(self) -> Mapping[str, seqio.FeatureConverter.FeatureSpec]:
        features = dict(super().MODEL_FEATURES)
        if self._weighted:
            features[EXAMPLE_WEIGHTS] = seqio.FeatureConverter.FeatureSpec(dtype=tf.float32)
        if self._top_k:
            features[TEACHER_IDS] = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
            features[TEACHER_LOG_PROBS] = seqio.FeatureConverter.FeatureSpec(dtype=tf.float32)
            features[TEACHER_LOG_REST] = seqio.FeatureConverter.FeatureSpec(dtype=tf.float32)
        return features

    def _carried_lengths(self, length: int) -> dict[str, int]:
        """The packed length of each carried sequence for `length` target tokens."""
        lengths = {_WEIGHT_BITS: length} if self._weighted else {}
        if self._top_k:
            for group, (start, end) in enumerate(_slot_groups(self._top_k, length)):
                lengths |= {key: length * (end - start) for key in _group_keys(group)}
            lengths[_TEACHER_LOG_REST_BITS] = length
        return lengths

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        if not (self._weighted or self._top_k):
            return super()._convert_features(ds, task_feature_lengths)
        weighted, top_k, length = self._weighted, self._top_k, task_feature_lengths[TARGETS]
        ds = ds.map(lambda x: _carried_sequences(x, weighted, top_k, length), num_parallel_calls=tf.data.AUTOTUNE)
        ds = self._pack_or_pad(ds, {**task_feature_lengths, **self._carried_lengths(task_feature_lengths[TARGETS])})
        convert = lambda x: self._convert_carried_example(x, length)  # noqa: E731
        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def _convert_carried_example(self, features: Mapping[str, tf.Tensor], length: int) -> dict[str, tf.Tensor]:
        converted = dict(self._convert_example(features))
        if self._weighted:
            converted[EXAMPLE_WEIGHTS] = tf.bitcast(features[_WEIGHT_BITS], tf.float32)
        if self._top_k:
            groups = [(_group_keys(g), end - start) for g, (start, end) in enumerate(_slot_groups(self._top_k, length))]
            slots = lambda i: tf.reshape(  # noqa: E731  [length * k], token-major
                tf.concat([tf.reshape(features[keys[i]], [length, size]) for keys, size in groups], axis=-1), [-1]
            )
            converted[TEACHER_IDS] = tf.maximum(slots(0) - 1, 0)
            converted[TEACHER_LOG_PROBS] = _from_float16_bits(slots(1))
            converted[TEACHER_LOG_REST] = _from_float16_bits(features[_TEACHER_LOG_REST_BITS])
        return converted

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        length = task_feature_lengths[TARGETS]
        if self._weighted:
            lengths[EXAMPLE_WEIGHTS] = length
        if self._top_k:
            lengths |= {TEACHER_IDS: length * self._top_k, TEACHER_LOG_PROBS: length * self._top_k}
            lengths[TEACHER_LOG_REST] = length
        return lengths


class EncDecFeatureConverter(_CarriesPerTokenFeatures, seqio.EncDecFeatureConverter):
    """seqio's encoder-decoder converter, carrying example weights and stored teacher labels."""


class LMFeatureConverter(_CarriesPerTokenFeatures, seqio.LMFeatureConverter):
    """seqio's decoder-only LM converter, carrying example weights and stored teacher labels."""


FEATURE_CONVERTERS = {
    "encoder_decoder": EncDecFeatureConverter,
    "lm": LMFeatureConverter,
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which seqio Task or Mixture to read, and how to batch it.

    Attributes:
      name: a registered seqio Task or Mixture name.
      task_feature_lengths: e.g. {"inputs": 512, "targets": 114} or {"targets": 512}.
      batch_size: global batch size, over all hosts.
      feature_converter: "encoder_decoder" or "lm".
      split: dataset split.
      pack: pack several examples into one row (segment ids and positions are added).
      shuffle: shuffle examples (training); evaluation reads in order.
      seed: shuffle seed; with the batch index it fixes every batch.
      repeat: cycle forever (training) or read one epoch (evaluation).
      drop_remainder: drop the last batch when it is smaller (always for training); False keeps it,
        for reading every example of a split (`host_dataset` only).
    """

    name: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    feature_converter: str = "encoder_decoder"
    split: str = "train"
    pack: bool = True
    shuffle: bool = True
    seed: int = 0
    repeat: bool = True
    drop_remainder: bool = True

    def __post_init__(self) -> None:
        """Raises `ConfigError` naming the field for an unknown converter or task, a size below 1, or span
        corruption lengths too short for its noise settings."""
        if self.feature_converter not in FEATURE_CONVERTERS:
            raise ConfigError(
                f"DatasetConfig.feature_converter={self.feature_converter!r}; "
                f"choose one of {sorted(FEATURE_CONVERTERS)}"
            )
        if self.batch_size <= 0:
            raise ConfigError(f"DatasetConfig.batch_size must be positive, got {self.batch_size}")
        for feature, length in self.task_feature_lengths.items():
            if length <= 0:
                raise ConfigError(f"DatasetConfig.task_feature_lengths[{feature!r}] must be positive, got {length}")
        known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
        if self.name not in known:
            import difflib

            close = difflib.get_close_matches(self.name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"DatasetConfig.name={self.name!r} is not a registered seqio Task or Mixture{hint}")
        preprocessors.check_span_corruption_task(self.name, self.task_feature_lengths)

    def evaluation(self, split: str = "validation") -> DatasetConfig:
        """The same data read once, in order, from another split."""
        return dataclasses.replace(self, split=split, shuffle=False, repeat=False)


def _load_vocabularies(name: str) -> None:
    """Loads the vocabularies of the output features of Task or Mixture `name` now.

    An unusable vocabulary is then reported by name (`vocab.VocabularyError`) instead of failing
    inside the traced pipeline.
    """
    for feature in seqio.get_mixture_or_task(name).output_features.values():
        vocab.load_vocabulary(feature.vocabulary)


def local_rows(row_slices: Iterable[slice], global_rows: int) -> np.ndarray:
    """The global rows, in order, of the local data of a process whose devices hold `row_slices`.

    `row_slices` are the batch-axis slices of the process's devices (from a sharding's
    `devices_indices_map`). As `jax.make_array_from_process_local_data` reads local data, each
    distinct slice appears once (devices holding the same rows are replicas) and the slices follow
    each other in increasing order of their first row, whether or not they are contiguous.
    """
    blocks = sorted({(s.start or 0, global_rows if s.stop is None else s.stop) for s in row_slices})
    if not blocks:
        return np.zeros((0,), np.int64)
    return np.concatenate([np.arange(start, stop) for start, stop in blocks])


def process_rows(sharding: jax.sharding.Sharding, global_rows: int) -> np.ndarray:
    """The rows of a [global_rows, ...] batch that this process feeds to `sharding`'s devices, in the
    order `jax.make_array_from_process_local_data(sharding, local)` expects them in `local`."""
    indices = sharding.addressable_devices_indices_map((global_rows,))
    slices = []
    for index in indices.values():
        assert index is not None  # a [global_rows] array: every addressable device holds a slice of it
        slices.append(index[0])
    return local_rows(slices, global_rows)


def host_dataset(config: DatasetConfig) -> tf.data.Dataset:
    """The batched dataset of global batches of `config.batch_size` rows.

    Every process reads the same stream, so a batch does not depend on the process count.
    """
    _load_vocabularies(config.name)
    dataset = seqio.get_dataset(
        config.name,
        task_feature_lengths=dict(config.task_feature_lengths),
        feature_converter=FEATURE_CONVERTERS[config.feature_converter](pack=config.pack),
        dataset_split=config.split,
        shuffle=config.shuffle,
        num_epochs=None if config.repeat else 1,
        shard_info=seqio.ShardInfo(0, 1),  # the whole stream on every process, as a single process always read it
        seed=config.seed,
        verbose=False,
    )
    return dataset.batch(config.batch_size, drop_remainder=config.drop_remainder).prefetch(tf.data.AUTOTUNE)


def stream_id(config: DatasetConfig) -> str:
    """What identifies a stream of batches: a saved iterator state resumes only the same stream."""
    return repr(config)


# What reading a saved iterator state raises when its files are missing, damaged or of another
# pipeline: TensorFlow's own errors (no or a bad index, a checksum mismatch); IndexError from its
# reader when a data file is shorter than the index says (truncated or emptied); DecodeError when
# the object graph is not one; AssertionError or ValueError when the state's structure differs.
_UNREADABLE_STATE_ERRORS = (tf.errors.OpError, IndexError, DecodeError, AssertionError, ValueError)


class ResumePoint(NamedTuple):
    """Where a stream resumes: its next batch, and the saved iterator state (a file prefix) that
    reaches it at once, when there is one for this stream."""

    batch: int
    iterator_state: str | None = None


class GlobalBatches:
    """Iterates global batches as jax.Arrays sharded over (data, fsdp) on `mesh`.

    Each process reads the global stream and keeps the rows its devices hold (`process_rows`), so
    batch N is the same whatever the process count. `batches_consumed` counts batches handed out
    since batch 0, and `iterator_checkpoint()` holds the tf.data iterator's state (shuffle and
    packing buffers included), so a resumed run continues exactly where this one stopped without
    replaying the batches before: `resume` takes a `ResumePoint`.
    """

    def __init__(self, config: DatasetConfig, mesh: Mesh, resume: ResumePoint = ResumePoint(0)):
        self.config = config
        self.batches_consumed = resume.batch
        self._sharding = partitioning.batch_sharding(mesh)
        rows = process_rows(self._sharding, config.batch_size)
        self._rows = None if np.array_equal(rows, np.arange(config.batch_size)) else rows
        self._iterator, self._checkpoint = self._open(resume)
        self._savable: bool | None = None  # found out at the first save

    def _open(self, resume: ResumePoint) -> tuple[Iterator[Mapping[str, tf.Tensor]], tf.train.Checkpoint]:
        """The iterator at `resume.batch`: from the saved state, else (none, or it does not read back) by
        replaying the batches before it, whose cost grows with their number.

        The replay draws from the same dataset graph instead of `skip`ping in it, so that the state
        this iterator saves later reads back into a fresh one."""
        if resume.iterator_state is not None:
            iterator, checkpoint = self._fresh_iterator()
            try:
                checkpoint.read(resume.iterator_state).assert_consumed()
                return iterator, checkpoint
            except _UNREADABLE_STATE_ERRORS as error:
                logging.warning(
                    "the input iterator state %s does not read back (%s); replaying %d batches instead",
                    resume.iterator_state,
                    checkpoints.short_error(error),
                    resume.batch,
                )
        elif resume.batch:
            logging.info("no saved input iterator state: replaying %d batches", resume.batch)
        iterator, checkpoint = self._fresh_iterator()
        for _ in range(resume.batch):
            next(iterator)
        return iterator, checkpoint

    def _fresh_iterator(self) -> tuple[Iterator[Mapping[str, tf.Tensor]], tf.train.Checkpoint]:
        """An iterator at batch 0 and the checkpoint that saves and restores its state."""
        iterator = iter(host_dataset(self.config))
        return iterator, tf.train.Checkpoint(iterator=iterator)

    def __iter__(self) -> GlobalBatches:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        batch = next(self._iterator)
        self.batches_consumed += 1
        local = {name: value.numpy() for name, value in batch.items()}
        if self._rows is not None:
            local = {name: value[self._rows] for name, value in local.items()}
        return {name: jax.make_array_from_process_local_data(self._sharding, value) for name, value in local.items()}

    def state(self) -> dict[str, int | str]:
        """What a checkpoint's JSON must store to resume this stream exactly (with `iterator_checkpoint`)."""
        return {"seed": self.config.seed, "batches_consumed": self.batches_consumed, "stream": stream_id(self.config)}

    def iterator_checkpoint(self) -> tf.train.Checkpoint | None:
        """The iterator's state, written by `.write(prefix)` (`checkpoints.IteratorState`); None for a
        pipeline whose state tf.data cannot save (a Python function in it, as in `from_generator`):
        such a stream resumes by replaying."""
        if self._savable is None:
            self._savable = _state_is_savable(self._checkpoint, self.config)
        return self._checkpoint if self._savable else None


def _state_is_savable(checkpoint: tf.train.Checkpoint, config: DatasetConfig) -> bool:
    """Whether tf.data can save this iterator's state: a trial write, into a folder then deleted."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            checkpoint.write(os.path.join(folder, "trial"))
            return True
        except tf.errors.FailedPreconditionError as error:
            logging.info(
                "the input iterator of %s cannot be saved (%s): a resumed run replays its batches",
                config.name,
                str(error).split("}}")[-1].split("[Op:")[0].strip(),
            )
            return False


DataStages = list[tuple[int, DatasetConfig]]  # [(first step, data)], the first at step 0


def check_data_stages(stages: DataStages) -> DataStages:
    """`stages` sorted, or a ConfigError naming the first steps when they do not start at 0 and increase."""
    starts = [int(start) for start, _ in stages]
    if not stages or starts[0] != 0 or starts != sorted(set(starts)):
        raise ConfigError(f"data stages must start at step 0 and strictly increase, got first steps {starts}")
    return [(int(start), config) for start, config in stages]


class StagedBatches:
    """Global batches from data that changes at given steps (`check_data_stages`).

    Each stage's stream starts at its own first batch when the stage begins. `state()` holds the
    current stream's position and its stage's first step (`data_stage`), so a run resumed inside a
    stage continues its stream exactly and one resumed at a stage boundary starts the next at batch 0.
    """

    def __init__(self, stages: DataStages, mesh: Mesh, step: int, resume: ResumePoint = ResumePoint(0)):
        self.stages, self.mesh = check_data_stages(stages), mesh
        self.stage = self.stage_start(step)
        self._batches = GlobalBatches(self.config_at(step), mesh, resume)

    def stage_start(self, step: int) -> int:
        """The first step of the stage that `step` is in."""
        return max(start for start, _ in self.stages if start <= step)

    def config_at(self, step: int) -> DatasetConfig:
        """The data of `step`'s stage."""
        return dict(self.stages)[self.stage_start(step)]

    def batch_for(self, step: int) -> dict[str, jax.Array]:
        """The next batch of `step`'s stage (a new stage's stream starts at its first batch)."""
        start = self.stage_start(step)
        if start != self.stage:
            self.stage, self._batches = start, GlobalBatches(self.config_at(step), self.mesh)
        return next(self._batches)

    def state(self) -> dict[str, int | str]:
        """What a checkpoint's JSON must store to resume exactly: the current stream's state and its stage."""
        return {**self._batches.state(), "data_stage": self.stage}

    def iterator_checkpoint(self) -> tf.train.Checkpoint | None:
        """The current stream's iterator state, if it can be saved (`GlobalBatches.iterator_checkpoint`)."""
        return self._batches.iterator_checkpoint()


def resume_position(stages: DataStages, step: int, data_state: Mapping[str, int | str]) -> ResumePoint:
    """Where `step`'s stream resumes from a checkpoint's `data_state`: its position when it was saved in
    the same stage (no `data_stage`: stage 0), else batch 0 (the stage begins at `step`). The saved
    iterator state (`checkpoints.ITERATOR_STATE`) comes along when it belongs to the same stream."""
    stage = max(start for start, _ in check_data_stages(stages) if start <= step)
    if int(data_state.get("data_stage", 0)) != stage:
        return ResumePoint(0)
    batch = int(data_state.get("batches_consumed", step))
    iterator_state = data_state.get(checkpoints.ITERATOR_STATE)
    assert iterator_state is None or isinstance(iterator_state, str)  # written by the trainer as text
    if iterator_state is not None and data_state.get("stream") != stream_id(dict(stages)[stage]):
        logging.info("the data differ from those the checkpoint's iterator state was saved with: not using it")
        iterator_state = None
    return ResumePoint(batch, iterator_state)
