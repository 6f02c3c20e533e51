"""The training loop: compiled, sharded steps per Objective; metrics, evaluation and checkpoints.

One jitted step per distinct Objective of the Curriculum, with explicit in/out shardings and the
state donated. The loop switches steps at stage boundaries, checks every loss for NaN/Inf before the
state it produced can be saved, evaluates periodically, and checkpoints every N steps, on SIGTERM and
at the end. Data position is part of the checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from littlehelp import checkpoints, partitioning
from littlehelp import config as gin_config
from littlehelp.data import DatasetConfig, GlobalBatches, derived_tasks, pipeline
from littlehelp.errors import EXIT_PREEMPTED, LittlehelpError
from littlehelp.features import DECODER_TARGET_TOKENS, ENCODER_INPUT_TOKENS
from littlehelp.frozen import FrozenModel, check_and_record, load_frozen_models
from littlehelp.metrics import MetricsWriter, measure_matmul_flops
from littlehelp.objectives import Curriculum, Objective
from littlehelp.optimizers import Optimizer
from littlehelp.profiling import ProfileWindow, StepTimes, check_profile_steps
from littlehelp.train_state import StateLayout, TrainState, init_optimizer, init_state, params_layout, state_layout
from littlehelp.typing import Batch, Metrics, Params

StepFn = Callable[[TrainState, Params, Batch, jax.Array], tuple[TrainState, Metrics]]


class NonFiniteLossError(LittlehelpError, FloatingPointError):
    """Raised when a step's loss, or a state about to be saved, holds NaN or Inf; it is never saved."""


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What a finished (or stopped) run did."""

    model_dir: str
    first_step: int
    last_step: int
    final_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    preempted: bool

    @property
    def exit_code(self) -> int:
        """The CLI's exit status: 0 when finished, `EXIT_PREEMPTED` (75) when stopped by SIGTERM."""
        return EXIT_PREEMPTED if self.preempted else 0

    def describe(self) -> str:
        """A few lines for the end of a run: what happened and where to look."""
        how = "stopped by SIGTERM" if self.preempted else "finished"
        lines = [f"Run {how}: steps {self.first_step} -> {self.last_step} in {self.model_dir}"]
        for name, values in (("train", self.final_metrics), ("eval", self.eval_metrics)):
            if values:
                shown = ", ".join(f"{k} {values[k]:.4g}" for k in ("loss", "accuracy") if k in values)
                lines.append(f"  last {name}: {shown}")
        lines.append(f"  checkpoints: {self.model_dir}/checkpoints   config: {self.model_dir}/config.gin")
        events = f"{self.model_dir}/tensorboard"
        viewer = (
            f"tensorboard --logdir {events}"
            if tensorboard_installed()
            else (f"event files: {events} (to view them: pip install tensorboard)")
        )
        lines.append(f"  metrics: {self.model_dir}/metrics.jsonl   {viewer}")
        return "\n".join(lines)


def tensorboard_installed() -> bool:
    """Whether the `tensorboard` viewer is importable (the project writes its event files with tensorboardX
    but does not install it)."""
    return importlib.util.find_spec("tensorboard") is not None


