"""active.validation: the refusals' messages, and the non-finite row count against a plain numpy mask."""

import numpy as np
import pytest

from active import validation
from active.validation import SelectionInputError
from littlehelp.errors import LittlehelpError


def test_refusals_are_littlehelp_errors_and_value_errors():
    with pytest.raises(SelectionInputError) as refused:
        validation.check_integer("batch_size", 0, 1)
    assert isinstance(refused.value, LittlehelpError) and isinstance(refused.value, ValueError)
    assert refused.value.exit_code == 1
    assert refused.value.one_line() == "batch_size must be a positive integer, got 0"


@pytest.mark.parametrize(
    "value, minimum, message",
    [
        (np.int64(-2), 0, "rounds must be a non-negative integer, got -2"),
        (True, 1, "rounds must be a positive integer, got True"),
        ("3", 1, "rounds must be a positive integer, got '3'"),
        (1, 2, "rounds must be an integer >= 2, got 1"),
    ],
)
def test_check_integer_names_the_argument_and_the_value(value, minimum, message):
    with pytest.raises(SelectionInputError, match=f"^{message}$"):
        validation.check_integer("rounds", value, minimum)
    validation.check_integer("rounds", np.int32(minimum), minimum)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_finite_counts_the_rows_a_mask_finds(dtype):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(500, 3, 4)).astype(dtype)
    array[rng.choice(500, 40, replace=False), rng.integers(3), rng.integers(4)] = rng.choice([np.nan, np.inf, -np.inf])
    bad = np.flatnonzero(~np.isfinite(array).reshape(500, -1).all(axis=1))
    with pytest.raises(SelectionInputError, match=rf"^x has {len(bad)} rows with NaN or Inf \(first: row {bad[0]}\)$"):
        validation.check_finite("x", array)


def test_check_finite_passes_finite_rows_whose_sum_overflows_and_non_float_arrays():
    validation.check_finite("x", np.array([[1e308, 1e308], [0.0, 1.0]]))
    validation.check_finite("x", np.array([3, -1, 7]))
    validation.check_finite("x", np.zeros((0, 4)))
    with pytest.raises(SelectionInputError, match=r"^x has 1 row with NaN or Inf \(first: row 1\)$"):
        validation.check_finite("x", np.array([[1e308, 1e308], [np.inf, -np.inf]]))


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0.0, 1.0, 1.5]), "labels must be integer classes: found 1.5 at row 2"),
        (np.array([0.0, np.nan, 1.0]), "labels must be integer classes: found nan at row 1"),
        (np.array(["a", "b", "c"]), "labels must be integer classes, got dtype <U1"),
        (np.array([[0, 1, 1]]), r"labels must hold one label per row of features \(shape \(3,\)\), got shape \(1, 3\)"),
    ],
)
def test_check_labels_refuses_what_is_not_one_integer_class_per_row(labels, message):
    with pytest.raises(SelectionInputError, match=f"^{message}$"):
        validation.check_labels("labels", labels, 3, "features")


def test_check_labels_accepts_whole_floats_as_integers():
    labels = validation.check_labels("labels", np.array([0.0, 2.0, 1.0]), 3, "features")
    assert labels.dtype == np.int64 and labels.tolist() == [0, 2, 1]


def test_check_known_lists_every_unknown_name_once_with_close_matches():
    known = ["random", "margin", "badge"]
    validation.check_known("selector", ["margin", "random"], known)
    with pytest.raises(
        SelectionInputError,
        match=r"^unknown selectors 'margn' \(did you mean 'margin'\?\), 'xyz'; "
        r"known: badge, margin, random$",
    ):
        validation.check_known("selector", ["random", "margn", "xyz", "margn"], known)
