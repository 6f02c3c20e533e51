"""SALT_DS (docs/methods/salt.md): the KD stage trains on the sequences an early small-LM checkpoint
finds "challenging yet learnable".

Each sequence of a Task's split gets a score from the teacher (a frozen small LM): the MEDIAN of the
per-token teacher losses (cross-entropy of the true next token) over the tokens whose true next
token is in the teacher's top-k (k = 10). "In the top-k" means fewer than k logits are strictly
greater than the target's, so a target tied with others counts as in. A sequence with no such token
(all padding, or every target outside the top-k) scores 0. The `fraction` highest-scoring sequences
(the nearest integer to fraction x count, halves up, at least 1; ties: the earlier sequence) become
a new seqio Task through the active-learning stage (selector `highest_score`,
`active.stage.select_from_scores`): its split streams the source split filtered by position, in
source order, cut at the scoring sequence length; its other splits are the source's.

Scoring streams the split (unshuffled, one epoch, the LM feature converter without packing) in
batches; the last batch is padded with empty rows, which are dropped. The teacher's head runs a chunk
of positions at a time (`losses.chunked_token_values`), so neither the split nor [batch, length,
vocab] logits are ever held. The scores go to SCORES_DIR/scores.npy (float32, one per sequence in
the split's unshuffled order) and SCORES_DIR/scores.json (task, split, sequence length, top_k, the
teacher's path, step and fingerprint, count, seconds, the scoring pass's FLOPs, the .npy's sha256). The
FLOPs are the teacher's forward passes over every batch scored, padding rows included, in
`littlehelp.flops`'s convention: a SALT_DS run's compute includes them. A later call whose task,
split, sequence length, top_k and teacher fingerprint match reads them instead of scoring; one that
differs scores again (and says so in the log). A corrupt or truncated file is refused by name.

From gin (the teacher is read-only, loaded onto one device; scoring runs once per process):

    import salt_lm.selection
    KD_TASK = @salt.selected_task()
    salt.selected_task.task = 'shakespeare_lm'
    salt.selected_task.sequence_length = %TASK_FEATURE_LENGTHS
    salt.selected_task.scores_dir = '/runs/slm/salt_ds'
    salt.selected_task.teacher = @teacher/frozen.FrozenModel()
    teacher/frozen.FrozenModel.path = '/runs/slm/checkpoints/2000'   # an early checkpoint
    teacher/frozen.FrozenModel.model = @teacher/models.build_model()
    teacher/models.build_model.config = @teacher/decoder.DecoderConfig()
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
from absl import logging

from active import stage, validation
from littlehelp import frozen, losses
from littlehelp.config import ConfigError
from littlehelp.data import teacher_labels, vocab
from littlehelp.errors import LittlehelpError
from littlehelp.features import DECODER_INPUT_TOKENS, DECODER_LOSS_WEIGHTS, DECODER_TARGET_TOKENS, TARGETS
from littlehelp.models import Model
from littlehelp.typing import Array, Params

DEFAULT_TOP_K = 10
DEFAULT_FRACTION = 0.5
SCORES_FILE, METADATA_FILE = "scores.npy", "scores.json"
MATCHED_FIELDS = ("task", "split", "sequence_length", "top_k")  # and the teacher's fingerprint
METADATA_FIELDS = MATCHED_FIELDS + ("teacher", "count", "seconds", "flops", "sha256")


class ScoresFileError(LittlehelpError):
    """A scores folder's file is missing, unreadable, truncated or disagrees with its metadata."""


# ----------------------------------------------------------------------------------------------
# Per-token teacher losses and sequence scores.


def in_top_k(logits: Array, targets: Array, top_k: int) -> Array:
    """True where fewer than `top_k` logits [..., vocab] are strictly greater than the target's (ties
    count for the target), [...] bool."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
    return jnp.sum(logits > target_logit, axis=-1) < top_k


def _token_values(logits: Array, side: tuple[Array, Array], top_k: int) -> tuple[Array, Array]:
    """(weighted cross-entropy, in-top-k) of one chunk's logits."""
    targets, weights = side
    return losses.token_cross_entropy(logits, targets, weights).cross_entropy, in_top_k(logits, targets, top_k)