def microbatched_value_and_grad(
    loss_fn: Callable[..., tuple[jax.Array, Metrics]], microbatches: int
) -> Callable[..., tuple[Metrics, Any]]:
    """Gradient of `loss_fn(params, *constants, batch, rng, step)` with respect to `params`, over a
    batch accumulated in `microbatches` equal slices.

    Each slice's mean loss, gradient and metrics are weighted by its "weight" metric (the loss's
    denominator), so the result equals the full-batch gradient of the full-batch mean loss.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:

        def full(params, *constants_batch_rng_step):
            (_, metrics), grads = grad_fn(params, *constants_batch_rng_step)
            return metrics, grads

        return full

    def accumulated(params, *constants_batch_rng_step):
        *constants, batch, rng, step = constants_batch_rng_step
        slices = jax.tree.map(lambda x: x.reshape((microbatches, -1) + x.shape[1:]), batch)

        def body(carry, inputs):
            index, micro = inputs
            (_, metrics), grads = grad_fn(params, *constants, micro, jax.random.fold_in(rng, index), step)
            weight = metrics["weight"]
            weighted = {k: v if k == "weight" else v * weight for k, v in metrics.items()}
            scaled = jax.tree.map(lambda g: g * weight, grads), weighted
            return jax.tree.map(jnp.add, carry, scaled), None

        zero = jax.tree.map(jnp.zeros_like, params)
        (_, probe), _ = jax.eval_shape(grad_fn, params, *constants, jax.tree.map(lambda x: x[0], slices), rng, step)
        zero_metrics = {k: jnp.zeros(v.shape, v.dtype) for k, v in probe.items()}
        (grads, sums), _ = jax.lax.scan(body, (zero, zero_metrics), (jnp.arange(microbatches), slices))
        total = jnp.maximum(sums["weight"], 1e-9)
        metrics = {k: v if k == "weight" else v / total for k, v in sums.items()}
        return metrics, jax.tree.map(lambda g: g / total, grads)

    return accumulated


def trained_keys(objective: Objective, params: Params) -> tuple[str, ...]:
    """The models `objective` updates: its `trainable_keys` attribute if it has one, else all."""
    keys = tuple(getattr(objective, "trainable_keys", None) or params)
    unknown = sorted(set(keys) - set(params))
    if unknown:
        raise ValueError(f"{objective.name}: trainable_keys {unknown} are not among the models {sorted(params)}")
    return keys


def make_train_step(objective: Objective, optimizer: Optimizer, microbatches: int = 1) -> StepFn:
    """The (unjitted) train step for one objective: gradients, update, metrics.

    Only the models in `trained_keys` get gradients and updates; the others, and the frozen models'
    parameters (an argument of the step, not part of the state), are read as constants.
    """

    def loss_of_trained(trained: Params, frozen: Params, batch: Batch, rng: jax.Array, step: jax.Array):
        return objective.loss({**frozen, **trained}, batch, rng, step)

    value_and_grad = microbatched_value_and_grad(loss_of_trained, microbatches)

    def train_step(
        state: TrainState, frozen_models: Params, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(rng, state.step)
        keys = trained_keys(objective, state.params)
        trained = {k: v for k, v in state.params.items() if k in keys}
        frozen = {k: v for k, v in state.params.items() if k not in keys} | dict(frozen_models)
        metrics, grads = value_and_grad(trained, frozen, batch, rng, state.step)
        metrics = dict(metrics, grad_norm=_global_norm(grads), learning_rate=optimizer.schedule(state.step))
        return state.apply_gradients(grads, optimizer.tx), metrics

    return train_step


def _global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def compile_train_step(
    step_fn: StepFn,
    layout: StateLayout,
    batch_spec: Mapping[str, jax.ShapeDtypeStruct],
    mesh: Mesh,
    rules: partitioning.LogicalRules,
    frozen_abstract: Params | None = None,
):
    """Compiles `step_fn` ahead of time for the state layout, the frozen models' abstract
    parameters (with their shardings) and batch shapes (no data needed). The state is donated."""
    frozen_abstract = frozen_abstract or {}
    batch_shardings = {k: partitioning.batch_sharding(mesh) for k in batch_spec}
    frozen_shardings = jax.tree.map(lambda leaf: leaf.sharding, frozen_abstract)
    jitted = jax.jit(
        step_fn,
        in_shardings=(layout.shardings, frozen_shardings, batch_shardings, partitioning.replicated(mesh)),
        out_shardings=(layout.shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,),
    )
    batch_abstract = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k]) for k, v in batch_spec.items()
    }
    key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: the mesh's devices may be a topology's
    rng_abstract = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=partitioning.replicated(mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jitted.lower(layout.abstract_state, frozen_abstract, batch_abstract, rng_abstract).compile()


def batch_spec(config: DatasetConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes and dtypes of the batches a DatasetConfig yields, from its feature converter and
    the features a derived Task carries (example weights, stored teacher labels), without reading the data."""
    converter = pipeline.FEATURE_CONVERTERS[config.feature_converter](pack=config.pack)
    converter.carry(derived_tasks.extra_features(config.name))
    lengths = converter.get_model_feature_lengths(dict(config.task_feature_lengths))
    dtypes = {name: np.dtype(spec.dtype.as_numpy_dtype) for name, spec in converter.MODEL_FEATURES.items()}
    return {
        name: jax.ShapeDtypeStruct((config.batch_size, length), dtypes.get(name, np.dtype(np.int32)))
        for name, length in lengths.items()
    }


