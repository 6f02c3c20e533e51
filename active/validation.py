"""Up-front checks on what callers hand to `active`: pools, features, labels, budgets and names.

The public entry points (`Selector.select`, `active.loop.run`, `active.stage.select`, the study CLI)
call these before anything expensive runs. Each refusal is a `SelectionInputError` whose one-line
message names the argument and the bad value; it is a `LittlehelpError` (a CLI prints it as one
line) and a `ValueError` (callers that catch ValueError keep working).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

import numpy as np

from littlehelp.errors import LittlehelpError

if TYPE_CHECKING:
    from active.selectors import Pool


class SelectionInputError(LittlehelpError, ValueError):
    """Bad input to a selector, the loop, the selection stage or the study; the message names it."""


def _shown(value: object) -> str:
    """`value` as a message shows it: numpy scalars as plain Python values."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_integer(name: str, value: object, minimum: int) -> None:
    """Refuses anything but an integer (not a bool) >= `minimum`."""
    if _is_integer(value) and value >= minimum:
        return
    wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    raise SelectionInputError(f"{name} must be {wanted}, got {_shown(value)}")


def check_budget(budget: object, pool_size: int) -> None:
    """Refuses a budget that is not an integer in [0, pool_size]."""
    if _is_integer(budget) and 0 <= budget <= pool_size:
        return
    raise SelectionInputError(f"budget must be an integer in [0, {pool_size}] (the pool size), got {_shown(budget)}")


def check_schedule(seed_size: object, batch_size: object, rounds: object) -> None:
    """Refuses a labelling schedule without a seed set, with an empty batch, or negative rounds."""
    check_integer("seed_size", seed_size, 1)
    check_integer("batch_size", batch_size, 1)
    check_integer("rounds", rounds, 0)


def check_schedule_fits(seed_size: int, batch_size: int, rounds: int, pool_size: int, pool: str) -> None:
    """Refuses a schedule that labels more examples than `pool` (named in the message) holds."""
    needed = seed_size + rounds * batch_size
    if needed > pool_size:
        raise SelectionInputError(
            f"seed_size {seed_size} + rounds {rounds} x batch_size {batch_size} = {needed} "
            f"exceeds {pool}: {_rows(pool_size)}"
        )


def check_rows(name: str, rows: int) -> None:
    """Refuses an input with no rows."""
    if rows == 0:
        raise SelectionInputError(f"{name} is empty: 0 rows")


def check_finite(name: str, array: np.ndarray) -> None:
    """Refuses a floating array with NaN or Inf, saying how many rows hold one and the first.

    Per-row float64 sums find the suspect rows without an array-sized mask; only those are
    checked element by element (a finite row whose sum overflows is not refused).
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact) or array.size == 0:
        return
    flat = array.reshape(len(array), -1)
    with np.errstate(invalid="ignore", over="ignore"):
        suspects = np.flatnonzero(~np.isfinite(flat.sum(axis=1, dtype=np.float64)))
    bad = suspects[~np.isfinite(flat[suspects]).all(axis=1)]
    if len(bad):
        raise SelectionInputError(f"{name} has {_rows(len(bad))} with NaN or Inf (first: row {bad[0]})")


def check_weights(weights: np.ndarray, rows: int) -> np.ndarray:
    """Example weights as float32: one per row, finite and positive (a weight of 0 is an example not
    selected), or `SelectionInputError` naming the first bad one."""
    weights = np.asarray(weights, np.float64).reshape(-1)
    if len(weights) != rows:
        raise SelectionInputError(f"{len(weights)} example weights for {_rows(rows)}")
    check_finite("example weights", weights)
    bad = np.flatnonzero(~(weights.astype(np.float32) > 0))
    if len(bad):
        raise SelectionInputError(f"example weights must be positive: row {bad[0]} has {_shown(weights[bad[0]])}")
    return weights.astype(np.float32)


def check_positions(indices: np.ndarray, pool_size: int) -> np.ndarray:
    """`indices` as int64 after refusing a non-integer, a position outside [0, pool_size) or a repeat."""
    indices = np.asarray(indices).reshape(-1)
    if len(indices) and not np.issubdtype(indices.dtype, np.integer):
        raise SelectionInputError(f"positions must be integers, got dtype {indices.dtype}")
    outside = np.flatnonzero((indices < 0) | (indices >= pool_size))
    if len(outside):
        raise SelectionInputError(f"positions must be in [0, {pool_size}): found {_shown(indices[outside[0]])}")
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise SelectionInputError(f"positions must be distinct: {_shown(values[counts > 1][0])} repeats")
    return indices.astype(np.int64)


def check_pool(pool: Pool, budget: object) -> None:
    """What every `Selector.select` checks first: a non-empty pool, the budget, finite fields."""
    size = pool.size
    check_rows("pool", size)
    check_budget(budget, size)
    for field in dataclasses.fields(pool):
        value = getattr(pool, field.name)
        if value is not None:
            check_finite(f"Pool.{field.name}", value)


def check_labels(name: str, labels: np.ndarray, rows: int, rows_name: str) -> np.ndarray:
    """`labels` as int64, after refusing a shape other than [rows] or a value that is not an integer."""
    labels = np.asarray(labels)
    if labels.shape != (rows,):
        raise SelectionInputError(
            f"{name} must hold one label per row of {rows_name} (shape ({rows},)), got shape {labels.shape}"
        )
    if np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.floating):
        raise SelectionInputError(f"{name} must be integer classes, got dtype {labels.dtype}")
    fractional = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
    if len(fractional):
        row = fractional[0]
        raise SelectionInputError(f"{name} must be integer classes: found {_shown(labels[row])} at row {row}")
    return labels.astype(np.int64)


def check_label_range(name: str, labels: np.ndarray, num_classes: int) -> None:
    """Refuses a label outside [0, num_classes), naming the first."""
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(outside):
        row = outside[0]
        raise SelectionInputError(f"{name} must be in [0, {num_classes}): found {_shown(labels[row])} at row {row}")


def check_classes(name: str, labels: np.ndarray) -> None:
    """Refuses labels that hold fewer than two classes."""
    classes = np.unique(labels)
    if len(classes) < 2:
        raise SelectionInputError(f"{name} hold a single class ({_shown(classes[0])}); need at least 2")


def _with_suggestion(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)


def check_known(kind: str, names: Iterable[str], known: Collection[str], known_as: str = "known") -> None:
    """Refuses every name not in `known` in one message, with a close match for each where there is one."""
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if unknown:
        listed = ", ".join(_with_suggestion(name, known) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise SelectionInputError(f"unknown {kind}{plural} {listed}; {known_as}: {', '.join(sorted(known))}")
