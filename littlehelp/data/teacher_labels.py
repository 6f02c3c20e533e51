"""A frozen teacher's soft labels, computed once per Task split and read by every student.

`build_store` runs the teacher once over a Task's split (preprocessed at the store's sequence length,
unshuffled, one epoch, decoder-LM features without packing, streamed in batches) and writes, per
example and per target token:

- the teacher's top-k token ids (uint16 when the vocabulary has at most 65,536 ids, else int32),
  their log-probabilities and the log of the mass on every other token (float16: the quantisation
  is measured by `scripts/bench_teacher_labels.py`), the k + 1 buckets `losses.sparse_divergence`
  reads;
- the true next token's log-probability (float32) and rank (how many logits are strictly greater:
  "in the top-k" means rank < k), from which SALT_DS's scores follow without a second teacher pass;
- the example's target tokens, which every read checks against the Task's, so labels never reach an
  example they were not made for.

Records go to STORE_DIR/labels-NNNNN.tfrecord shards (`examples_per_shard` examples each), each
written to a temporary name and moved into place; STORE_DIR/labels.json (the manifest) lists the
finished shards with their example and token counts and sha256, and is rewritten after each. A
build that stops (killed, out of time) resumes after the last finished shard, recomputing nothing
before it. The manifest identifies the store: Task, split, sequence length, k, the teacher's path,
step and parameter fingerprint, and the vocabulary size; a build or a read for anything else is
refused naming the fields that differ, and a shard whose bytes differ from its sha256 is refused
naming the file. Log-probabilities are at temperature 1 (the objectives that read them refuse
another temperature).

`register_labelled_task` registers a Task whose labelled splits stream the source's examples with
their labels beside them (features `teacher_ids`, `teacher_log_probs`, `teacher_log_rest`), its other
splits the source's; the feature converters carry them through packing to the batch. From gin:

    import littlehelp.data.teacher_labels
    TASK = @teacher_labels.labelled_task()
    teacher_labels.labelled_task.task = 'shakespeare_lm'
    teacher_labels.labelled_task.sequence_length = %TASK_FEATURE_LENGTHS
    teacher_labels.labelled_task.store_dir = '/runs/teacher/labels'
    teacher_labels.labelled_task.teacher = @teacher/frozen.FrozenModel()
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from littlehelp import frozen, losses
from littlehelp.config import ConfigError
from littlehelp.data import corpus, derived_tasks, pipeline
from littlehelp.errors import LittlehelpError
from littlehelp.features import (
    DECODER_INPUT_TOKENS,
    DECODER_LOSS_WEIGHTS,
    DECODER_TARGET_TOKENS,
    TARGETS,
    TEACHER_IDS,
    TEACHER_LOG_PROBS,
    TEACHER_LOG_REST,
)
from littlehelp.models import Model
from littlehelp.typing import Array, Params

FORMAT = 1
MANIFEST_FILE = "labels.json"
MATCHED_FIELDS = ("format", "task", "split", "sequence_length", "top_k", "vocab_size")  # and the teacher
LM_FEATURES = (DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS, DECODER_LOSS_WEIGHTS)
TARGET_LOG_PROB, TARGET_RANK = "target_log_prob", "target_rank"  # per token, in the records only
UINT16_IDS = 1 << 16  # vocabularies up to this size store uint16 ids


class StoreError(LittlehelpError):
    """A label store is corrupt, unfinished, or was made for another teacher, Task, split or length."""


def _shard_name(index: int) -> str:
    return f"labels-{index:05d}.tfrecord"


# ----------------------------------------------------------------------------------------------
# What a store is made of.


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """What to label: `task`'s `split` cut at `sequence_length` ({"targets": L}), with the teacher's
    `top_k`, in batches of `batch_size` rows, `examples_per_shard` examples per file, the head
    `chunk_size` positions at a time, logging every `log_every` batches."""

    task: str
    sequence_length: Mapping[str, int]
    split: str = "train"
    top_k: int = 64
    batch_size: int = 32
    examples_per_shard: int = 1024
    chunk_size: int = losses.DEFAULT_CHUNK_SIZE
    log_every: int = 50

    def __post_init__(self) -> None:
        """Refuses a knob below 1 or a sequence length without a positive "targets" entry, by name."""
        for knob in ("top_k", "batch_size", "examples_per_shard", "chunk_size", "log_every"):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"teacher labels: {knob} must be an integer >= 1, got {value!r}")
        if set(self.sequence_length) != {TARGETS} or not int(self.sequence_length[TARGETS]) > 0:
            raise ConfigError(
                f"teacher labels: sequence_length must be {{'targets': L}} with L > 0 (a decoder LM task), "
                f"got {dict(self.sequence_length)!r}"
            )
        object.__setattr__(self, "sequence_length", {TARGETS: int(self.sequence_length[TARGETS])})

    def identity(self, teacher_record: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
        """What a store made with this config and teacher must match (MATCHED_FIELDS and the teacher)."""
        return {
            "format": FORMAT,
            "task": self.task,
            "split": self.split,
            "sequence_length": dict(self.sequence_length),
            "top_k": self.top_k,
            "vocab_size": vocab_size,
            "teacher": dict(teacher_record),
        }


def check_task(config: StoreConfig, vocab_size: int) -> None:
    """Refuses an unknown Task or split, a Mixture, a Task that is not a decoder LM one, a k above
    the teacher's vocabulary and a teacher with fewer ids than the Task's vocabulary, by name."""
    if config.task in seqio.MixtureRegistry.names():
        raise ConfigError(f"teacher labels: {config.task!r} is a Mixture; store each of its Tasks")
    if config.task not in seqio.TaskRegistry.names():
        raise ConfigError(f"teacher labels: task {config.task!r} is not a registered seqio Task")
    task = seqio.get_mixture_or_task(config.task)
    if config.split not in task.splits:
        raise ConfigError(f"teacher labels: task {config.task!r} has no split {config.split!r} ({list(task.splits)})")
    if set(task.output_features) != {TARGETS}:
        raise ConfigError(
            f"teacher labels: decoder LM Tasks only (one 'targets' feature); {config.task!r} has "
            f"{sorted(task.output_features)}"
        )
    if config.top_k > vocab_size:
        raise ConfigError(f"teacher labels: top_k {config.top_k} is above the teacher's {vocab_size} ids")
    task_vocab = task.output_features[TARGETS].vocabulary.vocab_size
    if vocab_size < task_vocab:
        raise ConfigError(
            f"teacher labels: the teacher has {vocab_size} ids, fewer than task {config.task!r}'s {task_vocab}"
        )


# ----------------------------------------------------------------------------------------------
# The teacher's labels of a batch.


def _token_labels(logits: Array, targets: Array, top_k: int) -> tuple[losses.TopKLabels, Array, Array]:
    """A chunk's (top-k labels, true token log-probability, true token rank)."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
    rank = jnp.sum(logits > target_logit, axis=-1, dtype=jnp.int32)
    target_log_prob = -losses.token_cross_entropy(logits, targets, jnp.ones_like(targets, jnp.float32)).cross_entropy
    return losses.top_k_labels(logits, top_k), target_log_prob, rank


