"""Ahead-of-time memory planning: compile a run's train steps for a target topology from a CPU host.

`littlehelp compile --gin_file=F.gin --topology=v5p-512` reads the run's settings exactly as
`littlehelp train` would (`trainer.train(settings_only=True)`), builds its mesh over the target's
devices and compiles every distinct objective's train step without running it: no data is read and
no parameter is allocated. Per device it reports the memory of arguments, outputs and temporaries
(`Compiled.memory_analysis()`), the FLOPs (`cost_analysis()`, beside the objective's own count; XLA
counts the body of a scanned layer stack once) and the collective ops named in the optimized
program, and it names the largest buffers.

Targets:
  - `--topology=v5p-512` (or `v5p:4x8x8`): a real TPU slice from libtpu's topology description
    (`jax.experimental.topologies`; `pip install '.[tpu_aot]'`), compiled by the TPU compiler, with the
    chip's HBM as the memory limit;
  - `--num_devices=N` (or `--mesh=DxFxT` alone): N fake CPU devices, compiled by the CPU compiler. Its
    memory figures are the CPU program's, a rougher guide than a TPU compile; the report says which.
A step that does not fit the limit (`--memory_gb` sets it for CPU targets or overrides the chip's)
makes the command exit with status 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from littlehelp import partitioning, trainer
from littlehelp.config import ConfigError
from littlehelp.errors import LittlehelpError
from littlehelp.train_state import params_layout, state_layout

GB = 1e9


class TargetError(LittlehelpError):
    """A compile target that cannot be built: an unknown topology, libtpu missing, too few CPU devices."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    """How one TPU generation names its slices and what each chip holds."""

    topology_prefix: str  # libtpu's name for the chip, as in "v5:4x8x8"
    chip_config: str  # "megacore": one device per chip from two TensorCores
    cores_per_chip: int  # slice names count TensorCores ("v5p-512" is 256 chips)
    hbm_gb: float
    grid_dims: int


TPU_GENERATIONS = {
    "v4": TpuGeneration("v4", "megacore", 2, 32.0, 3),
    "v5p": TpuGeneration("v5", "megacore", 2, 95.0, 3),
    "v5e": TpuGeneration("v5e", "default", 1, 16.0, 2),
    "v6e": TpuGeneration("v6e", "default", 1, 32.0, 2),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8,
    "c128": 16,
}


@dataclasses.dataclass(frozen=True)
class Target:
    """Devices to compile for, what they are, and each one's memory limit (None: no limit)."""

    devices: tuple[Any, ...]
    description: str
    memory_limit_bytes: float | None


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid of a power-of-two slice, as TPU slices are laid out: (2, 2, 1) for 4 chips, then
    doubling the last smallest axis (8: 2x2x2, 16: 2x2x4, 32: 2x4x4, ..., 256: 4x8x8)."""
    if chips < 4 or chips & (chips - 1):
        raise TargetError(
            f"{chips} chips: name a power-of-two slice of at least 4 chips, or give the grid "
            "itself, e.g. --topology=v5p:4x4x12"
        )
    grid = [2, 2, 1][:dims] if dims == 3 else [2, 2]
    while math.prod(grid) < chips:
        smallest = min(grid)
        grid[len(grid) - 1 - grid[::-1].index(smallest)] *= 2
    return tuple(grid)


def parse_topology(name: str) -> tuple[TpuGeneration, str]:
    """(generation, libtpu topology name) of `v5p-512` or `v5p:4x8x8`."""
    match = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)+))", name)
    if not match or match.group(1) not in TPU_GENERATIONS:
        raise TargetError(
            f"--topology={name!r}: expected GEN-CORES or GEN:AxBxC with GEN one of "
            f"{sorted(TPU_GENERATIONS)}, e.g. v5p-512 or v5e:4x4"
        )
    generation = TPU_GENERATIONS[match.group(1)]
    if match.group(2):
        grid = chip_grid(int(match.group(2)) // generation.cores_per_chip, generation.grid_dims)
    else:
        grid = tuple(int(n) for n in match.group(3).split("x"))
        if len(grid) != generation.grid_dims:
            raise TargetError(f"--topology={name!r}: {match.group(1)} slices have {generation.grid_dims} grid axes")
    return generation, f"{generation.topology_prefix}:{'x'.join(map(str, grid))}"


def tpu_target(name: str, memory_gb: float | None = None) -> Target:
    """The devices of TPU slice `name` from libtpu's topology description (no TPU needed)."""
    generation, topology_name = parse_topology(name)
    try:
        import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        raise TargetError(
            f"--topology={name} needs libtpu: pip install -c constraints.txt '.[tpu_aot]' "
            "(or use --num_devices for fake CPU devices)"
        ) from None
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topology_name,
        chip_config_name=generation.chip_config,
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
    )
    devices = tuple(topology.devices)
    limit = (memory_gb or generation.hbm_gb) * GB
    return Target(
        devices, f"TPU {name} ({topology_name}, {len(devices)} devices; libtpu topology, TPU compiler)", limit
    )


