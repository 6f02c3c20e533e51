"""active.models: the loss against float64 numpy, weighted and distilled training, the CNN, churn."""

import numpy as np
import pytest

from active import models

SMALL = models.ModelConfig(hidden=(16,), steps=150, batch_size=32, learning_rate=1e-2)


def blobs(n_per_class: int, seed: int, classes: int = 3, dim: int = 4, spread: float = 0.3):
    """Well-separated Gaussian blobs: features [n, dim] float32, labels [n]."""
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, dim) * 3.0
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    return features.astype(np.float32), labels.astype(np.int32)


def test_example_losses_match_numpy_formula():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    teacher = rng.dirichlet(np.ones(4), 5)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    alpha = 0.3
    expected = (1 - alpha) * -log_p[np.arange(5), labels] + alpha * -(teacher * log_p).sum(axis=1)
    got = models.example_losses(logits.astype(np.float32), labels, teacher.astype(np.float32), alpha)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_mlp_learns_separable_classes_and_reports_embeddings():
    x, y = blobs(30, seed=0)
    test_x, test_y = blobs(20, seed=1)
    model = models.fit(x, y, 3, SMALL, seed=0)
    probabilities, embeddings = model.predict(test_x)
    assert probabilities.shape == (60, 3) and embeddings.shape == (60, 16)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert models.accuracy(probabilities, test_y) == 1.0


def test_weights_decide_between_conflicting_labels():
    x, y = blobs(20, seed=0, classes=2)
    flipped = 1 - y
    both_x, both_y = np.concatenate([x, x]), np.concatenate([y, flipped])
    heavy_true = np.concatenate([np.full(40, 4.0), np.full(40, 1.0)])
    heavy_flipped = heavy_true[::-1].copy()
    true_model = models.fit(both_x, both_y, 2, SMALL, seed=0, weights=heavy_true)
    flipped_model = models.fit(both_x, both_y, 2, SMALL, seed=0, weights=heavy_flipped)
    assert models.accuracy(true_model.probabilities(x), y) == 1.0
    assert models.accuracy(flipped_model.probabilities(x), flipped) == 1.0


def test_full_distillation_follows_the_teacher_not_the_labels():
    x, y = blobs(30, seed=0)
    teacher = models.fit(x, y, 3, SMALL, seed=0)
    shuffled = np.random.default_rng(0).permutation(y)
    distilled = models.fit(x, shuffled, 3, SMALL, seed=1, teacher_probabilities=teacher.probabilities(x), alpha=1.0)
    test_x, _ = blobs(20, seed=2)
    assert models.churn(teacher.probabilities(test_x), distilled.probabilities(test_x)) == 0.0


def test_cnn_learns_which_half_of_the_image_is_bright():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 0.2, (64, 6, 6)).astype(np.float32)
    labels = rng.integers(0, 2, 64).astype(np.int32)
    for image, label in zip(images, labels):
        image[:, 3 * label : 3 * label + 3] += 1.0
    config = models.ModelConfig(hidden=(8,), image_shape=(6, 6), steps=60, batch_size=16, learning_rate=1e-2)
    model = models.fit(images.reshape(64, -1), labels, 2, config, seed=0)
    probabilities, embeddings = model.predict(images.reshape(64, -1))
    assert embeddings.shape == (64, 8)
    assert models.accuracy(probabilities, labels) == 1.0


def test_predict_pads_chunks_without_changing_results(monkeypatch):
    x, y = blobs(10, seed=0)
    model = models.fit(x, y, 3, SMALL, seed=0)
    whole = model.probabilities(x)
    monkeypatch.setattr(models, "PREDICT_CHUNK", 7)  # 30 rows: chunks 7, 7, 7, 7, 2 (padded to 7)
    np.testing.assert_allclose(model.probabilities(x), whole, rtol=1e-6)


def test_churn_and_accuracy_match_their_definitions():
    before = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    after = np.array([[0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.8, 0.2]])
    assert models.churn(before, after) == 0.5
    assert models.accuracy(after, np.array([1, 1, 1, 0])) == 0.75


def test_padded_sizes_are_powers_of_two_covering_n():
    assert [models.padded_size(n) for n in (1, 64, 65, 300, 1024)] == [64, 64, 128, 512, 1024]


def test_fit_rejects_bad_arguments():
    x, y = blobs(5, seed=0)
    with pytest.raises(ValueError, match="teacher_probabilities"):
        models.fit(x, y, 3, SMALL, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        models.fit(x, y, 3, SMALL, alpha=1.5, teacher_probabilities=np.full((15, 3), 1 / 3))
    with pytest.raises(ValueError, match="ModelConfig.steps"):
        models.ModelConfig(steps=0)
