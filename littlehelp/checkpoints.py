"""Orbax checkpointing: async save, keep N, preemption save, verified restore with fall-back.

Each step folder holds three orbax items: ``state`` (the train-state pytree), ``data_state`` (a
small JSON dict, e.g. the input pipeline's position) and ``integrity`` (one fingerprint per array,
checked on restore, because orbax reads back overwritten array bytes without complaint).

Orbax writes a step into ``<step>.orbax-checkpoint-tmp*`` and renames it when complete (on GCS it
writes a commit file instead), so a save that fails part-way never replaces a finished step.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import types
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

PyTree = Any
STATE_ITEM = "state"
DATA_ITEM = "data_state"
INTEGRITY_ITEM = "integrity"


class CheckpointError(RuntimeError):
    """No checkpoint could be restored from a directory that has some."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save, how many steps to keep, and where to start from when MODEL_DIR has none.

    restore_path: a step folder (``.../checkpoints/1000``) or a run's checkpoints folder.
    """

    save_interval_steps: int = 1000
    max_to_keep: int = 3
    async_save: bool = True
    restore_path: str | None = None

    def __post_init__(self) -> None:
        for name in ("save_interval_steps", "max_to_keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CheckpointConfig.{name} must be a positive integer, got {value!r}.")
        if self.restore_path is not None and not str(self.restore_path).strip():
            raise ValueError("CheckpointConfig.restore_path must be None or a non-empty path, got ''.")


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """Position-weighted sum (mod 2**32) of an array's raw bits; independent of its sharding."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * 2 + 1
    return jnp.sum(bits * weights, dtype=jnp.uint32)


_tree_fingerprints = jax.jit(lambda tree: jax.tree.map(_leaf_fingerprint, tree))


def fingerprints(state: PyTree) -> dict[str, int]:
    """One integer per array of ``state``, keyed by its tree path; equal iff the bits are equal."""
    prints = jax.tree_util.tree_flatten_with_path(_tree_fingerprints(state))[0]
    return {jax.tree_util.keystr(path): int(value.addressable_data(0)) for path, value in prints}


def _options(config: CheckpointConfig, read_only: bool = False) -> ocp.CheckpointManagerOptions:
    """Saves on multiples of the interval (or on a JAX preemption notice); keeps the latest N.

    Temporary folders are left alone: they may be another process's unfinished save.
    """
    policies = ocp.checkpoint_managers
    return ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy(
            [policies.FixedIntervalPolicy(config.save_interval_steps), policies.PreemptionCheckpointingPolicy()]
        ),
        preservation_policy=None if read_only else policies.LatestN(n=config.max_to_keep),
        enable_async_checkpointing=config.async_save,
        cleanup_tmp_directories=False,
        read_only=read_only,
        create=not read_only,
    )


def _manager(directory: epath.Path, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    registry = ocp.handlers.create_default_handler_registry(
        **{
            STATE_ITEM: ocp.StandardCheckpointHandler(),
            DATA_ITEM: ocp.JsonCheckpointHandler(),
            INTEGRITY_ITEM: ocp.JsonCheckpointHandler(),
        }
    )
    return ocp.CheckpointManager(directory, options=options, handler_registry=registry)


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
    """Restores one step and checks its array metadata and fingerprints; raises on any defect."""
    if manager.item_metadata(step)[STATE_ITEM] is None:
        raise FileNotFoundError(f"the array metadata of item '{STATE_ITEM}' is missing or unreadable")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                DATA_ITEM: ocp.args.JsonRestore(),
                INTEGRITY_ITEM: ocp.args.JsonRestore(),
            }
        ),
    )
    state, expected = restored[STATE_ITEM], restored[INTEGRITY_ITEM]
    actual = fingerprints(state)
    if actual != expected:
        bad = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        raise ValueError(f"array contents differ from the fingerprints saved with them: {bad}")
    return state, restored[DATA_ITEM]


def _restore_newest_good(
    manager: ocp.CheckpointManager, steps: list[int], abstract_state: PyTree
) -> tuple[PyTree, dict, int]:
    """Tries ``steps`` newest first; warns about each bad one; raises CheckpointError if all fail."""
    failures = []
    for step in sorted(steps, reverse=True):
        step_dir = ocp.path.step.build_step_path(manager.directory, ocp.path.step.standard_name_format(), step)
        try:
            state, data_state = _restore_step(manager, step, abstract_state)
        except Exception as error:  # noqa: BLE001 -- any defect in one step means: try the previous one.
            logging.warning("Could not restore checkpoint %s (%s: %s); trying an older step.",
                            step_dir, type(error).__name__, error)
            failures.append(f"{step_dir}: {type(error).__name__}: {error}")
            continue
        logging.info("Restored checkpoint %s.", step_dir)
        return state, data_state, step
    raise CheckpointError(
        f"No checkpoint in {manager.directory} could be restored; nothing was deleted. Failed steps:\n  "
        + "\n  ".join(failures)
    )