@functools.partial(jax.jit, static_argnames=("model", "top_k", "chunk_size"))
def batch_labels(
    model: Model, params: Params, batch: Mapping[str, Array], top_k: int, chunk_size: int = losses.DEFAULT_CHUNK_SIZE
) -> tuple[losses.TopKLabels, Array, Array]:
    """(top-k labels [b, l, k], true token log-probability [b, l], rank [b, l]) of an LM batch under a
    decoder LM `model` (static: its seam is hashable), its head `chunk_size` positions at a time."""
    hidden = model.hidden_states(params, batch)
    token_fn = functools.partial(_token_labels, top_k=top_k)
    head = lambda h: model.logits_from_hidden(params, h)  # noqa: E731
    return losses.chunked_token_values(token_fn, hidden, head, batch[DECODER_TARGET_TOKENS], chunk_size)


# ----------------------------------------------------------------------------------------------
# Records: one tf.train.Example per Task example.


def _bytes_feature(array: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(array).tobytes()]))


def id_dtype(vocab_size: int) -> np.dtype:
    """The stored ids' dtype: uint16 for vocabularies of at most 65,536 ids, else int32."""
    return np.dtype(np.uint16 if vocab_size <= UINT16_IDS else np.int32)


def _empty_as_minus_inf(log_rest: np.ndarray) -> np.ndarray:
    """`losses.EMPTY_BUCKET` (no mass outside the top k) as -inf, which float16 holds."""
    return np.where(log_rest <= losses.EMPTY_BUCKET, -np.inf, log_rest)