def example_batch(data: DatasetConfig) -> dict[str, jax.Array]:
    """A one-row batch of zeros with `data`'s feature shapes (for initialisers)."""
    return {k: jnp.zeros((1,) + v.shape[1:], v.dtype) for k, v in batch_spec(data).items()}


def check_batch_divisible(train_data: DatasetConfig, mesh: Mesh, microbatches: int) -> None:
    """Refuses a global batch that the mesh's data x fsdp devices times `microbatches` do not divide."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if train_data.batch_size % (shards * microbatches):
        raise gin_config.ConfigError(
            f"DatasetConfig.batch_size={train_data.batch_size} must be divisible by the mesh's data x fsdp "
            f"= {shards} devices times microbatches={microbatches}"
        )


def tokens_per_batch(spec: Mapping[str, jax.ShapeDtypeStruct]) -> int:
    """Encoder plus decoder token positions in one batch (the throughput convention)."""
    names = (ENCODER_INPUT_TOKENS, DECODER_TARGET_TOKENS)
    return sum(int(np.prod(spec[n].shape)) for n in names if n in spec)


class Trainer:
    """Owns the mesh, the compiled steps, the state and the checkpointer of one run, and the
    parameters of its frozen models (read, never trained or saved; see `littlehelp.frozen`)."""

    def __init__(
        self,
        model_dir: str,
        curriculum: Curriculum,
        optimizer: Optimizer,
        train_data: DatasetConfig,
        mesh: Mesh,
        rules: partitioning.LogicalRules,
        checkpoint_config: checkpoints.CheckpointConfig,
        microbatches: int = 1,
        seed: int = 0,
        frozen_models: Mapping[str, FrozenModel] | None = None,
        data_switches: Sequence[tuple[int, DatasetConfig]] = (),
    ):
        check_batch_divisible(train_data, mesh, microbatches)
        self.model_dir = Path(model_dir)
        self.curriculum, self.optimizer, self.train_data = curriculum, optimizer, train_data
        self.mesh, self.rules, self.microbatches, self.seed = mesh, rules, microbatches, seed
        self.batch_spec = batch_spec(train_data)
        self.data_stages = _data_stages(train_data, data_switches)
        example = example_batch(train_data)
        self._init_params = lambda rng: curriculum.init_params(rng, example)
        self.layout = state_layout(self._init_params, optimizer.tx, mesh, rules)
        self._report_replicated()
        self.checkpointer = checkpoints.Checkpointer(str(self.model_dir / "checkpoints"), checkpoint_config)
        self.frozen = load_frozen_models(frozen_models or {}, example, mesh, rules)
        self._compiled: dict[int, Any] = {}
        self.evaluator = Evaluator(mesh, rules)

    def _report_replicated(self) -> None:
        found = partitioning.unsharded_but_shardable(
            self.layout.abstract_state.params, self.layout.logical_specs, self.mesh, self.rules
        )
        for param in found:
            logging.warning(
                "parameter %s %s (axes %s, %d bytes) is replicated: no rule's mesh axis divides it",
                param.path,
                param.shape,
                param.logical_axes,
                param.bytes,
            )

    def restore_or_init(self) -> tuple[TrainState, pipeline.ResumePoint]:
        """(state, data position): the latest good checkpoint, else the restore path, else fresh.

        A run initialised from the restore path (fine-tuning) reads its own data from batch 0.
        """
        from_restore_path = self.checkpointer.latest_step() is None
        restore_path = self.checkpointer.restore_path
        if from_restore_path and restore_path:
            saved_models, with_optimizer = checkpoints.saved_contents(restore_path)
            if not with_optimizer or self.checkpointer.restore_model is not None:
                return self._init_from_params(restore_path, saved_models), pipeline.ResumePoint(0)
        restored = self.checkpointer.restore(self.layout.abstract_state)
        if restored is None:
            logging.info("no checkpoint found: initialising from scratch (seed %d)", self.seed)
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                state = init_state(self._init_params, self.optimizer.tx, jax.random.key(self.seed), self.layout)
            return state, pipeline.ResumePoint(0)
        state, data_state, step = restored
        if from_restore_path:
            logging.info("initialised from the restore path at step %d; data starts at its first batch", step)
            return state, pipeline.ResumePoint(0)
        if data_state.get("seed", self.train_data.seed) != self.train_data.seed:
            logging.warning(
                "checkpoint data seed %s differs from the configured seed %s",
                data_state.get("seed"),
                self.train_data.seed,
            )
        return state, pipeline.resume_position(self.data_stages, step, data_state)

    def _init_from_params(self, path: str, saved_models: list[str]) -> TrainState:
        """A fresh optimizer on the parameters of a checkpoint's models (an imported model, or the
        `restore_model` of a training run), at its step.

        A run with one model reads `restore_model`, else a checkpoint's one model whatever its key;
        otherwise keys must match.
        """
        abstract = self.layout.abstract_state
        chosen = self.checkpointer.restore_model
        if chosen is not None and len(abstract.params) != 1:
            raise ValueError(
                f"CheckpointConfig.restore_model={chosen!r} needs a run of one model; this run has "
                f"{sorted(abstract.params)}"
            )
        if chosen is None and len(abstract.params) == 1 and len(saved_models) == 1:
            chosen = saved_models[0]
        rename = {key: chosen for key in abstract.params} if chosen is not None else None
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            params, step = checkpoints.restore_params(path, abstract.params, rename=rename)
            opt_state = jax.jit(
                lambda p: init_optimizer(self.optimizer.tx, p), out_shardings=self.layout.shardings.opt_state
            )(params)
            step = jax.device_put(jnp.asarray(step, jnp.int32), self.layout.shardings.step)
        logging.info(
            "initialised from the parameters in %s at step %d with a fresh optimizer; data starts at its first batch",
            path,
            int(step),
        )
        return TrainState(step=step, params=params, opt_state=opt_state)

    def step_fn(self, objective: Objective) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
        """`compiled_step(objective)` with the frozen models' parameters bound: (state, batch, rng)."""
        compiled, frozen = self.compiled_step(objective), self.frozen.params
        return lambda state, batch, rng: compiled(state, frozen, batch, rng)

    def compiled_step(self, objective: Objective) -> Any:
        """The compiled train step for `objective` (compiled once, on first use; XLA's cost analysis
        and memory analysis are on it)."""
        key = id(objective)
        if key not in self._compiled:
            start = time.perf_counter()
            step = make_train_step(objective, self.optimizer, self.microbatches)
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.frozen.params
            )
            self._compiled[key] = compile_train_step(
                step, self.layout, self.batch_spec, self.mesh, self.rules, abstract
            )
            logging.info("compiled the train step for %s in %.1fs", objective.name, time.perf_counter() - start)
        return self._compiled[key]

    def evaluate(
        self, state: TrainState, objective: Objective, data: DatasetConfig, max_batches: int
    ) -> dict[str, float]:
        """Weighted-mean metrics of `objective` over at most `max_batches` batches of `data`."""
        return self.evaluator(objective, {**self.frozen.params, **state.params}, state.step, data, max_batches)


