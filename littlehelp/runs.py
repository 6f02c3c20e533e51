"""A run folder as Python objects: `load_run(model_dir)` gives its model, parameters, vocabulary and config.

A run folder is what `littlehelp train` writes (MODEL_DIR: checkpoints/<step>/ and the operative config,
config.gin) or what `littlehelp convert` writes (checkpoints/0/, model.gin, vocabulary/; see
`littlehelp.models.convert.run_folder`). Its gin file, model.gin where there is one, else config.gin,
binds MODEL_CONFIG (the model), MODEL_KEY (the model's name in the checkpoint; "model" when unbound)
and, in a training run's config, maybe VOCABULARY; a converted folder's vocabulary is its vocabulary/.

    from littlehelp import runs
    run = runs.load_run("runs/draft_smollm2")          # the newest good step; step=N reads step N
    logits = run.model.logits(run.params, batch)       # run.model: the `api.Model` seam
    ids = run.vocabulary.encode("The capital of France is")
    run.step, run.config, run.folder                   # the step read, the gin file's text, the folder
    runs.load_run(folder, mesh=partitioning.make_mesh())   # parameters placed sharded by the logical rules

`open_run(model_dir)` reads the gin file and the vocabulary only, so a caller can check the model and
its vocabulary before any parameter is read; `.load()` then reads them. `read_params(model_dir, model)`
reads a model's parameters without the gin file. A folder that is not a run folder, has no finished
checkpoint or lacks the step asked for is refused in one line naming it (`RunFolderError`).

Reading a run's gin file replaces gin's global config while it is read and clears it after: open a run
outside a gin-configured call (or use `read_params`, which reads no gin).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from littlehelp import checkpoints, partitioning
from littlehelp import config as gin_config
from littlehelp.errors import LittlehelpError
from littlehelp.features import DECODER_INPUT_TOKENS, ENCODER_INPUT_TOKENS
from littlehelp.models import Model, build_model
from littlehelp.train_state import params_layout
from littlehelp.typing import Params

MODEL_GIN = "model.gin"  # a converted (or derived) folder's model file
MODEL_GINS = (MODEL_GIN, gin_config.OPERATIVE_CONFIG_NAME)  # read in this order: model.gin, else config.gin
CHECKPOINTS_DIR = "checkpoints"
VOCABULARY_DIR = "vocabulary"
DEFAULT_MODEL_KEY = "model"
EXAMPLE_LENGTH = 8  # the example batch whose `model.init` shapes give the parameters' shapes


class RunFolderError(LittlehelpError, ValueError):
    """A folder that is not a run folder, or that lacks the checkpoint asked for."""


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run folder read: its model (the `api.Model` seam), parameters of one step, vocabulary (None when
    the folder holds none), the text of its gin file (model.gin or config.gin), the folder and the step read."""

    model: Model
    params: Params
    vocabulary: Any
    config: str
    folder: Path
    step: int


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """What a run folder's gin file says (`open_run`); no parameter is read until `load`.

    `key` is the model's name in the checkpoint (MODEL_KEY), `gin_file` the file read and `config` its text.
    """

    folder: Path
    gin_file: Path
    config: str
    model: Model
    key: str
    vocabulary: Any

    @property
    def steps(self) -> list[int]:
        """The finished checkpoint steps of the folder, oldest first."""
        return checkpoints.finished_steps(self.folder / CHECKPOINTS_DIR)

    def load(
        self, step: int | None = None, mesh: Mesh | None = None, rules: partitioning.LogicalRules | None = None
    ) -> LoadedRun:
        """The run with the parameters of `step` (default: the newest good step); see `read_params`."""
        params, read = read_params(self.folder, self.model, self.key, step, mesh, rules)
        return LoadedRun(self.model, params, self.vocabulary, self.config, self.folder, read)


def load_run(
    model_dir: str | os.PathLike,
    step: int | None = None,
    mesh: Mesh | None = None,
    rules: partitioning.LogicalRules | None = None,
) -> LoadedRun:
    """The model, parameters, vocabulary and config of the run folder `model_dir`.

    - step: the checkpoint step to read (default: the newest good one; a bad step is skipped, nothing moved).
    - mesh: place the parameters sharded on it by `rules` (default `partitioning.logical_axis_rules()`), as
      the trainer shards them; without a mesh they are read onto the default device.

    Refuses in one line (`RunFolderError`) a folder that is not a run folder, holds no finished checkpoint
    or lacks `step` (naming the steps it has).
    """
    return open_run(model_dir).load(step, mesh, rules)


