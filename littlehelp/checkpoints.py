"""Orbax checkpointing: async save, keep N, preemption save, verified restore with fall-back.

Each step folder holds three orbax items: ``state`` (the train-state pytree), ``data_state`` (a
small JSON dict, e.g. the input pipeline's position) and ``integrity`` (one fingerprint per array,
checked on restore, because orbax reads back overwritten array bytes without complaint); a training
run adds a fourth, ``data_iterator``: the input iterator's own state (a ``tf.train.Checkpoint`` of
the tf.data iterator, written by process 0), so that resuming costs the same at any step.

Orbax writes a step into ``<step>.orbax-checkpoint-tmp*`` and renames it when complete (on GCS it
writes a commit file instead), so a save that fails part-way never replaces a finished step. A step
that cannot be restored is moved to ``corrupt/<step>-<time>/`` (never deleted, never counted by
keep-last-K) and the previous one is used; a step whose shapes do not fit the model is not corrupt:
that is refused with the mismatched parameters named. A save that cannot be written (read-only
folder, full disk) stops the run with one line naming the folder and the OS error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from littlehelp.errors import LittlehelpError

PyTree = Any
STATE_ITEM = "state"
DATA_ITEM = "data_state"
INTEGRITY_ITEM = "integrity"
ITERATOR_ITEM = "data_iterator"
ITERATOR_STATE = "iterator_state"  # the data_state key under which `restore` gives the iterator state's file prefix
CORRUPT_FOLDER = "corrupt"  # where steps that cannot be restored are moved, inside the checkpoints folder
FREE_SPACE_MARGIN = 1.1  # a save needs this many times the state's bytes free (metadata, alignment)


class CheckpointError(LittlehelpError, RuntimeError):
    """No checkpoint could be restored from a directory that has some."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's arrays do not fit the model (shapes or parameter names differ); not corruption."""


class CheckpointSaveError(CheckpointError):
    """A step could not be written (read-only folder, full disk, ...); the steps on disk are untouched."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save, how many steps to keep, and where to start from when MODEL_DIR has none.

    - restore_path: a step folder (``.../checkpoints/1000``), a checkpoints folder or a run folder.
    - restore_model: the saved model a run of one model starts from, parameters only, with a fresh
      optimizer (e.g. 't5' of a SpacTor run, to fine-tune its T5). Unset: a training checkpoint of the
      same models restores whole (optimizer included), a params-only one with a fresh optimizer.
    """

    save_interval_steps: int = 1000
    max_to_keep: int = 3
    async_save: bool = True
    restore_path: str | None = None
    restore_model: str | None = None

    def __post_init__(self) -> None:
        for name in ("save_interval_steps", "max_to_keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CheckpointConfig.{name} must be a positive integer, got {value!r}.")
        if self.restore_path is not None and not str(self.restore_path).strip():
            raise ValueError("CheckpointConfig.restore_path must be None or a non-empty path, got ''.")
        if self.restore_model is not None and self.restore_path is None:
            raise ValueError(
                f"CheckpointConfig.restore_model={self.restore_model!r} needs a restore_path to read it from."
            )


class IteratorState(Protocol):
    """An input iterator's state that writes itself to files under a prefix (e.g. `tf.train.Checkpoint`)."""

    def write(self, file_prefix: str) -> Any:
        """Writes the state now."""


class _IteratorHandler(ocp.CheckpointHandler):
    """Orbax handler of the ``data_iterator`` item: the state is written through its own `write`, by
    process 0 alone (every process reads the same global stream, so one state serves them all, on
    any process count); restoring gives the file prefix to read it from."""

    def save(self, directory: epath.Path, args: IteratorSave) -> None:
        """Writes `args.state` under `directory/iterator` on process 0."""
        if jax.process_index() == 0:
            args.state.write(str(directory / "iterator"))

    def restore(self, directory: epath.Path, args: IteratorRestore | None = None) -> str:
        """The file prefix the state was written under."""
        return str(directory / "iterator")