class Evaluator:
    """Weighted-mean metrics of objectives on evaluation data; each loss is jitted once per objective."""

    def __init__(self, mesh: Mesh, rules: partitioning.LogicalRules):
        self.mesh, self.rules = mesh, rules
        self._loss_fns: dict[int, Callable] = {}

    def __call__(
        self, objective: Objective, params: Params, step: int | jax.Array, data: DatasetConfig, max_batches: int
    ) -> dict[str, float]:
        """Metrics of `objective` with `params` over at most `max_batches` batches of `data`."""
        key = id(objective)
        if key not in self._loss_fns:
            self._loss_fns[key] = jax.jit(lambda p, batch, s: objective.loss(p, batch, jax.random.key(0), s)[1])
        loss_fn = self._loss_fns[key]
        totals: dict[str, float] = {}
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for index, batch in enumerate(GlobalBatches(data, self.mesh)):
                if index >= max_batches:
                    break
                metrics = jax.device_get(loss_fn(params, batch, step))
                weight = float(metrics["weight"])
                for name, value in metrics.items():
                    totals[name] = totals.get(name, 0.0) + (weight if name == "weight" else float(value) * weight)
        if not totals:
            raise ValueError(f"evaluation data {data.name!r} split {data.split!r} yielded no full batch")
        weight = max(totals.pop("weight"), 1e-9)
        return {name: value / weight for name, value in totals.items()} | {"weight": weight}