def absolute_path(path: str | os.PathLike) -> epath.Path:
    """`path` made absolute (orbax requires it); URLs such as gs://... are kept as they are."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


class Checkpointer:
    """Saves and restores (state, data_state) under one directory, normally MODEL_DIR/checkpoints."""

    def __init__(self, directory: str, config: CheckpointConfig):
        self._directory = absolute_path(directory)
        self._config = config
        self._manager = _manager(self._directory, _options(config))

    def save(self, step: int, state: PyTree, data_state: dict, force: bool = False) -> bool:
        """Saves on multiples of save_interval_steps, or always when ``force``; returns whether it saved.

        A step that is already on disk is never overwritten (``force`` included).
        """
        if step in self._manager.all_steps():
            logging.info("Checkpoint step %d already exists in %s; not saving it again.", step, self._directory)
            return False
        if not (force or self._manager.should_save(step)):
            return False
        items = {
            STATE_ITEM: ocp.args.StandardSave(state),
            DATA_ITEM: ocp.args.JsonSave(data_state),
            INTEGRITY_ITEM: ocp.args.JsonSave(fingerprints(state)),
        }
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        logging.info("Checkpoint step %d %s to %s.", step, "being written" if self._config.async_save else "written",
                     self._directory)
        return saved

    def restore(self, abstract_state: PyTree) -> tuple[PyTree, dict, int] | None:
        """Restores onto ``abstract_state``'s shardings: newest good step here, else restore_path, else None."""
        self._manager.wait_until_finished()
        if self._manager.all_steps():
            logging.info("Restoring the newest good checkpoint in %s.", self._directory)
            return _restore_newest_good(self._manager, self._manager.all_steps(), abstract_state)
        if self._config.restore_path is not None:
            logging.info("No checkpoint in %s; restoring from restore_path %s.", self._directory,
                         self._config.restore_path)
            return _restore_from_path(absolute_path(self._config.restore_path), abstract_state)
        logging.info("No checkpoint in %s and no restore_path; starting from scratch.", self._directory)
        return None

    @property
    def directory(self) -> str:
        """Where the step folders are."""
        return str(self._directory)

    def latest_step(self) -> int | None:
        """The newest step on disk (or being written), whether or not it restores."""
        return self._manager.latest_step()

    def wait_until_finished(self) -> None:
        """Blocks until an asynchronous save has been committed; re-raises its error if it failed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases orbax's resources."""
        self._manager.close()


def _restore_from_path(path: epath.Path, abstract_state: PyTree) -> tuple[PyTree, dict, int]:
    """Restores from a step folder (that step only) or a checkpoints folder (newest good step)."""
    if (path / STATE_ITEM).is_dir():
        root, steps = path.parent, [ocp.path.step.step_from_checkpoint_name(path.name)]
    else:
        root, steps = path, None
    if not root.is_dir():
        raise CheckpointError(f"CheckpointConfig.restore_path {path} does not exist.")
    manager = _manager(root, _options(CheckpointConfig(), read_only=True))
    try:
        steps = steps or list(manager.all_steps())
        if not steps:
            raise CheckpointError(f"CheckpointConfig.restore_path {path} holds no finished checkpoint.")
        return _restore_newest_good(manager, steps, abstract_state)
    finally:
        manager.close()


class PreemptionGuard:
    """Context manager: SIGTERM (and optionally SIGINT) sets ``requested`` instead of ending the process.

    The trainer polls ``requested``, saves with ``force=True`` and stops. Install it from the main
    thread; the previous handlers come back on exit.
    """

    def __init__(self, handle_sigint: bool = False):
        self._signals = (signal.SIGTERM, signal.SIGINT) if handle_sigint else (signal.SIGTERM,)
        self._previous: dict[int, Any] = {}
        self._requested = False

    @property
    def requested(self) -> bool:
        """Whether a handled signal has arrived since entering the context."""
        return self._requested

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        del signum, frame
        self._requested = True

    def __enter__(self) -> PreemptionGuard:
        self._requested = False
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def read_arrays(step_dir: str | os.PathLike) -> PyTree:
    """Every array saved in one step folder, as host numpy arrays (for inspection and export).

    Needs no model code and no mesh: the tree comes back as saved (dicts of arrays).
    """
    path = absolute_path(step_dir) / STATE_ITEM
    if not path.is_dir():
        raise CheckpointError(f"{step_dir} is not a checkpoint step folder (no '{STATE_ITEM}' inside)")
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
        target = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), metadata.tree)
        return checkpointer.restore(path, target)