def encode_example(
    targets: np.ndarray, labels: losses.TopKLabels, target_log_prob: np.ndarray, rank: np.ndarray, ids_dtype: np.dtype
) -> bytes:
    """One example's record: its n targets and, per token, labels [n, k] / [n], log-probability, rank."""
    features = {
        TARGETS: _bytes_feature(targets.astype(np.int32)),
        TEACHER_IDS: _bytes_feature(np.asarray(labels.ids).astype(ids_dtype)),
        TEACHER_LOG_PROBS: _bytes_feature(np.asarray(labels.log_probs).astype(np.float16)),
        TEACHER_LOG_REST: _bytes_feature(_empty_as_minus_inf(np.asarray(labels.log_rest)).astype(np.float16)),
        TARGET_LOG_PROB: _bytes_feature(target_log_prob.astype(np.float32)),
        TARGET_RANK: _bytes_feature(rank.astype(np.int32)),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


_DTYPES = {
    TARGETS: tf.int32,
    TEACHER_LOG_PROBS: tf.float16,
    TEACHER_LOG_REST: tf.float16,
    TARGET_LOG_PROB: tf.float32,
    TARGET_RANK: tf.int32,
}


def decode_example(record: tf.Tensor, top_k: int, ids_dtype: np.dtype) -> dict[str, tf.Tensor]:
    """A record's arrays: targets, labels ([n, k] ids int32, float16 log-probabilities; [n] log rest),
    the true token's log-probability and rank."""
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in (*_DTYPES, TEACHER_IDS)}
    raw = tf.io.parse_single_example(record, spec)
    decoded = {name: tf.io.decode_raw(raw[name], dtype) for name, dtype in _DTYPES.items()}
    ids = tf.cast(tf.io.decode_raw(raw[TEACHER_IDS], tf.as_dtype(ids_dtype)), tf.int32)
    decoded[TEACHER_IDS] = tf.reshape(ids, [-1, top_k])
    decoded[TEACHER_LOG_PROBS] = tf.reshape(decoded[TEACHER_LOG_PROBS], [-1, top_k])
    return decoded