def _data_stages(train_data: DatasetConfig, switches: Sequence[tuple[int, DatasetConfig]]) -> pipeline.DataStages:
    """[(0, train_data), *switches], refusing a switch whose batches are shaped unlike `train_data`'s."""
    stages = pipeline.check_data_stages([(0, train_data), *switches])
    expected = batch_spec(train_data)
    for start, config in stages[1:]:
        if batch_spec(config) != expected:
            raise gin_config.ConfigError(
                f"train.data_switches: the data from step {start} ({config.name}) has batches "
                f"{_shapes(batch_spec(config))}, unlike train_data's {_shapes(expected)}"
            )
    return stages


def _shapes(spec: Mapping[str, jax.ShapeDtypeStruct]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in spec.items()}


def _last_good(checkpointer: checkpoints.Checkpointer) -> str:
    checkpointer.wait_until_finished()
    last = checkpointer.latest_step()
    return (
        f"the last good checkpoint is step {last} in {checkpointer.directory}"
        if last is not None
        else "no checkpoint was saved"
    )


def _check_finite(metrics: Mapping[str, Any], step: int, checkpointer: checkpoints.Checkpointer) -> None:
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}: stopping; {_last_good(checkpointer)} (the bad state was not saved)"
        )


@jax.jit
def _finite_leaves(state: TrainState) -> Any:
    """One boolean per array of `state`: all of its values are finite (integer arrays always are)."""
    return jax.tree.map(
        lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True), state
    )


def nonfinite_arrays(state: TrainState) -> list[str]:
    """Tree paths of the arrays of `state` holding NaN or Inf (one fused reduction per array)."""
    flags = jax.tree_util.tree_flatten_with_path(jax.device_get(_finite_leaves(state)))[0]
    return [jax.tree_util.keystr(path) for path, finite in flags if not finite]


def _check_state_finite(state: TrainState, step: int, checkpointer: checkpoints.Checkpointer) -> None:
    """Refuses to save a state with NaN or Inf in its parameters or optimizer state (a finite loss
    can still produce one: the update itself may overflow)."""
    bad = nonfinite_arrays(state)
    if bad:
        total = len(jax.tree.leaves(state))
        raise NonFiniteLossError(
            f"the state after step {step - 1} has NaN or Inf in {len(bad)} of {total} arrays (first: {bad[0]}): "
            f"stopping; {_last_good(checkpointer)} (this state was not saved)"
        )


