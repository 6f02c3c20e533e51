"""Selection as a seqio pipeline stage: score a Task's examples, select some, register a new Task.

    name = active.stage.select_task("docstrings_lm", scorer=my_scorer, selector="margin", budget=512)
    # `name` ("docstrings_lm_margin_512") now trains in any run: --gin.TASK=...

A scorer is a model callable: it takes a list of preprocessed examples (dicts of numpy arrays, as
the Task yields them) and returns per-example scores, a mapping with any of "probabilities"
[n, classes], "embeddings" [n, d], "second_probabilities" [n, classes], "scores" [n] (one number
per example, for `highest_score`) and "labels" [n] (each example's true class, for `iwes_dis`).
The stage builds the selector's `Pool` from them (BADGE's gradient embeddings from probabilities
and embeddings; Cluster-Margin's clusters once from the embeddings) and runs the selector.

The new Task holds the selected examples after the source Task's preprocessing, in source order,
under the same output features; its other splits are the source Task's, unchanged. Importance
weights (IWeS) travel with the examples as feature `example_weight`: the feature converters spread
it over each example's target tokens (packed or not) and the objectives weight its loss by it.
Stochastic preprocessing of the source is fixed at the draw made while scoring.

Scores computed beforehand by streaming the split (one row per example, in the split's unshuffled
order; SALT_DS's teacher-loss medians are one such field, "scores") select without reading the
examples into memory: `select_from_scores` registers the chosen positions (`register_positions`),
and each read of the new Task filters the source stream by position. That needs a source whose
preprocessing is deterministic (position i is the same example on every read).

From gin (the run file imports this module and sets the values it needs):

    import active.stage
    TASK = @stage.select_task()
    stage.select_task.task = 'docstrings_lm'
    stage.select_task.scorer = @my_scorer      # a gin-registered scorer
    stage.select_task.budget = 512
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import numpy as np
import seqio
import tensorflow as tf

from active import loop, validation
from active.clustering import cluster_margin_clusters
from active.selectors import Pool, Selection, Selector, gradient_embeddings, make_selector
from littlehelp.data import derived_tasks
from littlehelp.data.pipeline import EXAMPLE_WEIGHT

Example = Mapping[str, np.ndarray]
Scorer = Callable[[Sequence[Example]], Mapping[str, np.ndarray]]
SCORE_FIELDS = ("probabilities", "embeddings", "second_probabilities", "scores", "labels")


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a selection produced: the new Task and where its examples came from."""

    task_name: str
    source_task: str
    split: str
    pool_size: int
    indices: np.ndarray  # positions in the source split's (unshuffled) example order
    weights: np.ndarray | None  # each selected example's `example_weight` in the new Task (None: unweighted)
    selection_seconds: float


def read_examples(
    task: str, split: str = "train", max_examples: int | None = None, sequence_length: Mapping[str, int] | None = None
) -> list[dict[str, np.ndarray]]:
    """The first `max_examples` preprocessed examples of `task`'s split, in source order."""
    dataset = derived_tasks.source_split(seqio.get_mixture_or_task(task), split, sequence_length)
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    return list(dataset.as_numpy_iterator())


