"""Device mesh, logical-axis rules and the shardings they imply.

Every parameter and large activation carries logical axis names (batch, length, embed, mlp, heads, kv,
vocab, layers). Rules map those names to the mesh axes (data, fsdp, tensor). Rules are applied in
order and a mesh axis is used at most once per array, so activations shard `batch` over
(data, fsdp) while parameters, which have no batch axis, shard `embed` over fsdp. A model family that
introduces axis names of its own registers rules for them (`registry.ModelFamily.logical_axes`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from littlehelp.config import ConfigError
from littlehelp.models import registry

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "layers")

LogicalRules = tuple[tuple[str, Any], ...]

DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("kv", None),
    ("layers", None),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape over (data, fsdp, tensor); at most one axis may be -1 (sized to fit the devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        sizes = dataclasses.asdict(self)
        for name, size in sizes.items():
            if size == 0 or size < -1:
                raise ConfigError(f"MeshConfig.{name} must be positive or -1, got {size}")
        if list(sizes.values()).count(-1) > 1:
            raise ConfigError(f"{self.describe()}: at most one axis may be -1")

    def describe(self) -> str:
        """The config as "MeshConfig data=2 fsdp=-1 tensor=1", for messages."""
        return "MeshConfig " + " ".join(f"{name}={size}" for name, size in dataclasses.asdict(self).items())

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete (data, fsdp, tensor) shape for `num_devices` devices.

        A shape without -1 may need fewer devices than there are (the first ones are used).
        """
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(
                    f"{self.describe()}: {num_devices} devices are not divisible by the fixed axes' product {known}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        elif math.prod(sizes) < num_devices:
            return sizes[0], sizes[1], sizes[2]  # a fully specified mesh may use the first devices only
        if math.prod(sizes) != num_devices:
            raise ConfigError(f"{self.describe()} needs {math.prod(sizes)} devices, but {num_devices} are available")
        return sizes[0], sizes[1], sizes[2]


@gin.configurable
def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh over `devices` (default: all devices; a TPU topology's for
    `littlehelp compile`), with Auto axes."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.shape(len(devices))
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if math.prod(shape) < len(devices):
        logging.warning("mesh %s uses %d of %d devices", shape, math.prod(shape), len(devices))
        return Mesh(np.asarray(devices[: math.prod(shape)]).reshape(shape), MESH_AXES, axis_types=auto)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)  # in the interconnect's order
    except NotImplementedError as error:  # no axis-by-axis assignment onto the physical torus
        raise ConfigError(
            f"{config.describe()}: the mesh {shape} does not map onto the "
            f"devices' physical layout ({str(error).split('. ')[0]})"
        ) from None


@gin.configurable
def logical_axis_rules(rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> LogicalRules:
    """The logical-to-mesh rules in force (gin: `logical_axis_rules.rules = [...]`), then the registered
    model families' rules for the axes they introduce that `rules` does not name."""
    family_rules = [rule for family in registry.FAMILIES.values() for rule in family.logical_axes]
    known = LOGICAL_AXES + tuple(name for name, _ in family_rules)
    rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
    named = {name for name, _ in rules}
    rules += tuple(rule for rule in family_rules if rule[0] not in named)
    for name, axes in rules:
        if name not in known:
            raise ConfigError(f"logical_axis_rules: unknown logical axis {name!r}; known: {known}")
        for axis in axes if isinstance(axes, tuple) else (axes,):
            if axis is not None and axis not in MESH_AXES:
                raise ConfigError(f"logical_axis_rules: rule {name!r} names unknown mesh axis {axis!r}")
    return rules


def mesh_axes_for(
    shape: Sequence[int], logical_spec: Sequence[str | None], mesh: Mesh, rules: LogicalRules
) -> PartitionSpec:
    """The mesh PartitionSpec for one array; a rule whose mesh size does not divide the dimension is dropped."""
    if not logical_spec:
        return PartitionSpec()
    axes = nn.logical_to_mesh_axes(tuple(logical_spec), rules)
    assert axes is not None  # None only for a None spec, handled above
    return PartitionSpec(*(a if size % _mesh_size(mesh, a) == 0 else None for size, a in zip(shape, axes, strict=True)))


def param_shardings(abstract_params: Any, logical_specs: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """NamedShardings for a parameter pytree from its shapes and logical PartitionSpecs."""
    return jax.tree.map(
        lambda leaf, spec: NamedSharding(mesh, mesh_axes_for(leaf.shape, spec, mesh, rules)),
        abstract_params,
        logical_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, ...] input array: the batch axis over (data, fsdp)."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


@dataclasses.dataclass(frozen=True)
class ReplicatedParam:
    """A parameter stored whole on every device although a rule could shard one of its axes."""

    path: str
    shape: tuple[int, ...]
    logical_axes: tuple[str | None, ...]
    bytes: int


def unsharded_but_shardable(
    abstract_params: Any, logical_specs: Any, mesh: Mesh, rules: LogicalRules
) -> list[ReplicatedParam]:
    """Lists parameters stored whole on every device although a rule maps one of their axes onto a
    mesh axis of size > 1 (the dimension was not divisible by it, so the rule was dropped).

    Large entries here waste memory on every device; the trainer logs them at start-up.
    """
    rule_map = dict(rules)
    findings = []
    flat_params = jax.tree_util.tree_leaves_with_path(abstract_params)
    flat_specs = jax.tree_util.tree_leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for (path, leaf), spec in zip(flat_params, flat_specs, strict=True):
        if any(axes is not None for axes in mesh_axes_for(leaf.shape, spec, mesh, rules)):
            continue
        if any(_mesh_size(mesh, rule_map.get(name)) > 1 for name in spec if name is not None):
            findings.append(
                ReplicatedParam(
                    jax.tree_util.keystr(path),
                    tuple(leaf.shape),
                    tuple(spec),
                    int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize,
                )
            )
    return findings


def _mesh_size(mesh: Mesh, axes: Any) -> int:
    """Product of the sizes of the mesh axes named by a rule's right-hand side."""
    if axes is None:
        return 1
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in axes)
