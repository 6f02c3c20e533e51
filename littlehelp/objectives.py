"""Objectives (what a train step minimises) and the Curriculum that picks one per step.

An Objective owns the model(s) it needs. Parameters live in one dict keyed by model name
(`{"model": ...}` for the plain objectives), so objectives that share a model share its weights and
its optimizer state. The trainer compiles one step per distinct Objective and switches between them
at step boundaries; a term whose weight is zero is never traced, so it costs nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import gin
import jax
import jax.numpy as jnp

from littlehelp import flops, losses
from littlehelp.config import ConfigError
from littlehelp.features import (
    DECODER_LOSS_WEIGHTS,
    DECODER_TARGET_TOKENS,
    TEACHER_IDS,
    TEACHER_LOG_PROBS,
    TEACHER_LOG_REST,
)
from littlehelp.models import Model
from littlehelp.typing import Batch, BatchSpec, Metrics, Params


@runtime_checkable
class Objective(Protocol):
    """What a subclass must implement.

    `loss` returns the mean loss of the batch and metrics that include "weight", the loss's
    denominator (e.g. the number of target tokens); the trainer uses it to combine microbatches
    exactly. Every metric is a mean over that weight.

    An objective may also set `trainable_keys`, the models it trains (default: every model in the
    state); the trainer reads the others as constants and leaves their optimizer state alone.
    """

    name: str

    def init_params(self, rng: jax.Array, batch: Batch) -> Params:
        """Logically annotated (boxed) parameters, keyed by model name."""

    def loss(self, params: Params, batch: Batch, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, Metrics]:
        """Mean loss over the batch and metrics (including "weight")."""

    def train_flops(self, batch: BatchSpec) -> float:
        """Matrix-multiply FLOPs of one training step on a batch of these shapes (see flops.py)."""


EXAMPLE_WEIGHTS = "example_weights"  # optional feature [batch, length]: the weight of each target token's example


def token_weights(batch: Batch) -> jax.Array:
    """Per-token loss weights: `decoder_loss_weights`, times `example_weights` when present.

    The feature converters fill `example_weights` from a Task's per-example `example_weight` (each target
    token carries its example's weight, packed or not). A weight of 2 counts an example as twice (as
    repeating it would), 0 drops it.
    """
    weights = batch[DECODER_LOSS_WEIGHTS].astype(jnp.float32)
    if EXAMPLE_WEIGHTS in batch:
        weights = weights * batch[EXAMPLE_WEIGHTS].astype(jnp.float32)
    return weights


def stored_teacher_labels(batch: Batch) -> losses.TopKLabels:
    """The stored teacher labels a batch of a labelled Task carries (`littlehelp.data.teacher_labels`):
    ids and log-probabilities [b, l * k] reshaped to [b, l, k]; log-probabilities below
    `losses.EMPTY_BUCKET` (float16's -inf: an empty rest) read as it."""
    missing = [name for name in (TEACHER_IDS, TEACHER_LOG_PROBS, TEACHER_LOG_REST) if name not in batch]
    if missing:
        raise ConfigError(
            f"the batch has no stored teacher labels ({', '.join(missing)}): train on a labelled Task "
            "(teacher_labels.labelled_task) or give the objective a teacher"
        )
    log_rest = batch[TEACHER_LOG_REST]
    slots = lambda x: x.reshape(*log_rest.shape, -1)  # noqa: E731  [b, l * k] -> [b, l, k]
    floor = lambda x: jnp.maximum(x.astype(jnp.float32), losses.EMPTY_BUCKET)  # noqa: E731
    ids, log_probs = slots(batch[TEACHER_IDS]), slots(batch[TEACHER_LOG_PROBS])
    return losses.TopKLabels(ids, floor(log_probs), floor(log_rest))


def token_metrics(sums: losses.TokenLossSums, total: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """(mean loss, metrics) from a batch's weighted token sums: the metrics every token objective reports,
    "loss", "cross_entropy", "z_loss", "accuracy" (means over the weighted tokens) and "weight" (their
    count, the loss's denominator). The loss is `total` / weight, `total` defaulting to the cross-entropy
    plus z-loss sums; a method objective with a loss of its own (a distillation mixture) passes its sum."""
    weight = jnp.maximum(sums.weight, 1.0)
    loss = (sums.cross_entropy + sums.z_loss if total is None else total) / weight
    return loss, {
        "loss": loss,
        "cross_entropy": sums.cross_entropy / weight,
        "z_loss": sums.z_loss / weight,
        "accuracy": sums.correct / weight,
        "weight": sums.weight,
    }


class _TokenObjective:
    """Cross-entropy (+ z-loss) of one model's logits against `decoder_target_tokens`.

    The model is any `littlehelp.models.Model` (e.g. `@models.build_model()` in gin); its
    parameters live under `model_key`.
    """

    kind = ""

    def __init__(self, model: Model, z_loss: float, model_key: str):
        self.model = model
        self.config = model.config
        self.z_loss = z_loss
        self.model_key = model_key
        self.trainable_keys = (model_key,)
        self.name = f"{self.kind}[{model_key}]"

    def init_params(self, rng: jax.Array, batch: Batch) -> Params:
        return {self.model_key: self.model.init(rng, batch)}

    def loss(self, params: Params, batch: Batch, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, Metrics]:
        logits = self.model.logits(params[self.model_key], batch, rng)
        sums = losses.cross_entropy_with_z_loss(logits, batch[DECODER_TARGET_TOKENS], token_weights(batch), self.z_loss)
        return token_metrics(sums)

    def train_flops(self, batch: BatchSpec) -> float:
        return flops.TRAIN_MULTIPLIER * self.model.forward_flops(batch)


@gin.configurable
class EncoderDecoderObjective(_TokenObjective):
    """Cross-entropy (+ z-loss) of an encoder-decoder on seqio's encoder-decoder features."""

    kind = "encoder_decoder"

    def __init__(self, model: Model = gin.REQUIRED, z_loss: float = 1e-4, model_key: str = "model"):
        super().__init__(model, z_loss, model_key)


@gin.configurable
class DecoderObjective(_TokenObjective):
    """Next-token cross-entropy (+ z-loss) of a decoder-only LM on seqio's LM features."""

    kind = "decoder"

    def __init__(self, model: Model = gin.REQUIRED, z_loss: float = 1e-4, model_key: str = "model"):
        super().__init__(model, z_loss, model_key)


@gin.configurable
class WeightedSum:
    """A weighted sum of objectives: loss = sum_i w_i * loss_i.

    Terms with weight 0 are dropped when the objective is built, so they are never traced or run.
    The combined "weight" metric is the first term's (the primary loss's denominator); each term's
    metrics are reported under its name.
    """

    def __init__(self, terms: Mapping[str, tuple[Objective, float]] = gin.REQUIRED):
        self.terms = {name: (obj, float(w)) for name, (obj, w) in terms.items() if float(w) != 0.0}
        if not self.terms:
            raise ValueError(f"WeightedSum: every term has weight 0: {list(terms)}")
        self.name = "+".join(f"{w:g}*{name}" for name, (_, w) in self.terms.items())
        keys = [getattr(objective, "trainable_keys", None) for objective, _ in self.terms.values()]
        known = [k for k in keys if k is not None]
        self.trainable_keys = tuple(dict.fromkeys(k for ks in known for k in ks)) if len(known) == len(keys) else None

    def init_params(self, rng: jax.Array, batch: Batch) -> Params:
        params: Params = {}
        for index, (objective, _) in enumerate(self.terms.values()):
            params.update(objective.init_params(jax.random.fold_in(rng, index), batch))
        return params

    def loss(self, params: Params, batch: Batch, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, Metrics]:
        total = jnp.zeros((), jnp.float32)
        metrics: Metrics = {}
        for index, (name, (objective, weight)) in enumerate(self.terms.items()):
            term, term_metrics = objective.loss(params, batch, jax.random.fold_in(rng, index), step)
            total = total + weight * term
            metrics.update({f"{name}/{key}": value for key, value in term_metrics.items()})
            metrics.setdefault("weight", term_metrics["weight"])
        metrics["loss"] = total
        return total, metrics

    def train_flops(self, batch: BatchSpec) -> float:
        return sum(objective.train_flops(batch) for objective, _ in self.terms.values())


@gin.configurable
class Curriculum:
    """Maps a training step to the Objective active at that step.

    `stages` is a list of (first_step, objective) sorted by first_step, the first starting at 0:
    e.g. `[(0, hybrid), (tau, span_corruption)]`. Parameters are the union of every stage's.
    """

    def __init__(self, stages: Sequence[tuple[int, Objective]] = gin.REQUIRED):
        starts = [int(start) for start, _ in stages]
        if not stages or starts[0] != 0 or starts != sorted(set(starts)):
            raise ValueError(f"Curriculum.stages must start at step 0 and strictly increase, got {starts}")
        self.starts = starts
        self.objectives = [objective for _, objective in stages]

    @classmethod
    def single(cls, objective: Objective) -> Curriculum:
        """A curriculum that uses one objective throughout."""
        return cls([(0, objective)])

    def objective_at(self, step: int) -> Objective:
        """The objective in force at `step`."""
        return self.objectives[bisect.bisect_right(self.starts, step) - 1]

    def next_switch(self, step: int) -> int | None:
        """The first step after `step` at which the objective changes, if any."""
        index = bisect.bisect_right(self.starts, step)
        return self.starts[index] if index < len(self.starts) else None

    def init_params(self, rng: jax.Array, batch: Batch) -> Params:
        """The union of every stage's parameters (a model shared by stages is initialised once)."""
        params: Params = {}
        for index, objective in enumerate(self.objectives):
            for key, value in objective.init_params(jax.random.fold_in(rng, index), batch).items():
                params.setdefault(key, value)
        return params