def score_examples(scorer: Scorer, examples: Sequence[Example], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Runs `scorer` over `examples` in batches and concatenates each returned field; refuses a field
    with NaN or Inf (selectors would pick from it silently)."""
    batches = [scorer(examples[start : start + batch_size]) for start in range(0, len(examples), batch_size)]
    unknown = sorted(set().union(*batches) - set(SCORE_FIELDS)) if batches else []
    if not batches or unknown or not batches[0]:
        raise validation.SelectionInputError(
            f"scorer must return a mapping with some of {SCORE_FIELDS}; got fields {unknown or 'none'}"
        )
    scores = {name: np.concatenate([np.asarray(b[name]) for b in batches]) for name in batches[0]}
    wrong = {name: len(value) for name, value in scores.items() if len(value) != len(examples)}
    if wrong:
        raise validation.SelectionInputError(f"scorer returned {wrong} rows for {len(examples)} examples")
    for name, value in scores.items():
        validation.check_finite(f"scorer's {name}", value)
    return scores


def pool_from_scores(
    scores: Mapping[str, np.ndarray], selector: Selector, budget: int, num_clusters: int | None = None, seed: int = 0
) -> Pool:
    """The Pool for `selector`: the scores, plus BADGE's gradient embeddings or Cluster-Margin's
    clusters (from the embeddings, `num_clusters` or `loop.default_num_clusters`) when it needs them."""
    fields = {name: scores[name] for name in SCORE_FIELDS if name in scores}
    needs = loop.pool_fields(selector)
    if "gradient_embeddings" in needs and {"probabilities", "embeddings"} <= set(fields):
        fields["gradient_embeddings"] = gradient_embeddings(fields["probabilities"], fields["embeddings"])
    if "cluster_ids" in needs and "embeddings" in fields:
        count = num_clusters or loop.default_num_clusters(len(fields["embeddings"]), budget)
        fields["cluster_ids"] = cluster_margin_clusters(fields["embeddings"], count, seed=seed)
    return Pool(**fields)


def register_subset(
    name: str,
    source_task: str,
    split: str,
    examples: Sequence[Example],
    sequence_length: Mapping[str, int] | None = None,
    weights: np.ndarray | None = None,
) -> seqio.Task:
    """Registers Task `name`: `examples` as its `split`, the source Task's other splits unchanged.

    Replaces an earlier Task of the same name. The examples must already be preprocessed by the
    source Task (as `read_examples` returns them); the new Task adds no preprocessing. With `weights`
    (positive, one per example) each example holds its weight as float32 feature `example_weight`.
    """
    source = seqio.get_mixture_or_task(source_task)
    signature = dict(derived_tasks.source_split(source, split, sequence_length).element_spec)
    stored = [dict(example) for example in examples]
    if weights is not None:
        weights = validation.check_weights(weights, len(stored))
        signature[EXAMPLE_WEIGHT] = tf.TensorSpec([], tf.float32)
        for example, weight in zip(stored, weights):
            example[EXAMPLE_WEIGHT] = np.float32(weight)
    selected = lambda: tf.data.Dataset.from_generator(lambda: iter(stored), output_signature=signature)  # noqa: E731
    return derived_tasks.register_with_splits(name, source, {split: selected}, sequence_length)


def register_positions(
    name: str,
    source_task: str,
    split: str,
    indices: np.ndarray,
    pool_size: int,
    sequence_length: Mapping[str, int] | None = None,
    weights: np.ndarray | None = None,
) -> seqio.Task:
    """Registers Task `name`: the examples at `indices` of the source's `split` (of `pool_size` examples),
    streamed; the source Task's other splits unchanged.

    Each read filters the first `pool_size` examples of the source split (unshuffled, one epoch,
    preprocessed at `sequence_length`) by position, holding one flag (and weight) per source example,
    never the examples; they keep source order. Replaces an earlier Task of the same name. `indices`
    are distinct positions in [0, pool_size); `weights` (positive, one per index) become feature
    `example_weight`.
    """
    source = seqio.get_mixture_or_task(source_task)
    indices = validation.check_positions(indices, pool_size)
    keep = np.zeros(pool_size, bool)
    keep[indices] = True
    weight_at = None
    if weights is not None:
        weight_at = np.zeros(pool_size, np.float32)
        weight_at[indices] = validation.check_weights(weights, len(indices))
    selected = lambda: _at_positions(derived_tasks.source_split(source, split, sequence_length), keep, weight_at)  # noqa: E731
    return derived_tasks.register_with_splits(name, source, {split: selected}, sequence_length)


def _at_positions(dataset: tf.data.Dataset, keep: np.ndarray, weight_at: np.ndarray | None) -> tf.data.Dataset:
    """The examples of `dataset` at the positions where `keep` is True (with `example_weight` from `weight_at`)."""
    flags = tf.constant(keep)
    kept = dataset.take(len(keep)).enumerate().filter(lambda i, _: tf.gather(flags, i))
    if weight_at is None:
        return kept.map(lambda _, example: example)
    weights = tf.constant(weight_at)
    return kept.map(lambda i, example: {**example, EXAMPLE_WEIGHT: tf.gather(weights, i)})


def select(
    task: str,
    scorer: Scorer,
    selector: str | Selector,
    budget: int,
    *,
    name: str | None = None,
    split: str = "train",
    seed: int = 0,
    max_examples: int | None = None,
    sequence_length: Mapping[str, int] | None = None,
    selector_kwargs: Mapping[str, Any] | None = None,
    num_clusters: int | None = None,
    score_batch_size: int = 256,
) -> StageResult:
    """Scores `task`'s `split` with `scorer`, selects `budget` examples, registers them as Task `name`
    (default `{task}_{selector}_{budget}`) and returns what was selected.

    The selector name, the budget (a positive integer, at most the pool size) and a non-empty pool
    are checked before the scorer runs.
    """
    if isinstance(selector, str):
        selector = make_selector(selector, **dict(selector_kwargs or {}))
    validation.check_integer("budget", budget, 1)
    examples = read_examples(task, split, max_examples, sequence_length)
    validation.check_rows(f"the pool (task {task!r}, split {split!r})", len(examples))
    validation.check_budget(budget, len(examples))
    scores = score_examples(scorer, examples, score_batch_size)
    started = time.perf_counter()
    pool = pool_from_scores(scores, selector, budget, num_clusters, seed)
    chosen: Selection = selector.select(pool, budget, np.random.default_rng(seed))
    seconds = time.perf_counter() - started
    task_name = name or f"{task}_{selector.name}_{budget}"
    register_subset(task_name, task, split, [examples[i] for i in chosen.indices], sequence_length, chosen.weights)
    return StageResult(task_name, task, split, len(examples), np.asarray(chosen.indices), chosen.weights, seconds)


def select_from_scores(
    task: str,
    scores: Mapping[str, np.ndarray],
    selector: str | Selector,
    budget: int,
    *,
    name: str,
    split: str = "train",
    seed: int = 0,
    sequence_length: Mapping[str, int] | None = None,
    selector_kwargs: Mapping[str, Any] | None = None,
    num_clusters: int | None = None,
) -> StageResult:
    """Selects `budget` examples of `task`'s `split` from `scores` computed beforehand (fields of
    SCORE_FIELDS, one row per example of the split in its unshuffled order) and registers them as Task
    `name` by position (`register_positions`); the split itself is not read here."""
    if isinstance(selector, str):
        selector = make_selector(selector, **dict(selector_kwargs or {}))
    validation.check_known("score field", scores, SCORE_FIELDS, known_as="known fields")
    validation.check_integer("budget", budget, 1)
    started = time.perf_counter()
    pool = pool_from_scores(scores, selector, budget, num_clusters, seed)
    chosen: Selection = selector.select(pool, budget, np.random.default_rng(seed))
    seconds = time.perf_counter() - started
    register_positions(name, task, split, chosen.indices, pool.size, sequence_length, chosen.weights)
    return StageResult(name, task, split, pool.size, np.asarray(chosen.indices), chosen.weights, seconds)


# Selections made through `select_task` in this process: Task name -> the arguments that made it.
_SELECTED: dict[str, tuple] = {}


@gin.configurable(module="stage")
def select_task(
    task: str = gin.REQUIRED,
    scorer: Scorer = gin.REQUIRED,
    budget: int = gin.REQUIRED,
    selector: str = "margin",
    name: str | None = None,
    split: str = "train",
    seed: int = 0,
    max_examples: int | None = None,
    selector_kwargs: Mapping[str, Any] | None = None,
    num_clusters: int | None = None,
) -> str:
    """gin entry point: `TASK = @stage.select_task()`; selects once per process and returns the
    new Task's name (a run's train and validation data configs may both ask for it)."""
    task_name = name or f"{task}_{selector}_{budget}"
    key = (
        task,
        scorer,
        budget,
        selector,
        split,
        seed,
        max_examples,
        tuple(sorted(dict(selector_kwargs or {}).items())),
        num_clusters,
    )
    if _SELECTED.get(task_name) != key or task_name not in seqio.TaskRegistry.names():
        select(
            task,
            scorer,
            selector,
            budget,
            name=task_name,
            split=split,
            seed=seed,
            max_examples=max_examples,
            selector_kwargs=selector_kwargs,
            num_clusters=num_clusters,
        )
        _SELECTED[task_name] = key
    return task_name
