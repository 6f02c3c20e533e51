"""Labelled data sets that load offline: scikit-learn's bundled tables and Fashion-MNIST.

scikit-learn ships digits, breast_cancer, wine and iris inside its wheel (its `fetch_*` loaders
download and are not used). Fashion-MNIST is read from the Debian package `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist`) when it is installed; `available()` leaves it out otherwise, and
loading it raises a `DataMissingError` whose one line says how to install it.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np

from littlehelp.errors import LittlehelpError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
BUNDLED = ("digits", "breast_cancer", "wine", "iris")
IDX_UNSIGNED_BYTE = 0x08  # the idx type code of every Fashion-MNIST file


class DataMissingError(LittlehelpError, FileNotFoundError):
    """A data set that is not installed here; the one-line message says how to install it."""


@dataclasses.dataclass(frozen=True)
class LabelledData:
    """A train pool and a test set; features float32 (standardised or scaled to [0, 1])."""

    name: str
    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    image_shape: tuple[int, int] | None = None


def available() -> list[str]:
    """Names `load` accepts on this machine."""
    return [*BUNDLED, *(["fashion_mnist"] if _fashion_mnist_files() else [])]


def load(
    name: str, seed: int = 0, test_fraction: float = 0.3, max_train: int | None = None, max_test: int | None = None
) -> LabelledData:
    """Loads `name`; bundled tables get a stratified split drawn with `seed` and are standardised
    with the train pool's statistics. Fashion-MNIST keeps its own 60000/10000 split, optionally
    subsampled (with `seed`) to `max_train` / `max_test` examples."""
    if name == "fashion_mnist":
        return subsample(load_fashion_mnist(), seed, max_train, max_test)
    if name not in BUNDLED:
        raise ValueError(f"unknown data set {name!r}; available here: {available()}")
    from sklearn import datasets, model_selection  # pylint: disable=import-outside-toplevel

    features, labels = getattr(datasets, f"load_{name}")(return_X_y=True)
    train_x, test_x, train_y, test_y = model_selection.train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a feature constant on the train pool is only centred
    return LabelledData(
        name,
        _standardise(train_x, mean, std),
        train_y.astype(np.int32),
        _standardise(test_x, mean, std),
        test_y.astype(np.int32),
        int(labels.max()) + 1,
    )


def subsample(dataset: LabelledData, seed: int, max_train: int | None, max_test: int | None) -> LabelledData:
    """At most `max_train` train and `max_test` test examples, drawn uniformly with `seed`."""
    rng = np.random.default_rng(seed)

    def pick(n: int, limit: int | None) -> np.ndarray:
        return np.arange(n) if limit is None or limit >= n else np.sort(rng.choice(n, limit, replace=False))

    train, test = pick(len(dataset.train_labels), max_train), pick(len(dataset.test_labels), max_test)
    return dataclasses.replace(
        dataset,
        train_features=dataset.train_features[train],
        train_labels=dataset.train_labels[train],
        test_features=dataset.test_features[test],
        test_labels=dataset.test_labels[test],
    )


def _standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((features - mean) / std).astype(np.float32)


def _fashion_mnist_files() -> dict[str, Path] | None:
    """The four idx files (gzipped or not), or None when any is missing."""
    names = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    found = {}
    for key, stem in names.items():
        candidates = [FASHION_MNIST_DIR / stem, FASHION_MNIST_DIR / f"{stem}.gz"]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            return None
        found[key] = existing[0]
    return found


def read_idx(path: Path) -> np.ndarray:
    """Reads an idx file of unsigned bytes (the MNIST format: two zero bytes, the type code 0x08,
    the rank, then each dimension as a big-endian uint32 and the data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[:3] != bytes([0, 0, IDX_UNSIGNED_BYTE]):
        raise ValueError(f"{path} is not an idx file of unsigned bytes (header {raw[:4].hex()})")
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    offset = 4 + 4 * rank
    if len(raw) - offset != np.prod(shape, dtype=np.int64):
        raise ValueError(f"{path} holds {len(raw) - offset} data bytes; its header {shape} needs {np.prod(shape)}")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def load_fashion_mnist() -> LabelledData:
    """Fashion-MNIST from the Debian package, pixels scaled to [0, 1]; a `DataMissingError` saying how
    to install it when absent."""
    files = _fashion_mnist_files()
    if files is None:
        raise DataMissingError(
            f"Fashion-MNIST is not installed under {FASHION_MNIST_DIR}: "
            "install it with `apt-get install dataset-fashion-mnist`"
        )
    images = {key: read_idx(files[f"{key}_images"]) for key in ("train", "test")}
    labels = {key: read_idx(files[f"{key}_labels"]).astype(np.int32) for key in ("train", "test")}
    scale = (np.arange(256) / 255.0).astype(np.float32)  # x / 255 as a lookup: no float64 copy of 47M pixels
    flat = {key: scale[value.reshape(len(value), -1)] for key, value in images.items()}
    return LabelledData("fashion_mnist", flat["train"], labels["train"], flat["test"], labels["test"], 10, (28, 28))