def _save_if_due(
    checkpointer: checkpoints.Checkpointer,
    step: int,
    state: TrainState,
    batches: pipeline.StagedBatches,
    force: bool = False,
) -> None:
    """Saves `state` and the input stream's position as `step` when the checkpointer would, after
    checking that the state is finite."""
    if checkpointer.will_save(step, force):
        _check_state_finite(state, step, checkpointer)
        checkpointer.save(step, state, batches.state(), force=force, iterator=batches.iterator_checkpoint())


def _check_run_arguments(steps: int, eval_every: int, eval_batches: int, log_every: int, microbatches: int) -> None:
    """Refuses non-integer, zero or negative counts of `train` before anything is built."""
    minimum = {"steps": 1, "eval_every": 0, "eval_batches": 1, "log_every": 1, "microbatches": 1}
    values = {
        "steps": steps,
        "eval_every": eval_every,
        "eval_batches": eval_batches,
        "log_every": log_every,
        "microbatches": microbatches,
    }
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum[name]:
            raise gin_config.ConfigError(f"train.{name} must be an integer >= {minimum[name]}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What shapes a run's compiled steps, as `train` resolved it from gin (`littlehelp compile` reads it)."""

    curriculum: Curriculum
    optimizer: Optimizer
    train_data: DatasetConfig
    mesh_config: partitioning.MeshConfig
    microbatches: int
    frozen_models: Mapping[str, FrozenModel]


@gin.configurable(denylist=["settings_only"])
def train(
    model_dir: str = gin.REQUIRED,
    train_data: DatasetConfig = gin.REQUIRED,
    steps: int = gin.REQUIRED,
    optimizer: Optimizer = gin.REQUIRED,
    objective: Objective | None = None,
    curriculum: Curriculum | None = None,
    eval_data: DatasetConfig | None = None,
    eval_every: int = 0,
    eval_batches: int = 10,
    log_every: int = 10,
    microbatches: int = 1,
    seed: int = 0,
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    checkpoint_config: checkpoints.CheckpointConfig = checkpoints.CheckpointConfig(),
    peak_flops_per_device: float | None = None,
    frozen_models: Mapping[str, FrozenModel] | None = None,
    data_switches: Sequence[tuple[int, DatasetConfig]] = (),
    profile_steps: tuple[int, int] | None = None,
    settings_only: bool = False,
) -> TrainSummary | TrainSettings:
    """Trains from gin: `littlehelp train --gin_file=...` calls this with every argument bound.

    Give either `objective` (one throughout) or `curriculum` (step -> objective).
    `peak_flops_per_device` is the MFU denominator; unset, it is measured (float32 matmul).
    MODEL_DIR is locked for the run (`checkpoints.RunLock`): a second trainer on it is refused.
    `frozen_models` are read, never trained or saved (`littlehelp.frozen`); objectives see their
    parameters under their names. `data_switches` [(step, data)]: from that step on, train on that data
    (its stream from its first batch; shaped like `train_data`), e.g. SALT_DS's selected sequences
    during distillation, then the whole task. `profile_steps=(START, END)` traces the steps from
    START to END with the JAX profiler into MODEL_DIR/profile (`littlehelp.profiling`).
    `settings_only=True` (not a gin binding) returns the resolved `TrainSettings` and builds nothing.
    """
    if (objective is None) == (curriculum is None):
        raise gin_config.ConfigError("train: bind exactly one of train.objective and train.curriculum")
    _check_run_arguments(steps, eval_every, eval_batches, log_every, microbatches)
    check_profile_steps(profile_steps, steps)
    if curriculum is None:
        assert objective is not None  # exactly one of the two is bound (checked above)
        curriculum = Curriculum.single(objective)
    if settings_only:
        return TrainSettings(curriculum, optimizer, train_data, mesh_config, microbatches, dict(frozen_models or {}))
    checkpoints.check_restore_path(model_dir, checkpoint_config)  # a refused fine-tune writes nothing
    with checkpoints.RunLock(model_dir):
        mesh = partitioning.make_mesh(mesh_config)
        rules = partitioning.logical_axis_rules()
        trainer = Trainer(
            model_dir,
            curriculum,
            optimizer,
            train_data,
            mesh,
            rules,
            checkpoint_config,
            microbatches,
            seed,
            frozen_models,
            data_switches,
        )
        check_and_record(model_dir, trainer.frozen)
        gin_config.write_operative_config(model_dir)
        peak = peak_flops_per_device or measure_matmul_flops()
        loop = _Loop(
            trainer,
            steps,
            eval_data,
            eval_every,
            eval_batches,
            log_every,
            peak * len(mesh.devices.flat),
            profile_steps,
        )
        summary = loop.run()
    print(summary.describe(), flush=True)
    return summary


@dataclasses.dataclass
class _Loop:
    """The step loop of `train`, split out so each part stays small."""

    trainer: Trainer
    steps: int
    eval_data: DatasetConfig | None
    eval_every: int
    eval_batches: int
    log_every: int
    peak_flops: float
    profile_steps: tuple[int, int] | None
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    def run(self) -> TrainSummary:
        trainer = self.trainer
        state, start = trainer.restore_or_init()
        first_step = int(state.step)
        if start.batch != first_step:
            logging.info(
                "data position %d differs from state step %d: continuing from the data position",
                start.batch,
                first_step,
            )
        logging.info("training steps %d -> %d in %s", first_step, self.steps, trainer.model_dir)
        batches = pipeline.StagedBatches(trainer.data_stages, trainer.mesh, first_step, start)
        writer = MetricsWriter(trainer.model_dir, self.steps, first_step)
        writer.drop_after(first_step)
        try:
            state, metrics, preempted = self._steps(state, first_step, batches, writer)
        finally:
            writer.close()
        step = int(state.step)
        _save_if_due(trainer.checkpointer, step, state, batches, force=True)
        trainer.checkpointer.close()
        return TrainSummary(str(trainer.model_dir), first_step, step, metrics, self.eval_metrics, preempted)

    def _steps(self, state: TrainState, first_step: int, batches: pipeline.StagedBatches, writer: MetricsWriter):
        trainer = self.trainer
        rng = jax.random.key(trainer.seed + 1)
        metrics: dict[str, float] = {}
        times, profile = StepTimes(), ProfileWindow(trainer.model_dir, self.profile_steps)
        with checkpoints.PreemptionGuard() as guard:
            try:
                for step in range(first_step, self.steps):
                    objective = trainer.curriculum.objective_at(step)
                    compiled = trainer.step_fn(objective)
                    if profile.starts_at(step, first_step):
                        for later in profile.steps:  # compiled before the trace starts
                            trainer.step_fn(trainer.curriculum.objective_at(later))
                        with times.paused():
                            profile.start()
                    state, metrics = self._one_step(compiled, state, step, batches, rng, times)
                    with times.paused():
                        profile.stop_after(step, state)
                    writer.advance()
                    _save_if_due(trainer.checkpointer, step + 1, state, batches)
                    if (step + 1) % self.log_every == 0 or step + 1 == self.steps:
                        metrics |= self._speed(objective, times)
                        writer.write(step + 1, metrics)
                        times.reset()
                    if self.eval_data is not None and self.eval_every and (step + 1) % self.eval_every == 0:
                        self.eval_metrics = trainer.evaluate(state, objective, self.eval_data, self.eval_batches)
                        writer.write(step + 1, self.eval_metrics, prefix="eval")
                    if guard.requested:
                        logging.warning("SIGTERM received: saving step %d and stopping", step + 1)
                        return state, metrics, True
            finally:
                profile.close()
        return state, metrics, False

    def _one_step(
        self,
        compiled: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]],
        state: TrainState,
        step: int,
        batches: pipeline.StagedBatches,
        rng: jax.Array,
        times: StepTimes,
    ) -> tuple[TrainState, dict[str, float]]:
        """Runs `step` (timing the wait for its batch) and returns the new state and its metrics."""
        if times.steps == 0:  # a new logging interval starts after any compilation
            times.reset()
        with jax.profiler.StepTraceAnnotation("train", step_num=step):  # a step marker for profiles
            waiting = time.perf_counter()
            batch = batches.batch_for(step)
            times.waited(time.perf_counter() - waiting)
            state, step_metrics = compiled(state, batch, rng)
            metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        _check_finite(metrics, step, self.trainer.checkpointer)
        times.finished_step()
        return state, metrics

    def _speed(self, objective: Objective, times: StepTimes) -> dict[str, float]:
        """Throughput, MFU and data-wait share of the steps since the last log line."""
        timing = times.summary()
        seconds = timing["seconds_per_step"]
        flops = objective.train_flops(self.trainer.batch_spec)
        return {
            "steps_per_second": 1 / seconds,
            "tokens_per_second": tokens_per_batch(self.trainer.batch_spec) / seconds,
            "mfu": flops / seconds / self.peak_flops,
            "flops_per_step": flops,
            "data_wait_share": timing["data_wait_share"],
        }