@functools.partial(jax.jit, static_argnames=("model", "top_k", "chunk_size"))
def token_losses(
    model: Model,
    params: Params,
    batch: Mapping[str, Array],
    top_k: int = DEFAULT_TOP_K,
    chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
) -> tuple[Array, Array]:
    """(teacher loss [b, l] float32, 0 at padding; target in the top-k [b, l] bool) of an LM batch.

    `model` (hashable: it is a static argument) is a decoder LM's seam; its head runs `chunk_size`
    positions at a time.
    """
    hidden = model.hidden_states(params, batch)
    side = (batch[DECODER_TARGET_TOKENS], batch[DECODER_LOSS_WEIGHTS])
    token_fn = functools.partial(_token_values, top_k=top_k)
    return losses.chunked_token_values(
        token_fn, hidden, lambda h: model.logits_from_hidden(params, h), side, chunk_size
    )


def sequence_scores(token_losses: Array, in_top_k: Array, weights: Array) -> Array:
    """Median [b] of each row's losses over the positions with weight > 0 and in the top-k; 0 for a
    row with none. An even count averages the two middle values (as numpy's median)."""
    keep = in_top_k & (weights > 0)
    count = jnp.sum(keep, axis=-1)
    ordered = jnp.sort(jnp.where(keep, token_losses, jnp.inf), axis=-1)
    middle = lambda index: jnp.take_along_axis(ordered, index[:, None], axis=-1)[:, 0]  # noqa: E731
    median = 0.5 * (middle(jnp.maximum(count - 1, 0) // 2) + middle(count // 2))
    return jnp.where(count > 0, median, 0.0)


@functools.partial(jax.jit, static_argnames=("model", "top_k", "chunk_size"))
def batch_scores(
    model: Model,
    params: Params,
    batch: Mapping[str, Array],
    top_k: int = DEFAULT_TOP_K,
    chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
) -> Array:
    """SALT_DS scores [b] of an LM batch's sequences (`token_losses`, then `sequence_scores`)."""
    values, top = token_losses(model, params, batch, top_k, chunk_size)
    return sequence_scores(values, top, batch[DECODER_LOSS_WEIGHTS])


# ----------------------------------------------------------------------------------------------
# Streamed scoring of a split.


@dataclasses.dataclass(frozen=True)
class Scoring:
    """What to score: `task`'s `split` cut at `sequence_length` ({"targets": L}), with `top_k`, in
    batches of `batch_size`, the head `chunk_size` positions at a time, logging every `log_every` batches."""

    task: str
    sequence_length: Mapping[str, int]
    split: str = "train"
    top_k: int = DEFAULT_TOP_K
    batch_size: int = 32
    chunk_size: int = losses.DEFAULT_CHUNK_SIZE
    log_every: int = 100

    def __post_init__(self) -> None:
        """Refuses a knob below 1 or a sequence length without a positive "targets" entry, by name."""
        for knob in ("top_k", "batch_size", "chunk_size", "log_every"):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"SALT_DS {knob} must be an integer >= 1, got {value!r}")
        if set(self.sequence_length) != {TARGETS} or not int(self.sequence_length[TARGETS]) > 0:
            raise ConfigError(
                f"SALT_DS sequence_length must be {{'targets': L}} with L > 0 (a decoder LM task), "
                f"got {dict(self.sequence_length)!r}"
            )
        object.__setattr__(self, "sequence_length", {TARGETS: int(self.sequence_length[TARGETS])})

    def metadata(self, teacher_record: Mapping[str, Any]) -> dict[str, Any]:
        """What identifies these scores: MATCHED_FIELDS and the teacher's record (path, step, fingerprint)."""
        return {
            "task": self.task,
            "split": self.split,
            "sequence_length": dict(self.sequence_length),
            "top_k": self.top_k,
            "teacher": dict(teacher_record),
        }


def score_split(model: Model, params: Params, scoring: Scoring) -> np.ndarray:
    """SALT_DS scores [n] float32 of the split's sequences in order, streamed batch by batch."""
    scored, count, started = [], 0, time.perf_counter()
    for index, (batch, rows) in enumerate(
        teacher_labels.lm_batches(scoring.task, scoring.split, scoring.sequence_length, scoring.batch_size), 1
    ):
        scored.append(batch_scores(model, params, batch, scoring.top_k, scoring.chunk_size)[:rows])
        count += rows
        if index % scoring.log_every == 0:
            jax.block_until_ready(scored[-1])
            _log_progress(scoring, count, time.perf_counter() - started)
    scores = np.concatenate(jax.device_get(scored)) if scored else np.zeros(0, np.float32)
    _log_progress(scoring, count, time.perf_counter() - started)
    return scores.astype(np.float32)


def scoring_flops(model: Model, scoring: Scoring, count: int) -> float:
    """FLOPs of scoring `count` sequences: one teacher forward pass per batch of `batch_size` rows,
    the last one padded (littlehelp.flops's convention)."""
    shape = {DECODER_INPUT_TOKENS: np.zeros((scoring.batch_size, scoring.sequence_length[TARGETS]), np.int32)}
    return math.ceil(count / scoring.batch_size) * model.forward_flops(shape)


def _log_progress(scoring: Scoring, count: int, seconds: float) -> None:
    logging.info(
        "SALT_DS scoring %s:%s: %d sequences in %.1f s (%.1f sequences/s)",
        scoring.task,
        scoring.split,
        count,
        seconds,
        count / max(seconds, 1e-9),
    )


# ----------------------------------------------------------------------------------------------
# Scores on disk.


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomically(path: Path, write: Any) -> None:
    """Calls `write(temporary path)`, then moves the file into place (a reader never sees half a file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def write_scores(folder: str | os.PathLike, scores: np.ndarray, metadata: Mapping[str, Any]) -> Path:
    """Writes `scores` (float32) to FOLDER/scores.npy and `metadata` with `count` and `sha256` to
    FOLDER/scores.json (last: it vouches for the .npy); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scores = np.asarray(scores, np.float32)

    def save_npy(path: Path) -> None:
        with open(path, "wb") as f:
            np.save(f, scores, allow_pickle=False)

    _write_atomically(folder / SCORES_FILE, save_npy)
    record = {**metadata, "count": len(scores), "sha256": _sha256(folder / SCORES_FILE)}
    _write_atomically(folder / METADATA_FILE, lambda path: path.write_text(json.dumps(record, indent=1) + "\n"))
    return folder


def read_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """FOLDER/scores.json, or `ScoresFileError` naming it when it is unreadable or lacks METADATA_FIELDS."""
    path = Path(folder) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScoresFileError(
            f"{path} is not a readable scores record: {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from None
    missing = [field for field in METADATA_FIELDS if not isinstance(metadata, dict) or field not in metadata]
    if missing:
        raise ScoresFileError(f"{path} is not a scores record: it lacks {', '.join(missing)}")
    return metadata


def read_scores(folder: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """(scores [count] float32, metadata) of a folder `write_scores` wrote; `ScoresFileError` naming the
    file when one is missing, truncated or changed (the .npy's sha256 must match the record's)."""
    metadata, path = read_metadata(folder), Path(folder) / SCORES_FILE
    if not path.is_file() or _sha256(path) != metadata["sha256"]:
        raise ScoresFileError(
            f"{path} is missing, truncated or changed: its sha256 is not the one in "
            f"{Path(folder) / METADATA_FILE}; delete both files to score again"
        )
    scores = np.load(path, allow_pickle=False)
    if scores.dtype != np.float32 or scores.shape != (metadata["count"],):
        raise ScoresFileError(f"{path} holds {scores.dtype} {scores.shape}, not float32 ({metadata['count']},)")
    return scores, metadata


def _differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The fields (MATCHED_FIELDS, the teacher's fingerprint) in which two scores records differ."""
    fields = [field for field in MATCHED_FIELDS if saved[field] != wanted[field]]
    if saved["teacher"].get("fingerprint") != wanted["teacher"]["fingerprint"]:
        fields.append("teacher fingerprint")
    return fields


def scores_for(
    model: Model, params: Params, teacher_record: Mapping[str, Any], scoring: Scoring, scores_dir: str | os.PathLike
) -> np.ndarray:
    """The split's scores: read from `scores_dir` when its record matches, else scored and written there."""
    wanted = scoring.metadata(teacher_record)
    if (Path(scores_dir) / METADATA_FILE).exists():
        scores, saved = read_scores(scores_dir)
        differing = _differences(saved, wanted)
        if not differing:
            logging.info("SALT_DS: reusing %d scores from %s", len(scores), scores_dir)
            return scores
        logging.info("SALT_DS: the scores in %s differ in %s; scoring again", scores_dir, ", ".join(differing))
    started = time.perf_counter()
    scores = score_split(model, params, scoring)
    write_scores(
        scores_dir,
        scores,
        {
            **wanted,
            "seconds": round(time.perf_counter() - started, 3),
            "flops": scoring_flops(model, scoring, len(scores)),
        },
    )
    return scores


def store_scores(labels_dir: str | os.PathLike, scoring: Scoring, scores_dir: str | os.PathLike) -> np.ndarray:
    """The split's scores from a teacher-label store of it (`littlehelp.data.teacher_labels`): each
    example's median of -log p(true token) over its tokens of rank < top_k, the same scores as
    `score_split`'s, with no teacher pass. Written to `scores_dir` with the store's teacher and the
    FLOPs of the pass that built it. Refuses a store of another split or sequence length, or of
    another Task than `scoring.task` (or the Task it labels), by name."""
    manifest, records = teacher_labels.read_store(labels_dir)
    labelled = teacher_labels.store_of(scoring.task, scoring.split)
    same_task = scoring.task == manifest["task"] or (labelled is not None and Path(labelled) == Path(labels_dir))
    if not same_task or (manifest["split"], manifest["sequence_length"]) != (scoring.split, scoring.sequence_length):
        raise ConfigError(
            f"SALT_DS: label store {labels_dir} holds {manifest['task']}:{manifest['split']} at "
            f"{manifest['sequence_length']}, not {scoring.task}:{scoring.split} at {scoring.sequence_length}"
        )
    scores = np.array(
        [_median_kept(-r["target_log_prob"], r["target_rank"] < scoring.top_k) for r in records.as_numpy_iterator()],
        np.float32,
    )
    record = {**scoring.metadata(manifest["teacher"]), "seconds": 0.0, "flops": manifest["flops"]}
    write_scores(scores_dir, scores, record | {"labels_dir": str(labels_dir)})
    return scores


def _median_kept(values: np.ndarray, keep: np.ndarray) -> float:
    """The median of `values` where `keep` (the mean of the two middle values for an even count), 0 for none."""
    kept = np.sort(values[keep].astype(np.float32))
    if not len(kept):
        return 0.0
    return float(np.float32(0.5) * (kept[(len(kept) - 1) // 2] + kept[len(kept) // 2]))


# ----------------------------------------------------------------------------------------------
# Selection.


def _check_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"SALT_DS fraction must be in (0, 1], got {fraction!r}")


def _check_task(scoring: Scoring, teacher: frozen.FrozenModel | None) -> None:
    """Refuses a Mixture, an unknown Task or split, a Task that is not a decoder LM one, and a teacher
    with fewer vocabulary ids than the Task's targets (a padded one, as 8100 ids in 8192, is fine)."""
    if scoring.task in seqio.MixtureRegistry.names():
        raise ConfigError(
            f"SALT_DS selects from a Task's split, and {scoring.task!r} is a Mixture; select from each of its Tasks"
        )
    validation.check_known("task", [scoring.task], seqio.TaskRegistry.names(), known_as="registered Tasks")
    task = seqio.get_mixture_or_task(scoring.task)
    validation.check_known("split", [scoring.split], task.splits, known_as=f"splits of {scoring.task!r}")
    if set(task.output_features) != {TARGETS}:
        raise ConfigError(
            f"SALT_DS scores decoder LM Tasks (one 'targets' feature); {scoring.task!r} has "
            f"features {sorted(task.output_features)}"
        )
    vocabulary = task.output_features[TARGETS].vocabulary
    vocab.load_vocabulary(vocabulary)
    if teacher is not None and teacher.model.config.vocab_size < vocabulary.vocab_size:
        raise ConfigError(
            f"SALT_DS teacher vocabulary size {teacher.model.config.vocab_size} is smaller than "
            f"task {scoring.task!r}'s vocabulary size {vocabulary.vocab_size}"
        )


def selected_count(fraction: float, count: int) -> int:
    """How many of `count` sequences a `fraction` keeps: the nearest integer, halves up, at least 1."""
    return max(1, math.floor(fraction * count + 0.5))


def select(
    scoring: Scoring,
    teacher: frozen.FrozenModel | None,
    scores_dir: str | os.PathLike,
    fraction: float = DEFAULT_FRACTION,
    name: str | None = None,
    labels_dir: str | os.PathLike | None = None,
) -> stage.StageResult:
    """Scores `scoring`'s split with `teacher` (or reads the scores from `scores_dir`, or computes them
    from the teacher-label store `labels_dir` instead of running a teacher), keeps the `fraction`
    highest and registers them as Task `name` (default `{task}_salt_ds_{fraction}`). Selecting from a
    labelled Task keeps each selected example's stored labels.

    The fraction, the Task, split and vocabulary sizes, and a non-empty split are checked before the
    teacher is read.
    """
    _check_fraction(fraction)
    if (teacher is None) == (labels_dir is None):
        raise ConfigError("SALT_DS needs a teacher or a teacher-label store (labels_dir), one of the two")
    _check_task(scoring, teacher)
    first = stage.read_examples(scoring.task, scoring.split, 1, scoring.sequence_length)
    validation.check_rows(f"split {scoring.split!r} of task {scoring.task!r}", len(first))
    if labels_dir is not None:
        scores = store_scores(labels_dir, scoring, scores_dir)
    else:
        assert teacher is not None
        example = {DECODER_INPUT_TOKENS: np.zeros((1, scoring.sequence_length[TARGETS]), np.int32)}
        params, record = frozen.load_on_one_device(teacher, example)
        scores = scores_for(teacher.model, params, record, scoring, scores_dir)
    return stage.select_from_scores(
        scoring.task,
        {"scores": scores},
        "highest_score",
        selected_count(fraction, len(scores)),
        name=name or default_name(scoring, fraction),
        split=scoring.split,
        sequence_length=scoring.sequence_length,
    )


def default_name(scoring: Scoring, fraction: float) -> str:
    """`{task}_salt_ds_{fraction}`, e.g. 'shakespeare_lm_salt_ds_0.5'."""
    return f"{scoring.task}_salt_ds_{fraction:g}"


# Selections made through `selected_task` in this process: Task name -> the arguments that made it.
_SELECTED: dict[str, tuple] = {}


@gin.configurable(module="salt")
def selected_task(
    task: str = gin.REQUIRED,
    teacher: frozen.FrozenModel | None = None,
    sequence_length: Mapping[str, int] = gin.REQUIRED,
    scores_dir: str = gin.REQUIRED,
    fraction: float = DEFAULT_FRACTION,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 32,
    split: str = "train",
    name: str | None = None,
    chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
    log_every: int = 100,
    labels_dir: str | None = None,
) -> str:
    """gin entry point: `TASK = @salt.selected_task()`; selects once per process (a run's train and
    evaluation data may both ask) and returns the new Task's name (see `select`; a `teacher` or a
    `labels_dir`)."""
    scoring = Scoring(task, sequence_length, split, top_k, batch_size, chunk_size, log_every)
    task_name = name or default_name(scoring, fraction)
    key = (task, teacher, scoring.sequence_length[TARGETS], str(scores_dir), fraction, top_k, split, labels_dir)
    if _SELECTED.get(task_name) != key or task_name not in seqio.TaskRegistry.names():
        select(scoring, teacher, scores_dir, fraction, task_name, labels_dir)
        _SELECTED[task_name] = key
    return task_name
