"""Distances of a cached output to the full-compute output of the same seed and input.

Images are ``(N, C, H, W)`` tensors in ``[0, data_range]``. SSIM is scikit-image's
``structural_similarity`` (Wang et al. 2004, 7x7 uniform window), averaged over the batch.
The Fréchet distance compares two Gaussians fitted to feature sets (the FID formula).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

__all__ = ["feature_statistics", "frechet_distance", "psnr", "relative_l2", "ssim"]


def relative_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    """``||output - reference|| / ||reference||`` over the whole batch."""
    ref = reference.double()
    return float((output.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def psnr(output: torch.Tensor, reference: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical inputs); images in ``[0, data_range]``."""
    mse = float(((output.double() - reference.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def ssim(output: torch.Tensor, reference: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Mean structural similarity of ``(N, C, H, W)`` image batches (1 for identical images).

    The window is 7 pixels, or the largest odd size that fits images smaller than that.
    """
    from skimage.metrics import structural_similarity

    if output.shape != reference.shape or output.ndim != 4:
        raise ValueError(f"ssim expects two (N, C, H, W) batches of one shape, got {output.shape}, {reference.shape}")
    side = min(output.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    out = output.detach().double().cpu().numpy()
    ref = reference.detach().double().cpu().numpy()
    scores = [
        structural_similarity(o, r, data_range=data_range, channel_axis=0, win_size=win)
        for o, r in zip(out, ref, strict=True)
    ]
    return float(np.mean(scores))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased) of ``(N, D)`` features, the Gaussian the Fréchet distance compares."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least two (N, D) feature rows, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½)``: the Fréchet distance between two Gaussians."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    with warnings.catch_warnings():  # a singular product (few samples, dead units) is expected; handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # nudge both diagonals, as FID implementations do
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))
