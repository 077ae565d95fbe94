"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rfcache.evaluate.metrics import feature_statistics, frechet_distance, psnr, relative_l2, ssim


def test_relative_l2_and_psnr_by_hand() -> None:
    ref = torch.tensor([[3.0, 4.0]])  # ||ref|| = 5
    out = torch.tensor([[3.0, 5.0]])  # error (0, 1): ||e|| = 1, mse = 1/2
    assert relative_l2(out, ref) == pytest.approx(0.2)
    assert psnr(out, ref, data_range=1.0) == pytest.approx(10 * math.log10(2))
    assert psnr(out, ref, data_range=4.0) == pytest.approx(10 * math.log10(32))
    assert psnr(ref, ref) == math.inf


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    # constant windows: contrast and structure terms are (0 + C2) / (0 + C2) = 1, so
    # SSIM = (2ab + C1) / (a² + b² + C1) with C1 = (0.01 L)²
    a, b, c1 = 0.5, 0.25, 0.01**2
    out = torch.full((2, 1, 16, 16), a)
    ref = torch.full((2, 1, 16, 16), b)
    assert ssim(out, ref) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    images = torch.rand(3, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    assert ssim(images, images) == pytest.approx(1.0)
    assert ssim(images, images.flip(0)) < 0.5
    with pytest.raises(ValueError, match="one shape"):
        ssim(images, images[:1])


def test_frechet_distance_of_diagonal_gaussians_by_hand() -> None:
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, -3.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # ||mu1 - mu2||² = 9 + 16; trace terms per axis: s1 + s2 - 2 sqrt(s1 s2) = (1 + 9 - 6) + (4 + 1 - 4)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(25 + 4 + 1)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_feature_statistics_are_mean_and_unbiased_covariance() -> None:
    x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]])
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, [3.0, 4.0])
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])
    with pytest.raises(ValueError, match="at least two"):
        feature_statistics(x[:1])