TaskMetricsFn = Callable[..., dict[str, float]]  # (params, data, model_dir=, step=) -> metrics


def restore_run_params(
    model_dir: str,
    init_params: Callable[[jax.Array], Params],
    mesh: Mesh,
    rules: partitioning.LogicalRules,
    checkpoint_config: checkpoints.CheckpointConfig,
    select: str | None = None,
) -> tuple[Params, int]:
    """(parameters, step) of the newest good checkpoint of MODEL_DIR (else the restore path), read
    with `checkpoints.restore_params` onto `init_params`' layout: no optimizer state, nothing written.

    `init_params(rng)` gives the (boxed) parameters to fill: keyed by model, or one model's with `select`.
    """
    own = Path(model_dir) / "checkpoints"
    path = own if checkpoints.finished_steps(own) else checkpoint_config.restore_path
    if path is None:
        raise checkpoints.CheckpointError(
            f"no checkpoint in {own} yet: train this MODEL_DIR first, or read another run's with "
            "--gin.checkpoints.CheckpointConfig.restore_path='<run folder or step folder>'"
        )
    abstract, _ = params_layout(init_params, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return checkpoints.restore_params(path, abstract, select=select)


@gin.configurable
def evaluate(
    model_dir: str = gin.REQUIRED,
    eval_data: DatasetConfig = gin.REQUIRED,
    objective: Objective = gin.REQUIRED,
    eval_batches: int = 50,
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    checkpoint_config: checkpoints.CheckpointConfig = checkpoints.CheckpointConfig(),
    task_metrics: TaskMetricsFn | None = None,
) -> dict[str, float]:
    """Evaluates the latest checkpoint in MODEL_DIR (or the restore path) on `eval_data`: the objective's
    loss metrics and, with `task_metrics` (runs/eval.gin binds `inference.task_metrics`), the task's own
    as "task/<name>" (a task's "accuracy" is not the token accuracy).

    Reads only the parameters of the models `objective` uses (no optimizer binding needed).
    """
    mesh, rules = partitioning.make_mesh(mesh_config), partitioning.logical_axis_rules()
    example = example_batch(eval_data)
    params, step = restore_run_params(
        model_dir, lambda rng: objective.init_params(rng, example), mesh, rules, checkpoint_config
    )
    metrics = Evaluator(mesh, rules)(objective, params, step, eval_data, eval_batches)
    if task_metrics is not None:
        scores = task_metrics(params, eval_data, model_dir=model_dir, step=step)
        metrics |= {f"task/{name}": value for name, value in scores.items()}
    logging.info(
        "eval at step %d over at most %d batches (the training log's eval uses train.eval_batches): %s",
        step,
        eval_batches,
        {k: round(v, 4) for k, v in metrics.items()},
    )
    with MetricsWriter(model_dir, step, step, interactive=False) as writer:
        writer.write(step, metrics, prefix="eval")
    return metrics
