"""The digits feature space: deterministic, and it separates real digits from noise."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits

from rfcache.evaluate.digits import (
    class_agreement,
    digits_feature_net,
    digits_features,
    digits_frechet_distance,
)


def _real_digits(n: int) -> tuple[torch.Tensor, np.ndarray]:
    digits = load_digits()
    images = torch.tensor(digits.data[:n] / 16, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return torch.nn.functional.interpolate(images, size=(16, 16), mode="nearest"), digits.target[:n]


def test_feature_net_is_seeded_and_fits_the_digits() -> None:
    digits = load_digits()
    net = digits_feature_net()
    assert net.score(digits.data, digits.target) > 0.98
    refit = clone(net).fit(digits.data, digits.target)  # same seed -> same weights
    np.testing.assert_array_equal(net[-1].coefs_[0], refit[-1].coefs_[0])
    assert digits_features(digits.data[:5]).shape == (5, 32)


def test_frechet_distance_and_accuracy_rank_real_digits_above_noise() -> None:
    images, labels = _real_digits(300)
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert digits_frechet_distance(images) < 0.05 * digits_frechet_distance(noise)
    assert class_agreement(images, labels) > 0.95
    assert class_agreement(noise, labels) < 0.3