@ocp.args.register_with_handler(_IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
    """Saves an input iterator's state (see `_IteratorHandler`)."""

    state: IteratorState


@ocp.args.register_with_handler(_IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
    """Restores the prefix of an input iterator's state (see `_IteratorHandler`)."""


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
    """A manager that knows every item's handler up front: orbax warns, on reading a step's metadata,
    of each item on disk whose handler it has not met yet (the ``data_iterator`` of a fresh process)."""
    registry = ocp.handlers.create_default_handler_registry(
        **{
            STATE_ITEM: ocp.StandardCheckpointHandler(),
            DATA_ITEM: ocp.JsonCheckpointHandler(),
            INTEGRITY_ITEM: ocp.JsonCheckpointHandler(),
            ITERATOR_ITEM: _IteratorHandler(),
        }
    )
    return ocp.CheckpointManager(directory, options=options, handler_registry=registry)


def _path_name(path: tuple) -> str:
    """A tree path as `params/decoder/layers_2/kernel`, the same for dataclass fields and dict keys."""
    parts = (getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))) for key in path)
    return "/".join(str(part) for part in parts)


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """Array shape per path name of a state, of its abstract form, or of orbax's saved metadata."""
    return {_path_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _mismatch(saved: PyTree, abstract_state: PyTree, step_dir: epath.Path) -> str | None:
    """Names the first mismatched arrays of a checkpoint against the model, or None if they fit."""
    have, want = _shapes(saved), _shapes(abstract_state)
    differ = [name for name in want if name in have and have[name] != want[name]]
    missing, extra = [n for n in want if n not in have], [n for n in have if n not in want]
    problems = [f"checkpoint has {n} {list(have[n])}, the model expects {list(want[n])}" for n in differ[:3]]
    problems += [f"the model's {n} is not in the checkpoint" for n in missing[:3]]
    problems += [f"the checkpoint's {n} is not in the model" for n in extra[:3]]
    if not problems:
        return None
    more = len(differ) + len(missing) + len(extra) - len(problems)
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"checkpoint {step_dir} does not fit the model: " + "; ".join(problems) + suffix


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
    """Restores one step and checks its array metadata and fingerprints; raises on any defect.

    Raises CheckpointMismatchError (before reading any array) when the saved shapes or names differ
    from `abstract_state`'s. A step with a ``data_iterator`` item gives its file prefix in the
    returned data state, under ``ITERATOR_STATE``.
    """
    saved = manager.item_metadata(step)[STATE_ITEM]
    if saved is None:
        raise FileNotFoundError(f"the array metadata of item '{STATE_ITEM}' is missing or unreadable")
    problem = _mismatch(saved, abstract_state, _step_dir(manager, step))
    if problem:
        raise CheckpointMismatchError(problem)
    items = {
        STATE_ITEM: ocp.args.StandardRestore(abstract_state),
        DATA_ITEM: ocp.args.JsonRestore(),
        INTEGRITY_ITEM: ocp.args.JsonRestore(),
    }
    with_iterator = (_step_dir(manager, step) / ITERATOR_ITEM).exists()
    if with_iterator:
        items[ITERATOR_ITEM] = IteratorRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state, expected = restored[STATE_ITEM], restored[INTEGRITY_ITEM]
    actual = fingerprints(state)
    if actual != expected:
        bad = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        raise ValueError(f"array contents differ from the fingerprints saved with them: {bad}")
    data_state = dict(restored[DATA_ITEM])
    if with_iterator:
        data_state[ITERATOR_STATE] = restored[ITERATOR_ITEM]
    return state, data_state


def _step_dir(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    return ocp.path.step.build_step_path(manager.directory, ocp.path.step.standard_name_format(), step)


def short_error(error: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, cut to `limit` characters (TensorStore errors print pages)."""
    text = str(error).strip().split(" See full TensorStore details")[0].splitlines()
    line = f"{type(error).__name__}: {text[0] if text else ''}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _move_aside(step_dir: epath.Path) -> epath.Path:
    """Moves a step folder that cannot be restored into `corrupt/<step>-<time>/`; deletes nothing."""
    target = step_dir.parent / CORRUPT_FOLDER / f"{step_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
    step_dir.rename(target)
    return target


def _newest_good(step_dirs: Mapping[int, epath.Path], restore_one: Any, where: epath.Path) -> tuple[Any, int, list]:
    """(restore_one(step), step, bad step folders newer than it) for the newest step that restores.

    Each bad step is warned about in one short line; a shape mismatch is raised at once (it is not
    corruption); CheckpointError names every step when none restores.
    """
    failures, bad_dirs = [], []
    for step in sorted(step_dirs, reverse=True):
        step_dir = step_dirs[step]
        try:
            result = restore_one(step)
        except CheckpointMismatchError:
            raise
        except Exception as error:
            logging.debug("Restoring %s failed in full: %r", step_dir, error)
            logging.warning("Could not restore checkpoint %s (%s); trying an older step.", step_dir, short_error(error))
            failures.append(f"{step_dir}: {short_error(error)}")
            bad_dirs.append(step_dir)
            continue
        logging.info("Restored checkpoint %s.", step_dir)
        return result, step, bad_dirs
    raise CheckpointError(
        f"No checkpoint in {where} could be restored (nothing was moved or deleted; move the folder "
        "away to start afresh); failed steps: " + "; ".join(failures)
    )


def _restore_newest_good(
    manager: ocp.CheckpointManager, steps: list[int], abstract_state: PyTree, quarantine: bool = False
) -> tuple[PyTree, dict, int]:
    """Tries ``steps`` newest first (see `_newest_good`).

    With `quarantine`, once a good step is found the newer bad ones are moved aside (see
    `_move_aside`) so that the recomputed steps can be saved again. When no step restores nothing
    is moved: every rerun fails the same way until the user decides.
    """
    step_dirs = {step: _step_dir(manager, step) for step in steps}
    restore_one = lambda step: _restore_step(manager, step, abstract_state)  # noqa: E731
    (state, data_state), step, bad_dirs = _newest_good(step_dirs, restore_one, manager.directory)
    if quarantine and bad_dirs and jax.process_index() == 0:
        _quarantine(manager, bad_dirs)
    return state, data_state, step


def _quarantine(manager: ocp.CheckpointManager, step_dirs: list[epath.Path]) -> None:
    """Moves bad step folders aside, logging each move, and lets the manager see the change."""
    for step_dir in step_dirs:
        logging.warning(
            "Moved checkpoint %s, which cannot be restored, to %s; its step will be recomputed.",
            step_dir,
            _move_aside(step_dir),
        )
    manager.reload()


def absolute_path(path: str | os.PathLike) -> epath.Path:
    """`path` made absolute (orbax requires it); URLs such as gs://... are kept as they are."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


class Checkpointer:
    """Saves and restores (state, data_state) under one directory, normally MODEL_DIR/checkpoints.

    `read_only` (to inspect a run without touching it) never creates, moves or writes anything.
    """

    def __init__(self, directory: str, config: CheckpointConfig, read_only: bool = False):
        self._directory = absolute_path(directory)
        self._config = config
        self._read_only = read_only
        self._manager = _manager(self._directory, _options(config, read_only=read_only))

    def will_save(self, step: int, force: bool = False) -> bool:
        """Whether `save(step, ..., force)` would write: on the interval (or forced), and not yet on disk."""
        if self._read_only or step in self._manager.all_steps():
            return False
        return force or self._manager.should_save(step)

    def save(
        self, step: int, state: PyTree, data_state: dict, force: bool = False, iterator: IteratorState | None = None
    ) -> bool:
        """Saves on multiples of save_interval_steps, or always when ``force``; returns whether it saved.

        `iterator`, the input iterator's state, is written before this returns (the iterator may
        move on at once); the arrays may still be being written (async_save).

        A step that is already on disk is never overwritten (``force`` included). Raises
        CheckpointSaveError, with the folder and the OS error in one line, when it cannot be written.
        """
        if step in self._manager.all_steps():
            logging.info("Checkpoint step %d already exists in %s; not saving it again.", step, self._directory)
            return False
        if not self.will_save(step, force):
            return False
        self._check_writable(step, state)
        items = {
            STATE_ITEM: ocp.args.StandardSave(state),
            DATA_ITEM: ocp.args.JsonSave(data_state),
            INTEGRITY_ITEM: ocp.args.JsonSave(fingerprints(state)),
        }
        if iterator is not None:
            items[ITERATOR_ITEM] = IteratorSave(iterator)
        with _save_errors(step, self._directory):
            saved = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        logging.info(
            "Checkpoint step %d %s to %s.",
            step,
            "being written" if self._config.async_save else "written",
            self._directory,
        )
        return saved

    def _check_writable(self, step: int, state: PyTree) -> None:
        """Refuses a save that cannot succeed on a local disk: the folder is not writable or too full."""
        if "://" in str(self._directory):
            return
        self.wait_until_finished()  # a pending save's bytes count against the free space
        # Every process saves its own shards, so each probes; pids can repeat across hosts, process indices do not.
        probe = self._directory / f".write-probe-{jax.process_index()}-{os.getpid()}"
        try:
            probe.write_bytes(b"littlehelp")
            probe.unlink()
        except OSError as error:
            raise CheckpointSaveError(_os_error_line(step, self._directory, error)) from None
        needed = int(sum(leaf.nbytes for leaf in jax.tree.leaves(state)) * FREE_SPACE_MARGIN)
        free = shutil.disk_usage(self._directory).free
        if free < needed:
            raise CheckpointSaveError(
                f"cannot save checkpoint step {step} to {self._directory}: it needs about {needed / 1e6:.1f} MB "
                f"and {free / 1e6:.1f} MB are free; the steps already there are untouched"
            )

    def restore(self, abstract_state: PyTree) -> tuple[PyTree, dict, int] | None:
        """Restores onto ``abstract_state``'s shardings: newest good step here, else restore_path, else None.

        Steps here that cannot be restored are moved to ``corrupt/`` (unless read-only).
        """
        self.wait_until_finished()
        if self._manager.all_steps():
            logging.info("Restoring the newest good checkpoint in %s.", self._directory)
            return _restore_newest_good(
                self._manager, self._manager.all_steps(), abstract_state, quarantine=not self._read_only
            )
        if self._config.restore_path is not None:
            logging.info(
                "No checkpoint in %s; restoring from restore_path %s.", self._directory, self._config.restore_path
            )
            return _restore_from_path(absolute_path(self._config.restore_path), abstract_state)
        logging.info("No checkpoint in %s and no restore_path; starting from scratch.", self._directory)
        return None

    @property
    def restore_path(self) -> str | None:
        """Where a run with no checkpoint of its own starts from (`CheckpointConfig.restore_path`)."""
        return self._config.restore_path

    @property
    def restore_model(self) -> str | None:
        """The saved model a one-model run reads from the restore path (`CheckpointConfig.restore_model`)."""
        return self._config.restore_model

    @property
    def directory(self) -> str:
        """Where the step folders are."""
        return str(self._directory)

    def latest_step(self) -> int | None:
        """The newest step on disk (or being written), whether or not it restores."""
        return self._manager.latest_step()

    def wait_until_finished(self) -> None:
        """Blocks until an asynchronous save has been committed; raises CheckpointSaveError if it failed."""
        with _save_errors(self._manager.latest_step() or 0, self._directory):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases orbax's resources."""
        with _save_errors(self._manager.latest_step() or 0, self._directory):
            self._manager.close()


def _os_error_line(step: int, directory: epath.Path, error: OSError) -> str:
    reason = f"{error.strerror or error} [Errno {error.errno}]" if error.errno else str(error)
    return f"cannot save checkpoint step {step} to {directory}: {reason}; the steps already there are untouched"


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind `error`: in its cause chain, or quoted by TensorStore as `os_error_code='N'`."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError):
            return cause
        code = re.search(r"os_error_code='?(\d+)", str(cause))
        if code:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        cause = cause.__cause__ or cause.__context__
    return None


@contextlib.contextmanager
def _save_errors(step: int, directory: epath.Path) -> Iterator[None]:
    """Re-raises an exception caused by an OS error (read-only, disk full) as one-line CheckpointSaveError."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as error:
        cause = _os_error_in(error)
        if cause is None:
            raise
        logging.debug("Saving to %s failed in full: %r", directory, error)
        raise CheckpointSaveError(_os_error_line(step, directory, cause)) from None


def _params_only_restore(step_dir: epath.Path, abstract_params: PyTree, saved_keys: Mapping[str, str]) -> PyTree:
    """Reads `params[saved_keys[k]]` for each key k of `abstract_params` from one step; nothing else.

    Checks shapes (CheckpointMismatchError) and the saved fingerprints of the arrays read.
    """
    with ocp.PyTreeCheckpointer() as reader:
        saved = reader.metadata(step_dir / STATE_ITEM).item_metadata.tree
        missing = sorted(k for k, v in saved_keys.items() if v not in saved.get("params", {}))
        if missing:
            have = sorted(saved.get("params", {}))
            raise CheckpointMismatchError(
                f"checkpoint {step_dir} has no model {[saved_keys[k] for k in missing]} "
                f"(it has {have}); choose one with select= or rename="
            )
        wanted = {"params": {saved_keys[k]: v for k, v in abstract_params.items()}}
        problem = _mismatch({"params": {v: saved["params"][v] for v in saved_keys.values()}}, wanted, step_dir)
        if problem:
            raise CheckpointMismatchError(problem)
        restored = reader.restore(
            step_dir / STATE_ITEM,
            args=ocp.args.PyTreeRestore(
                item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True
            ),
        )
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as json_reader:
        expected = json_reader.restore(step_dir / INTEGRITY_ITEM)
    _check_params_fingerprints(restored, expected)
    return {k: restored["params"][saved_keys[k]] for k in abstract_params}


def _check_params_fingerprints(restored: PyTree, expected: dict) -> None:
    """Compares the fingerprints of restored parameters with those saved for them (`.params...`)."""
    actual = {"." + name[2:].replace("']", "", 1): value for name, value in fingerprints(restored).items()}
    bad = sorted(name for name, value in actual.items() if expected.get(name) != value)
    if bad:
        raise ValueError(f"array contents differ from the fingerprints saved with them: {bad}")


def restore_params(
    path: str | os.PathLike,
    abstract_params: PyTree,
    shardings: PyTree | None = None,
    select: str | None = None,
    rename: Mapping[str, str] | None = None,
) -> tuple[PyTree, int]:
    """Reads parameters only (no optimizer state), directly sharded: (params, step).

    path: a step folder, a checkpoints folder or a run folder (newest good step; a bad step is
      skipped, nothing is moved). `abstract_params` give shapes, dtypes and (unless `shardings` is
      given) shardings. With `select`, `abstract_params` is ONE model's tree and the saved model
      `select` is read into it; otherwise it is keyed by model name and each key k is read from the
      saved model `rename.get(k, k)`. A missing model or a shape that differs is named in one line.
    """
    if shardings is not None:
        abstract_params = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params, shardings
        )
    keyed = {select: abstract_params} if select is not None else dict(abstract_params)
    saved_keys = {k: k if select is not None else (rename or {}).get(k, k) for k in keyed}
    root, steps = _step_folders(absolute_path(path))
    restore_one = lambda step: _params_only_restore(root / str(step), keyed, saved_keys)  # noqa: E731
    params, step, _ = _newest_good({step: root / str(step) for step in steps}, restore_one, root)
    return (params[select] if select is not None else params), step


def saved_contents(path: str | os.PathLike) -> tuple[list[str], bool]:
    """(model keys, whether optimizer state was saved) of the newest finished step under `path` (a step,
    checkpoints or run folder): a training run saves optimizer state; `littlehelp convert` parameters only."""
    root, steps = _step_folders(absolute_path(path))
    with ocp.PyTreeCheckpointer() as reader:
        saved = reader.metadata(root / str(max(steps)) / STATE_ITEM).item_metadata.tree
    return sorted(saved.get("params", {})), "opt_state" in saved


def check_restore_path(model_dir: str | os.PathLike, config: CheckpointConfig) -> None:
    """Raises CheckpointError when a run with no checkpoint of its own would start from a restore path
    that holds no finished checkpoint; a trainer checks this before it writes anything."""
    if config.restore_path is not None and not finished_steps(epath.Path(model_dir) / "checkpoints"):
        _restore_path_steps(absolute_path(config.restore_path))


def finished_steps(directory: str | os.PathLike) -> list[int]:
    """The steps of a checkpoints folder whose state was written completely (none if it is absent)."""
    root = epath.Path(directory)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / STATE_ITEM).is_dir())


def _step_folders(path: epath.Path) -> tuple[epath.Path, list[int]]:
    """(folder of step folders, finished steps) for a step, checkpoints or run folder."""
    if (path / STATE_ITEM).is_dir():
        return path.parent, [int(path.name)]
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = finished_steps(root)
    if not steps:
        raise CheckpointError(
            f"{path} holds no finished checkpoint (a step folder, a checkpoints folder or a run folder)"
        )
    return root, steps


def _restore_path_steps(path: epath.Path) -> tuple[epath.Path, list[int]]:
    """`_step_folders` of a restore path, refused naming it when absent or without a finished step."""
    if not path.is_dir():
        raise CheckpointError(f"CheckpointConfig.restore_path {path} does not exist.")
    try:
        return _step_folders(path)
    except CheckpointError:
        raise CheckpointError(f"CheckpointConfig.restore_path {path} holds no finished checkpoint.") from None


def _restore_from_path(path: epath.Path, abstract_state: PyTree) -> tuple[PyTree, dict, int]:
    """Restores from a step folder (that step only), or a checkpoints or run folder (newest good step)."""
    root, steps = _restore_path_steps(path)
    manager = _manager(root, _options(CheckpointConfig(), read_only=True))  # never moves anything
    try:
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


LOCK_NAME = "run.lock"


class RunLockedError(LittlehelpError):
    """Another live trainer holds MODEL_DIR's lock."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), to tell a reused pid apart; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_alive(holder: dict) -> bool:
    """Whether the process that wrote a lock on this host still runs (the same process, not a reused pid)."""
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    if os.path.isdir("/proc"):
        started = _process_start(pid)
        return started is not None and holder.get("process_start") in (None, started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`MODEL_DIR/run.lock`: one trainer per run folder. Context manager; process 0 only.

    The file names its holder (host, pid, start time). A lock left by a dead process on this host is
    taken over with a log line; one held by a live process, or by another host, is refused.
    """

    def __init__(self, model_dir: str | os.PathLike):
        self.path = os.path.join(os.fspath(model_dir), LOCK_NAME)
        self._held = False

    def _record(self) -> dict:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "process_start": _process_start(pid),
        }

    def _write_new(self) -> bool:
        """Creates the lock file if absent; returns whether this process now holds it."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._record(), f)
        return True

    def _holder(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _create_folder_and_lock(self) -> bool:
        """Creates MODEL_DIR and the lock file if absent (see `_write_new`); a MODEL_DIR that is a file or
        cannot be written is refused in one line naming it."""
        folder = os.path.dirname(self.path)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise LittlehelpError(f"MODEL_DIR {folder} is a file, not a folder; choose another MODEL_DIR")
        try:
            os.makedirs(folder, exist_ok=True)
            return self._write_new()
        except OSError as error:
            raise LittlehelpError(
                f"MODEL_DIR {folder} cannot be written ({error.strerror}); choose another MODEL_DIR"
            ) from None

    def acquire(self) -> None:
        """Takes the lock or raises RunLockedError naming the holder."""
        if jax.process_index() != 0:
            return
        if self._create_folder_and_lock():
            self._held = True
            return
        holder = self._holder()
        same_host = holder.get("host") == socket.gethostname()
        who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
        if holder and (not same_host or _holder_alive(holder)):
            raise RunLockedError(
                f"{os.path.dirname(self.path)} is in use by another trainer ({who}; lock {self.path}); "
                "stop it or use another MODEL_DIR" + ("" if same_host else f", or delete {self.path} if it is gone")
            )
        logging.warning("Taking over the lock %s of a process that is gone (%s).", self.path, who or "unreadable")
        os.unlink(self.path)
        if not self._write_new():
            raise RunLockedError(f"{self.path} was taken by another trainer while this one took over a stale lock")
        self._held = True

    def release(self) -> None:
        """Removes the lock file if this process holds it."""
        if self._held and self._holder().get("pid") == os.getpid():
            os.unlink(self.path)
        self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


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
