"""active.data: bundled tables are split by seed and standardised with the train pool's statistics."""

import numpy as np

from active import data


def test_bundled_features_are_standardised_with_train_statistics_and_constant_columns_only_centred():
    from sklearn import datasets, model_selection

    loaded = data.load("digits", seed=3)
    features, labels = datasets.load_digits(return_X_y=True)
    train_x, test_x, _, _ = model_selection.train_test_split(
        features, labels, test_size=0.3, random_state=3, stratify=labels
    )
    std = train_x.std(axis=0)
    assert (std == 0).any()  # digits has pixels that are blank on every train image
    expected = (test_x - train_x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(loaded.test_features, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(loaded.test_features).max() < 100  # no blow-up from a zero deviation
