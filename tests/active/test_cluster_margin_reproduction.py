"""The Cluster-Margin study (active.cluster_margin_reproduction) and the Fashion-MNIST reader it needs: idx
files read against numpy, a missing data set named with its install line, the real files' shapes and
label counts (skipped where the package is absent), and the regime: margin candidates at most a fifth
of the unlabelled pool in every round of the default and --quick schedules."""

import gzip

import numpy as np
import pytest

from active import cluster_margin_reproduction as cm_study
from active import data, loop
from littlehelp import study
from littlehelp.errors import LittlehelpError

FASHION_MNIST = "fashion_mnist" in data.available()
IDX_NAMES = {
    "train-images-idx3-ubyte": "train_images",
    "train-labels-idx1-ubyte": "train_labels",
    "t10k-images-idx3-ubyte": "test_images",
    "t10k-labels-idx1-ubyte": "test_labels",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` (uint8) in the idx format: 0, 0, type 0x08, rank, big-endian uint32 dimensions, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_fashion_mnist(folder, arrays: dict[str, np.ndarray]) -> None:
    """The four gzipped idx files of `arrays` (keyed train_images, train_labels, ...) in `folder`."""
    for stem, key in IDX_NAMES.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(arrays[key])))


@pytest.mark.parametrize("gzipped", [True, False])
def test_read_idx_returns_the_array_written(tmp_path, gzipped):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    path = tmp_path / ("images.gz" if gzipped else "images")
    path.write_bytes(gzip.compress(idx_bytes(images)) if gzipped else idx_bytes(images))
    read = data.read_idx(path)
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, images)


def test_read_idx_refuses_another_type_code_and_a_truncated_file(tmp_path):
    labels = np.arange(6, dtype=np.uint8)
    wrong_type = tmp_path / "floats"
    wrong_type.write_bytes(bytes([0, 0, 0x0D]) + idx_bytes(labels)[3:])
    with pytest.raises(ValueError, match="not an idx file of unsigned bytes"):
        data.read_idx(wrong_type)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(idx_bytes(labels)[:-1])
    with pytest.raises(ValueError, match=r"holds 5 data bytes; its header \(6,\) needs 6"):
        data.read_idx(truncated)


def test_fashion_mnist_is_flattened_scaled_to_unit_range_and_split_as_shipped(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(8, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "test_labels": np.array([9, 0, 4], np.uint8),
    }
    write_fashion_mnist(tmp_path, arrays)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    loaded = data.load("fashion_mnist")
    expected = (arrays["train_images"].reshape(8, -1) / 255.0).astype(np.float32)
    assert loaded.train_features.dtype == np.float32
    np.testing.assert_array_equal(loaded.train_features, expected)
    np.testing.assert_array_equal(loaded.test_labels, [9, 0, 4])
    assert loaded.train_labels.dtype == np.int32 and loaded.num_classes == 10
    assert len(data.load("fashion_mnist", seed=2, max_train=5, max_test=2).train_labels) == 5


def test_missing_fashion_mnist_is_left_out_and_its_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    assert "fashion_mnist" not in data.available()
    with pytest.raises(data.DataMissingError, match="apt-get install dataset-fashion-mnist") as raised:
        data.load("fashion_mnist")
    assert isinstance(raised.value, LittlehelpError) and isinstance(raised.value, FileNotFoundError)
    assert "\n" not in str(raised.value)


@pytest.mark.skipif(not FASHION_MNIST, reason="Fashion-MNIST is absent (apt-get install dataset-fashion-mnist)")
def test_the_installed_fashion_mnist_has_60000_and_10000_balanced_images():
    loaded = data.load_fashion_mnist()
    assert loaded.train_features.shape == (60000, 784) and loaded.test_features.shape == (10000, 784)
    assert np.bincount(loaded.train_labels).tolist() == [6000] * 10
    assert np.bincount(loaded.test_labels).tolist() == [1000] * 10
    assert loaded.train_features.min() == 0.0 and loaded.train_features.max() == 1.0


@pytest.mark.parametrize("quick", [False, True])
def test_the_margin_candidates_stay_under_a_fifth_of_the_unlabelled_pool_in_every_round(quick):
    settings, _ = study.resolve_settings(cm_study.STUDY, study.Request("cluster_margin", quick=quick))
    shares = cm_study.candidate_shares(settings["pool"] or 60000, settings)
    assert len(shares) == settings["rounds"] and max(shares) <= cm_study.MAX_CANDIDATE_SHARE
    assert shares == sorted(shares)  # the pool shrinks, so the share grows: the last round is the largest
    if not quick:
        assert settings["batch_size"] >= 1000 and shares[0] == pytest.approx(10000 / 59000)


def test_candidate_shares_count_the_unlabelled_pool_before_each_round():
    settings = {"seed_size": 10, "batch_size": 5, "rounds": 3, "margin_multiplier": 10.0}
    assert cm_study.candidate_shares(100, settings) == pytest.approx([50 / 90, 50 / 85, 50 / 80])
    assert cm_study.candidate_shares(60, settings)[-1] == 1.0  # fewer unlabelled than candidates: all of them


@pytest.fixture
def fake_run(monkeypatch):
    """A 300-example pool and a loop that returns constructed records; returns the loop's keyword arguments."""
    calls = []

    def fashion_mnist():
        labels = np.arange(300) % 10
        return data.LabelledData(
            "fake", np.zeros((300, 4), np.float32), labels, np.zeros((20, 4), np.float32), labels[:20], 10
        )

    def run(*arrays, **kwargs):
        calls.append(kwargs)
        counts = [kwargs["seed_size"] + r * kwargs["batch_size"] for r in range(kwargs["rounds"] + 1)]
        return [loop.RoundRecord(r, n, 0.5 + 0.1 * r, 0.0 if r == 0 else 0.25, None) for r, n in enumerate(counts)]

    monkeypatch.setattr(cm_study, "fashion_mnist", fashion_mnist)
    monkeypatch.setattr(loop, "run", run)
    return calls


def context_of(arm, settings, tmp_path):
    return study.ArmContext(cm_study.STUDY, cm_study.STUDY.arm(arm), 0, settings, tmp_path)


def test_an_arm_records_accuracy_and_the_candidate_share_per_round(fake_run, tmp_path):
    settings = {**cm_study.SETTINGS, "seed_size": 20, "batch_size": 5, "rounds": 2, "clusters": 5}
    outcome = cm_study.STUDY.arm("cluster_margin").run(context_of("cluster_margin", settings, tmp_path))
    assert fake_run[0]["selector"] == "cluster_margin" and fake_run[0]["num_clusters"] == 5
    assert fake_run[0]["selector_kwargs"] == {"margin_multiplier": 10.0}
    assert outcome["accuracy"] == [[20, 25, 30], [0.5, 0.6, 0.7]]
    assert outcome["candidate_share"] == [[20, 25], [50 / 280, 50 / 275]]
    assert outcome["values"] == pytest.approx(
        {
            "final_accuracy": 0.7,
            "area": 0.6,
            "selection_seconds": 0.25,
            "first_candidate_share": 50 / 280,
            "last_candidate_share": 50 / 275,
        }
    )
    cm_study.STUDY.arm("margin").run(context_of("margin", settings, tmp_path))
    assert fake_run[1]["selector"] == "margin" and fake_run[1]["selector_kwargs"] is None


def test_an_arm_refuses_a_schedule_whose_candidates_exceed_the_stated_share(fake_run, tmp_path):
    settings = {**cm_study.SETTINGS, "seed_size": 20, "batch_size": 10, "rounds": 2}
    with pytest.raises(study.StudyError, match="at most 20%"):
        cm_study.STUDY.arm("random").run(context_of("random", settings, tmp_path))
    assert not fake_run


def test_the_claims_compare_cluster_margin_with_margin_and_random_after_the_last_round():
    compared = {(c.arm, c.baseline, c.metric, c.threshold) for c in cm_study.STUDY.claims}
    assert compared == {
        ("cluster_margin", "margin", "final_accuracy", -cm_study.NON_INFERIORITY),
        ("cluster_margin", "random", "final_accuracy", 0.0),
    }
    assert all("9,000 labels" in c.statement for c in cm_study.STUDY.claims)
    assert {a.name for a in cm_study.STUDY.arms} == {"random", "margin", "cluster_margin", "badge", "coreset"}