def cpu_target(num_devices: int, memory_gb: float | None = None) -> Target:
    """The first `num_devices` CPU devices (the CLI makes that many fake ones before JAX starts)."""
    devices = jax.devices("cpu")
    if num_devices > len(devices):
        raise TargetError(
            f"--num_devices={num_devices}, but JAX has {len(devices)} CPU devices (set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before JAX starts)"
        )
    return Target(
        tuple(devices[:num_devices]),
        f"{num_devices} fake CPU devices (CPU compiler: memory figures are the CPU program's)",
        None if memory_gb is None else memory_gb * GB,
    )


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """One compiled train step's per-device costs."""

    objective: str
    memory: dict[str, int]  # bytes per device: arguments, outputs, aliased, temporaries, code, total
    flops_per_device: float  # XLA's count for the partitioned program (a while loop's body once)
    model_flops_per_device: float  # the objective's own count, divided over the devices
    collectives: dict[str, int]  # op kind -> number of ops so named in the optimized program's text
    largest_state_arrays: list[dict[str, Any]]  # per-device shards of parameters and optimizer state
    largest_values: list[dict[str, Any]]  # the largest values the optimized program computes
    compile_seconds: float


@dataclasses.dataclass(frozen=True)
class CompilePlan:
    """What `littlehelp compile` found; `exit_code` is 1 when a step does not fit."""

    target: str
    num_devices: int
    mesh: dict[str, int]
    memory_limit_bytes: float | None
    steps: list[StepPlan]

    @property
    def fits(self) -> bool:
        """Every step's per-device total is within the limit (always, without a limit)."""
        limit = self.memory_limit_bytes
        return limit is None or all(step.memory["total"] <= limit for step in self.steps)

    @property
    def exit_code(self) -> int:
        """The CLI's exit status: 0 when every step fits, 1 when one does not."""
        return 0 if self.fits else 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the plan, `fits` included."""
        return dataclasses.asdict(self) | {"fits": self.fits}


def memory_summary(analysis: Any) -> dict[str, int]:
    """Per-device bytes from `Compiled.memory_analysis()`; total = arguments + outputs - aliased
    (donated state) + temporaries + generated code."""
    memory = {
        "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "aliased": analysis.alias_size_in_bytes,
        "temporaries": analysis.temp_size_in_bytes,
        "code": analysis.generated_code_size_in_bytes,
    }
    memory = {name: int(value) for name, value in memory.items()}
    memory["total"] = (
        memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"] + memory["code"]
    )
    return memory


def count_collectives(hlo_text: str) -> dict[str, int]:
    """How many ops of each collective kind (async start ops counted once) an HLO module holds."""
    found = Counter(
        match.group(1) for match in re.finditer(r"= [^=]*?\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", hlo_text)
    )
    return {kind: found[kind] for kind in COLLECTIVES if found[kind]}


def largest_values(hlo_text: str, top: int = 5) -> list[dict[str, Any]]:
    """The `top` largest array values an HLO module's instructions compute (not all live at once),
    with their op, skipping parameters and views (bitcasts, tuples' elements)."""
    pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\(", re.MULTILINE)
    views = {
        "parameter",
        "bitcast",
        "get-tuple-element",
        "constant",
        "copy-done",
        "all-gather-done",
        "all-reduce-done",
        "collective-permute-done",
    }
    values = {}
    for name, dtype, dims, op in pattern.findall(hlo_text):
        if op in views or dtype not in DTYPE_BYTES:
            continue
        shape = tuple(int(d) for d in dims.split(",") if d)
        values[name] = {
            "name": name,
            "op": op,
            "shape": f"{dtype}{list(shape)}",
            "bytes": DTYPE_BYTES[dtype] * math.prod(shape),
        }
    return sorted(values.values(), key=lambda v: -v["bytes"])[:top]


def largest_state_arrays(abstract_state: Any, top: int = 5) -> list[dict[str, Any]]:
    """The `top` largest per-device shards of a state whose leaves carry their shardings."""
    arrays: list[dict[str, Any]] = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state):
        shard = leaf.sharding.shard_shape(leaf.shape) if leaf.shape else ()
        arrays.append(
            {
                "name": jax.tree_util.keystr(path),
                "shape": f"{np.dtype(leaf.dtype).name}{list(shard)}",
                "bytes": int(np.dtype(leaf.dtype).itemsize * math.prod(shard)),
            }
        )
    return sorted(arrays, key=lambda a: -a["bytes"])[:top]


def _flops(compiled: Any) -> float:
    """XLA's FLOP count of a compiled program (cost_analysis is a dict, or a list of one)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float((analysis or {}).get("flops", float("nan")))


def plan_run(
    settings: trainer.TrainSettings, target: Target, mesh_override: partitioning.MeshConfig | None = None
) -> CompilePlan:
    """Compiles each distinct objective of a run's `trainer.TrainSettings` for `target`, without
    running it, and measures it."""
    mesh = partitioning.make_mesh(mesh_override or settings.mesh_config, devices=target.devices)
    rules = partitioning.logical_axis_rules()
    trainer.check_batch_divisible(settings.train_data, mesh, settings.microbatches)
    spec = trainer.batch_spec(settings.train_data)
    example = trainer.example_batch(settings.train_data)
    layout = state_layout(lambda rng: settings.curriculum.init_params(rng, example), settings.optimizer.tx, mesh, rules)
    frozen = {
        name: params_layout(functools.partial(model.model.init, batch=example), mesh, rules)[0]
        for name, model in settings.frozen_models.items()
    }
    steps = []
    for objective in {id(o): o for o in settings.curriculum.objectives}.values():
        seconds, compiled = _timed_compile(objective, settings, layout, spec, mesh, rules, frozen)
        steps.append(_step_plan(objective, compiled, layout, spec, mesh, seconds))
        logging.info("compiled %s for %s in %.1fs", objective.name, target.description, seconds)
    return CompilePlan(target.description, len(mesh.devices.flat), dict(mesh.shape), target.memory_limit_bytes, steps)


def _timed_compile(objective, settings, layout, spec, mesh, rules, frozen) -> tuple[float, Any]:
    """(seconds, compiled train step) for one objective."""
    start = time.perf_counter()
    step = trainer.make_train_step(objective, settings.optimizer, settings.microbatches)
    compiled = trainer.compile_train_step(step, layout, spec, mesh, rules, frozen)
    return time.perf_counter() - start, compiled


def _step_plan(objective, compiled, layout, spec, mesh, seconds: float) -> StepPlan:
    """The StepPlan of one compiled step."""
    hlo = compiled.as_text()
    return StepPlan(
        objective.name,
        memory_summary(compiled.memory_analysis()),
        _flops(compiled),
        objective.train_flops(spec) / len(mesh.devices.flat),
        count_collectives(hlo),
        largest_state_arrays(layout.abstract_state),
        largest_values(hlo),
        round(seconds, 1),
    )


def describe(plan: CompilePlan) -> str:
    """The plan as lines for a terminal: per step, memory in GB, FLOPs, collectives, and the largest
    buffers of a step that does not fit."""
    limit = plan.memory_limit_bytes
    lines = [
        f"target: {plan.target}; mesh {plan.mesh}; limit " + (f"{limit / GB:.1f} GB per device" if limit else "none")
    ]
    for step in plan.steps:
        memory = {k: f"{v / GB:.2f}" for k, v in step.memory.items()}
        fits = "" if limit is None else ("  fits" if step.memory["total"] <= limit else "  DOES NOT FIT")
        lines.append(
            f"{step.objective}: {memory['total']} GB per device{fits} (arguments {memory['arguments']}, "
            f"outputs {memory['outputs']}, aliased {memory['aliased']}, temporaries {memory['temporaries']}, "
            f"code {memory['code']}); compiled in {step.compile_seconds}s"
        )
        lines.append(
            f"  FLOPs per device: XLA {step.flops_per_device:.3e}, model {step.model_flops_per_device:.3e}; "
            f"collectives {step.collectives or 'none'}"
        )
        if limit is not None and step.memory["total"] > limit:
            for kind, entries in (("state", step.largest_state_arrays), ("value", step.largest_values)):
                lines.extend(f"  largest {kind}: {e['name']} {e['shape']} {e['bytes'] / GB:.2f} GB" for e in entries)
    return "\n".join(lines)


def write_plan(plan: CompilePlan, path: str | Path) -> None:
    """Writes the plan as JSON to `path`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(plan.to_json(), indent=1) + "\n", encoding="utf-8")


