"""Distances of a cached output to the full-compute output of the same seed and input."""

from __future__ import annotations

import math

import torch

__all__ = ["psnr", "relative_l2"]


def relative_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    """``||output - reference|| / ||reference||`` over the whole batch."""
    ref = reference.double()
    return float((output.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def psnr(output: torch.Tensor, reference: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical inputs); images in ``[0, data_range]``."""
    mse = float(((output.double() - reference.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)
