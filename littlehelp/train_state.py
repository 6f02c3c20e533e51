"""TrainState (step, params, optimizer state) and its sharded initialisation.

The state is built from shapes first (`jax.eval_shape`), its shardings are derived from the
parameters' logical axes, and only then is it materialised, directly in its sharded layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from littlehelp import partitioning
from littlehelp.typing import Params


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from one step to the next.

    `params` and `opt_state` are dicts keyed by model name: each model has its own optimizer state,
    so a step that trains only some models (a curriculum stage, a frozen teacher) leaves the others'
    parameters and optimizer state untouched.
    """

    step: Any  # an int32 scalar array; in a layout, its sharding or jax.ShapeDtypeStruct
    params: Params
    opt_state: dict[str, optax.OptState]

    def apply_gradients(self, grads: Params, tx: optax.GradientTransformation) -> TrainState:
        """One optimizer update of the models in `grads` (a subset of the params' keys)."""
        params, opt_state = dict(self.params), dict(self.opt_state)
        for key, model_grads in grads.items():
            updates, opt_state[key] = tx.update(model_grads, self.opt_state[key], self.params[key])
            params[key] = optax.apply_updates(self.params[key], updates)
        return dataclasses.replace(self, step=self.step + 1, params=params, opt_state=opt_state)


def init_optimizer(tx: optax.GradientTransformation, params: Params) -> dict[str, optax.OptState]:
    """One optimizer state per model."""
    return {key: tx.init(model_params) for key, model_params in params.items()}


@flax.struct.dataclass
class StateLayout:
    """Shapes, logical axes and shardings of a TrainState, known before any memory is used."""

    abstract_state: TrainState  # ShapeDtypeStructs carrying their target shardings
    shardings: TrainState  # NamedShardings, same structure
    logical_specs: Params  # logical PartitionSpec per parameter


def params_layout(
    init_params: Callable[[jax.Array], Params], mesh: Mesh, rules: partitioning.LogicalRules
) -> tuple[Params, Params]:
    """(abstract parameters carrying their shardings, logical specs) of an initialiser; no memory used."""
    boxed = jax.eval_shape(init_params, jax.random.key(0))
    logical_specs = nn.get_partition_spec(boxed)
    params = nn.unbox(boxed)
    shardings = partitioning.param_shardings(params, logical_specs, mesh, rules)
    abstract = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), params, shardings
    )
    return abstract, logical_specs


def state_layout(
    init_params: Callable[[jax.Array], Params],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: partitioning.LogicalRules,
) -> StateLayout:
    """Derives the state's layout from a (boxed, logically annotated) parameter initialiser."""
    params, logical_specs = params_layout(init_params, mesh, rules)
    param_shardings = jax.tree.map(lambda leaf: leaf.sharding, params)
    opt_state = jax.eval_shape(lambda p: init_optimizer(tx, p), params)
    shardings = TrainState(
        step=partitioning.replicated(mesh),
        params=param_shardings,
        opt_state={
            key: _optimizer_shardings(opt_state[key], params[key], param_shardings[key], mesh) for key in params
        },
    )
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state)
    abstract = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract,
        shardings,
    )
    return StateLayout(abstract, shardings, logical_specs)


def init_state(
    init_params: Callable[[jax.Array], Params],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    layout: StateLayout,
) -> TrainState:
    """Materialises a fresh TrainState directly in the layout's shardings."""

    def build(key: jax.Array) -> TrainState:
        params = nn.unbox(init_params(key))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=init_optimizer(tx, params))

    return jax.jit(build, out_shardings=layout.shardings)(rng)


def _optimizer_shardings(opt_state: Any, params: Params, param_shardings: Params, mesh: Mesh) -> Any:
    """Gives each optimizer-state leaf its parameter's sharding.

    An optimizer leaf is matched to the parameter whose key path ends its own (optax nests the
    parameter tree inside its state). A leaf with the parameter's shape takes its sharding; a
    factored statistic (the parameter with one axis reduced, as Adafactor keeps) takes the sharding
    with that axis removed; anything else (counts, scalars) is replicated.
    """
    by_path = {
        _path_key(path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings), strict=True
        )
    }

    def leaf_sharding(path: tuple, leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        for start in range(len(path)):
            match = by_path.get(_path_key(path[start:]))
            if match is not None:
                return _reduced_sharding(leaf.shape, *match, mesh)
        return partitioning.replicated(mesh)

    return jax.tree_util.tree_map_with_path(leaf_sharding, opt_state)


def _path_key(path: tuple) -> str:
    return jax.tree_util.keystr(tuple(path))


def _reduced_sharding(
    shape: tuple[int, ...], param_shape: tuple[int, ...], sharding: NamedSharding, mesh: Mesh
) -> NamedSharding:
    """The parameter's sharding for a leaf of its shape, or of its shape with one axis removed."""
    spec = tuple(sharding.spec) + (None,) * (len(param_shape) - len(sharding.spec))
    if tuple(shape) == tuple(param_shape):
        return sharding
    for axis in range(len(param_shape)):
        if tuple(np.delete(param_shape, axis)) == tuple(shape):
            return NamedSharding(mesh, PartitionSpec(*(spec[:axis] + spec[axis + 1 :])))
    return partitioning.replicated(mesh)