def gin_file_of(model_dir: str | os.PathLike) -> Path | None:
    """The gin file a run folder's model comes from: its model.gin, else its config.gin; None if neither."""
    folder = Path(model_dir).expanduser()
    return next((folder / name for name in MODEL_GINS if (folder / name).is_file()), None)


def open_run(model_dir: str | os.PathLike) -> RunFolder:
    """The run folder's model (MODEL_CONFIG), checkpoint key (MODEL_KEY) and vocabulary (its vocabulary/,
    else the VOCABULARY its gin file binds, else None), from its gin file; no parameter is read."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise RunFolderError(
            f"run folder {folder} does not exist" if not folder.exists() else f"{folder} is a file, not a run folder"
        )
    gin_file = gin_file_of(folder)
    if gin_file is None:
        raise RunFolderError(f"{folder} is not a run folder: it holds no {' or '.join(MODEL_GINS)}")
    own_vocabulary = (folder / VOCABULARY_DIR).is_dir()
    with _parsed(gin_file):
        model_config, key = gin_config.macro_value("MODEL_CONFIG"), gin_config.macro_value("MODEL_KEY")
        vocabulary = None if own_vocabulary or model_config is None else gin_config.macro_value("VOCABULARY")
    if model_config is None:
        raise RunFolderError(f"{gin_file} binds no MODEL_CONFIG")
    if own_vocabulary:
        from littlehelp.models.convert.run_folder import folder_vocabulary  # pylint: disable=import-outside-toplevel

        vocabulary = folder_vocabulary(str(folder))
    return RunFolder(
        folder,
        gin_file,
        gin_file.read_text(encoding="utf-8"),
        build_model(model_config),
        key or DEFAULT_MODEL_KEY,
        vocabulary,
    )


def read_params(
    model_dir: str | os.PathLike,
    model: Model,
    key: str = DEFAULT_MODEL_KEY,
    step: int | None = None,
    mesh: Mesh | None = None,
    rules: partitioning.LogicalRules | None = None,
) -> tuple[Params, int]:
    """(parameters, step read) of `model`, saved as `key`, from the run folder `model_dir`: parameters only
    (`checkpoints.restore_params`), shaped by `model.init`, of `step` or the newest good step; with a mesh,
    placed sharded by the logical-axis `rules` (`train_state.params_layout`, as the trainer places them).

    Reads no gin file: a caller inside a gin-configured call gives the model itself.
    """
    folder = Path(model_dir).expanduser()
    steps = checkpoints.finished_steps(folder / CHECKPOINTS_DIR)
    if not steps:
        raise RunFolderError(
            f"run folder {folder} holds no finished checkpoint (no {CHECKPOINTS_DIR}/<step>/ with its state)"
        )
    if step is not None and step not in steps:
        raise RunFolderError(
            f"run folder {folder} has no checkpoint of step {step}; its steps: {', '.join(map(str, steps))}"
        )
    path = folder if step is None else folder / CHECKPOINTS_DIR / str(step)
    tokens = jnp.zeros((1, EXAMPLE_LENGTH), jnp.int32)  # only shapes are computed (`jax.eval_shape`)
    example = {name: tokens for name in (ENCODER_INPUT_TOKENS, DECODER_INPUT_TOKENS)}  # every kind's inputs
    init = lambda rng: model.init(rng, example)  # noqa: E731
    if mesh is None:
        return checkpoints.restore_params(path, nn.unbox(jax.eval_shape(init, jax.random.key(0))), select=key)
    rules = partitioning.logical_axis_rules() if rules is None else rules
    abstract, _ = params_layout(init, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return checkpoints.restore_params(path, abstract, select=key)


@contextlib.contextmanager
def _parsed(gin_file: Path) -> Iterator[None]:
    """`gin_file` parsed for the block (the configurable modules imported), gin's config cleared after."""
    gin_config.import_configurable_modules()
    try:
        gin_config.parse_gin([str(gin_file)], [], [])
        yield
    finally:
        gin.clear_config()