# ----------------------------------------------------------------------------------------------
# The manifest.


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def read_manifest(store_dir: str | os.PathLike) -> dict[str, Any]:
    """STORE_DIR/labels.json, or `StoreError` naming it when it is missing, unreadable or not a manifest."""
    path = Path(store_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StoreError(f"{path} is not a readable label store manifest: {type(error).__name__}") from None
    required = (*MATCHED_FIELDS, "teacher", "shards", "complete")
    missing = [field for field in required if not isinstance(manifest, dict) or field not in manifest]
    if missing:
        raise StoreError(f"{path} is not a label store manifest: it lacks {', '.join(missing)}")
    return manifest


def check_shards(store_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Refuses, naming the file, a listed shard that is missing or whose sha256 is not the manifest's."""
    for shard in manifest["shards"]:
        path = Path(store_dir) / shard["file"]
        if not path.is_file() or corpus.sha256_of(path) != shard["sha256"]:
            raise StoreError(
                f"{path} is missing, truncated or changed: its sha256 is not the one in "
                f"{Path(store_dir) / MANIFEST_FILE}; delete the store to build it again"
            )


def differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The identifying fields in which two manifests differ (the teacher by its fingerprint)."""
    fields = [
        f"{field} ({saved[field]!r} there, {wanted[field]!r} here)"
        for field in MATCHED_FIELDS
        if saved[field] != wanted[field]
    ]
    if saved["teacher"].get("fingerprint") != wanted["teacher"].get("fingerprint"):
        fields.append(
            f"teacher fingerprint ({saved['teacher'].get('fingerprint')} there, "
            f"{wanted['teacher'].get('fingerprint')} here)"
        )
    return fields


def open_store(store_dir: str | os.PathLike, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The store's manifest checked against `wanted` (see `differences`) with its shards verified, or a
    new empty manifest when STORE_DIR has none."""
    if not (Path(store_dir) / MANIFEST_FILE).exists():
        return {**wanted, "shards": [], "complete": False, "seconds": 0.0, "flops": 0.0}
    manifest = read_manifest(store_dir)
    differing = differences(manifest, wanted)
    if differing:
        raise StoreError(
            f"label store {store_dir} was made for another teacher or data: {'; '.join(differing)}; "
            "use another store_dir"
        )
    check_shards(store_dir, manifest)
    return manifest


def totals(manifest: Mapping[str, Any]) -> tuple[int, int]:
    """(examples, tokens) in the manifest's finished shards."""
    return sum(s["examples"] for s in manifest["shards"]), sum(s["tokens"] for s in manifest["shards"])


# ----------------------------------------------------------------------------------------------
# Building a store.


def lm_batches(
    task: str, split: str, sequence_length: Mapping[str, int], batch_size: int, skip: int = 0
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(decoder LM batch [batch_size, L] of LM_FEATURES, real rows): `task`'s `split` after its first
    `skip` examples, unpacked, in order, one epoch; the last batch padded with all-zero rows."""
    dataset = seqio.get_dataset(
        task,
        dict(sequence_length),
        pipeline.LMFeatureConverter(pack=False),
        dataset_split=split,
        shuffle=False,
        num_epochs=1,
        verbose=False,
    ).skip(skip)
    for batch in dataset.batch(batch_size).prefetch(2).as_numpy_iterator():
        rows = len(batch[DECODER_TARGET_TOKENS])
        yield {name: _padded(batch[name], batch_size) for name in LM_FEATURES}, rows


def _padded(rows: np.ndarray, batch_size: int) -> np.ndarray:
    """`rows` [n, ...] with zero rows appended up to `batch_size`."""
    return np.pad(rows, [(0, batch_size - len(rows))] + [(0, 0)] * (rows.ndim - 1))


def _example_length(targets: np.ndarray, where: str) -> int:
    """The number of target tokens of an unpacked LM row (its nonzero prefix); refuses a 0 inside."""
    length = int(np.count_nonzero(targets))
    if np.any(targets[length:]):
        raise StoreError(f"{where} holds token id 0 among its targets: labels need padding-free examples")
    return length


class _ShardWriter:
    """Collects records and writes a shard (then the manifest) every `examples_per_shard` examples."""

    def __init__(self, store_dir: Path, manifest: dict[str, Any], examples_per_shard: int):
        self.store_dir, self.manifest, self.per_shard = store_dir, manifest, examples_per_shard
        self.records: list[bytes] = []
        self.tokens = 0

    def add(self, record: bytes, tokens: int) -> None:
        self.records.append(record)
        self.tokens += tokens
        if len(self.records) == self.per_shard:
            self.flush()

    def flush(self) -> None:
        """Writes the collected records as the next shard and lists it in the manifest."""
        if not self.records:
            return
        path = self.store_dir / _shard_name(len(self.manifest["shards"]))
        temporary = path.with_name(f".{path.name}.tmp")
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for record in self.records:
                writer.write(record)
        os.replace(temporary, path)
        shard = {
            "file": path.name,
            "examples": len(self.records),
            "tokens": self.tokens,
            "sha256": corpus.sha256_of(path),
        }
        self.manifest["shards"].append(shard)
        self.records, self.tokens = [], 0
        write_manifest(self.store_dir, self.manifest)


def write_manifest(store_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Writes STORE_DIR/labels.json atomically, with the examples, tokens and bytes of its shards."""
    examples, tokens = totals(manifest)
    size = sum((store_dir / s["file"]).stat().st_size for s in manifest["shards"])
    record = {**manifest, "examples": examples, "tokens": tokens, "bytes": size}
    _write_atomically(store_dir / MANIFEST_FILE, (json.dumps(record, indent=1) + "\n").encode())


def _labelled_rows(
    model: Model, params: Params, batch: Mapping[str, np.ndarray], rows: int, config: StoreConfig
) -> Iterator[tuple[np.ndarray, losses.TopKLabels, np.ndarray, np.ndarray]]:
    """Each real row's (targets [n], labels [n, k] / [n], true token log-probability [n], rank [n])."""
    labels, log_prob, rank = jax.device_get(batch_labels(model, params, batch, config.top_k, config.chunk_size))
    for row in range(rows):
        targets = batch[DECODER_TARGET_TOKENS][row]
        n = _example_length(targets, f"an example of {config.task}:{config.split}")
        row_labels = losses.TopKLabels(labels.ids[row, :n], labels.log_probs[row, :n], labels.log_rest[row, :n])
        yield targets[:n], row_labels, log_prob[row, :n], rank[row, :n]


def build_store(
    model: Model, params: Params, teacher_record: Mapping[str, Any], config: StoreConfig, store_dir: str | os.PathLike
) -> dict[str, Any]:
    """Labels `config`'s split with the teacher into `store_dir` (resuming after its finished shards;
    nothing to do when it is complete) and returns the manifest; refuses what `check_task` refuses."""
    store_dir = Path(store_dir)
    vocab_size = model.config.vocab_size
    check_task(config, vocab_size)
    manifest = open_store(store_dir, config.identity(teacher_record, vocab_size))
    if manifest["complete"]:
        return manifest
    store_dir.mkdir(parents=True, exist_ok=True)
    done, _ = totals(manifest)
    if done:
        logging.info("teacher labels: resuming %s after %d stored examples", store_dir, done)
    writer, ids_dtype = _ShardWriter(store_dir, manifest, config.examples_per_shard), id_dtype(vocab_size)
    started, count = time.perf_counter(), 0
    for index, (batch, rows) in enumerate(
        lm_batches(config.task, config.split, config.sequence_length, config.batch_size, done), 1
    ):
        for targets, labels, log_prob, rank in _labelled_rows(model, params, batch, rows, config):
            writer.add(encode_example(targets, labels, log_prob, rank, ids_dtype), len(targets))
        count += rows
        manifest["flops"] += model.forward_flops({DECODER_INPUT_TOKENS: batch[DECODER_INPUT_TOKENS]})
        if index % config.log_every == 0:
            _log_progress(config, done + count, time.perf_counter() - started, count)
    writer.flush()
    manifest["seconds"] += round(time.perf_counter() - started, 3)
    manifest["complete"] = True
    write_manifest(store_dir, manifest)
    _log_progress(config, done + count, time.perf_counter() - started, count)
    return read_manifest(store_dir)


def _log_progress(config: StoreConfig, stored: int, seconds: float, new: int) -> None:
    logging.info(
        "teacher labels %s:%s: %d examples stored (%.1f new examples/s)",
        config.task,
        config.split,
        stored,
        new / max(seconds, 1e-9),
    )


# ----------------------------------------------------------------------------------------------
# Reading a store.


def read_store(store_dir: str | os.PathLike) -> tuple[dict[str, Any], tf.data.Dataset]:
    """(manifest, the decoded records in example order) of a complete store with verified shards."""
    manifest = read_manifest(store_dir)
    if not manifest["complete"]:
        raise StoreError(
            f"label store {store_dir} is unfinished ({totals(manifest)[0]} examples so far): build it first"
        )
    check_shards(store_dir, manifest)
    files = [str(Path(store_dir) / s["file"]) for s in manifest["shards"]]
    decode = functools.partial(decode_example, top_k=manifest["top_k"], ids_dtype=id_dtype(manifest["vocab_size"]))
    return manifest, tf.data.TFRecordDataset(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def _with_labels(example: Mapping[str, tf.Tensor], labels: Mapping[str, tf.Tensor], store: str) -> dict[str, tf.Tensor]:
    """The example with its stored labels, after checking they were made for its targets."""
    check = tf.debugging.assert_equal(
        example[TARGETS], labels[TARGETS], message=f"label store {store} does not match the Task's examples"
    )
    with tf.control_dependencies([check]):
        return {
            **example,
            **{name: tf.identity(labels[name]) for name in (TEACHER_IDS, TEACHER_LOG_PROBS, TEACHER_LOG_REST)},
        }


# Tasks registered by `register_labelled_task` in this process: (Task name, split) -> its store.
_STORES: dict[tuple[str, str], str] = {}


def store_of(task: str, split: str) -> str | None:
    """The store whose labels split `split` of Task `task` carries (registered in this process), or None."""
    return _STORES.get((task, split))


def _labelled_split(source: seqio.Task, manifest: Mapping[str, Any], store: str) -> tf.data.Dataset:
    """The source split's examples, each with its stored labels (checked against its targets)."""
    examples = derived_tasks.source_split(source, manifest["split"], manifest["sequence_length"])
    pairs = tf.data.Dataset.zip(examples, read_store(store)[1])
    return pairs.map(lambda example, labels: _with_labels(example, labels, store))


def register_labelled_task(name: str, store_dirs: Sequence[str | os.PathLike]) -> seqio.Task:
    """Registers Task `name`: each store's split with each example's labels, the source's other splits.
    The stores must label one Task at one sequence length, one split each."""
    manifests = {str(store): read_store(store)[0] for store in store_dirs}
    first = next(iter(manifests.values()))
    splits = [m["split"] for m in manifests.values()]
    for store, manifest in manifests.items():
        if (manifest["task"], manifest["sequence_length"]) != (first["task"], first["sequence_length"]):
            raise StoreError(
                f"label store {store} labels {manifest['task']} at {manifest['sequence_length']}, "
                f"not {first['task']} at {first['sequence_length']} as the others"
            )
    if len(set(splits)) != len(splits):
        raise StoreError(f"label stores {list(manifests)} label the same split twice ({splits})")
    source = seqio.get_mixture_or_task(first["task"])
    replacements = {m["split"]: functools.partial(_labelled_split, source, m, store) for store, m in manifests.items()}
    _STORES.update({(name, m["split"]): store for store, m in manifests.items()})
    return derived_tasks.register_with_splits(name, source, replacements, first["sequence_length"])


def bytes_per_token(manifest: Mapping[str, Any]) -> float:
    """The store's disk bytes per stored target token."""
    return manifest["bytes"] / max(manifest["tokens"], 1)


def store_labels(config: StoreConfig, teacher: frozen.FrozenModel, store_dir: str | os.PathLike) -> dict[str, Any]:
    """Checks the Task, reads the teacher onto one device and builds (or finishes) the store."""
    check_task(config, teacher.model.config.vocab_size)  # before the teacher is read
    example = {DECODER_INPUT_TOKENS: np.zeros((1, config.sequence_length[TARGETS]), np.int32)}
    params, record = frozen.load_on_one_device(teacher, example)
    return build_store(teacher.model, params, record, config, store_dir)


# Tasks registered through `labelled_task` in this process: Task name -> the arguments that made it.
_LABELLED: dict[str, tuple] = {}


@gin.configurable(module="teacher_labels")
def labelled_task(
    task: str = gin.REQUIRED,
    teacher: frozen.FrozenModel = gin.REQUIRED,
    sequence_length: Mapping[str, int] = gin.REQUIRED,
    store_dir: str = gin.REQUIRED,
    top_k: int = 64,
    splits: Sequence[str] = ("train", "validation"),
    batch_size: int = 32,
    examples_per_shard: int = 1024,
    name: str | None = None,
) -> str:
    """gin entry point: builds (or reuses) a store per split, STORE_DIR/<split>, once per process and
    returns the labelled Task's name (default `{task}_teacher_top{top_k}`). The validation split is
    labelled too by default, so that a distillation objective evaluates on it as it trains."""
    configs = [StoreConfig(task, sequence_length, split, top_k, batch_size, examples_per_shard) for split in splits]
    task_name = name or f"{task}_teacher_top{top_k}"
    key = (configs, teacher, str(store_dir))
    if _LABELLED.get(task_name) != key or task_name not in seqio.TaskRegistry.names():
        for config in configs:
            store_labels(config, teacher, Path(store_dir) / config.split)
        register_labelled_task(task_name, [Path(store_dir) / split for split in splits])
        _LABELLED[task_name] = key
    return task_name


def expected_bytes_per_token(top_k: int, vocab_size: int) -> int:
    """The payload bytes per token (ids, log-probabilities, log rest, true token log-probability and
    rank, target), before the records' framing."""
    return top_k * (id_dtype(vocab_size).itemsize + 2) + 2 + 4 + 4 + 4