def parse_mesh(text: str) -> partitioning.MeshConfig:
    """`--mesh=DATAxFSDPxTENSOR` (e.g. 1x256x1, -1 allowed once) as a MeshConfig."""
    sizes = text.split("x")
    if len(sizes) != 3 or not all(re.fullmatch(r"-?\d+", s) for s in sizes):
        raise TargetError(f"--mesh={text!r}: expected DATAxFSDPxTENSOR, e.g. 1x256x1")
    try:
        return partitioning.MeshConfig(*(int(s) for s in sizes))
    except ValueError as error:
        raise TargetError(f"--mesh={text!r}: {error}") from None


def mesh_devices(mesh: partitioning.MeshConfig | None) -> int | None:
    """The device count a fully given mesh needs (None when it has a -1 axis or is absent)."""
    if mesh is None or -1 in dataclasses.astuple(mesh):
        return None
    return math.prod(dataclasses.astuple(mesh))


def cpu_device_count(num_devices: int | None, mesh: partitioning.MeshConfig | None) -> int | None:
    """The fake CPU devices that `--num_devices`, or else a `--mesh` without -1, asks for; a count below 1,
    or one `mesh` cannot be laid over, is refused (the CLI asks before it reads the run)."""
    if num_devices is None:
        return mesh_devices(mesh)
    if num_devices < 1:
        raise TargetError(f"--num_devices={num_devices}: give a positive number of devices")
    if mesh is not None:
        try:
            mesh.shape(num_devices)
        except ConfigError as error:
            flag = "x".join(str(size) for size in dataclasses.astuple(mesh))
            raise TargetError(f"--mesh={flag} with --num_devices={num_devices}: {error}") from None
    return num_devices


def build_target(topology: str | None, cpu_devices: int | None, memory_gb: float | None) -> Target:
    """The Target the CLI flags name: a TPU topology, or `cpu_devices` fake CPU devices."""
    if topology:
        return tpu_target(topology, memory_gb)
    if cpu_devices is None:
        raise TargetError("littlehelp compile: give --topology, --num_devices or a --mesh without -1")
    return cpu_target(cpu_devices, memory_gb)


def compile_command(
    topology: str | None,
    cpu_devices: int | None,
    mesh_config: partitioning.MeshConfig | None,
    memory_gb: float | None,
    out: str | None,
    settings: trainer.TrainSettings,
) -> CompilePlan:
    """`littlehelp compile` after gin is parsed: builds the target, plans the run, prints and writes it."""
    target = build_target(topology, cpu_devices, memory_gb)
    plan = plan_run(settings, target, mesh_config)
    print(describe(plan), flush=True)
    if out:
        write_plan(plan, out)
    return plan
