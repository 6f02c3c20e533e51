"""Frozen models: read from a checkpoint, never trained, never saved by the run that reads them.

A run names them in gin, e.g. a teacher for distillation:

    trainer.train.frozen_models = {'teacher': @teacher/frozen.FrozenModel()}
    teacher/frozen.FrozenModel.path = '/runs/teacher/checkpoints'
    teacher/frozen.FrozenModel.model = @teacher/models.build_model()
    teacher/models.build_model.config = @teacher/t5.T5Config()

Their parameters are read with `checkpoints.restore_params` (parameters only, sharded by the run's
logical rules) and passed to every objective's loss beside the trained ones, as constants: they get
no gradients and no optimizer state, and the state saved in checkpoints does not hold them. The
run records each frozen model's path, step and fingerprint in MODEL_DIR/frozen_models.json and a
resumed run refuses, by name, a frozen model whose arrays changed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
from absl import logging
from jax.sharding import Mesh

from littlehelp import checkpoints, partitioning
from littlehelp.errors import LittlehelpError
from littlehelp.models import Model
from littlehelp.train_state import params_layout
from littlehelp.typing import Params

RECORD_NAME = "frozen_models.json"


class FrozenModelChangedError(LittlehelpError):
    """A resumed run's frozen model is not the one the run started with."""


@gin.configurable(module="frozen")
@dataclasses.dataclass(frozen=True)
class FrozenModel:
    """A model read, never trained: its seam, and where its parameters are.

    path: a step folder, a checkpoints folder or a run folder (newest good step).
    select: the model's name in that checkpoint's parameters ('model' for a plain run, 't5' in SpacTor).
    """

    path: str = gin.REQUIRED
    model: Model = gin.REQUIRED
    select: str = "model"


@dataclasses.dataclass(frozen=True)
class FrozenParams:
    """The loaded frozen models: parameters by name and what identifies them."""

    params: dict[str, Params]
    records: dict[str, dict[str, Any]]


def fingerprint(params: Params) -> str:
    """A hex digest of every array's bits and path (equal iff the parameters are)."""
    return hashlib.sha256(json.dumps(checkpoints.fingerprints(params), sort_keys=True).encode()).hexdigest()[:16]


def load_frozen_models(
    models: Mapping[str, FrozenModel], example: Mapping[str, jax.Array], mesh: Mesh, rules: partitioning.LogicalRules
) -> FrozenParams:
    """Reads each frozen model's parameters onto the mesh (shapes from `model.init` on `example`)."""
    params, records = {}, {}
    for name, frozen in models.items():
        abstract, _ = params_layout(functools.partial(frozen.model.init, batch=example), mesh, rules)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            params[name], step = checkpoints.restore_params(frozen.path, abstract, select=frozen.select)
        records[name] = {
            "path": str(frozen.path),
            "select": frozen.select,
            "step": step,
            "fingerprint": fingerprint(params[name]),
        }
        logging.info(
            "frozen model %s: %s step %d (fingerprint %s)", name, frozen.path, step, records[name]["fingerprint"]
        )
    return FrozenParams(params, records)


def load_on_one_device(model: FrozenModel, example: Mapping[str, Any]) -> tuple[Params, dict[str, Any]]:
    """One frozen model's parameters on a 1-device mesh (shapes from `example`, a batch of numpy
    arrays) and its record (path, select, step, fingerprint): for passes outside a run (scoring, labelling)."""
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    loaded = load_frozen_models({"frozen": model}, example, mesh, partitioning.logical_axis_rules())
    return loaded.params["frozen"], loaded.records["frozen"]


def check_and_record(model_dir: str | Path, frozen: FrozenParams) -> None:
    """Writes MODEL_DIR/frozen_models.json on the first run (process 0 only); on a resumed run refuses
    a changed model (on every process)."""
    path = Path(model_dir) / RECORD_NAME
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        for name in sorted(set(before) | set(frozen.records)):
            if before.get(name, {}).get("fingerprint") != frozen.records.get(name, {}).get("fingerprint"):
                raise FrozenModelChangedError(
                    f"frozen model '{name}' is not the one this run started with: was {before.get(name)}, now "
                    f"{frozen.records.get(name)} ({path}); use a new MODEL_DIR or restore the original"
                )
        return
    if frozen.records and jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".json.tmp")  # renamed into place: another process never reads half a file
        staging.write_text(json.dumps(frozen.records, indent=1) + "\n", encoding="utf-8")
        staging.replace(path)
