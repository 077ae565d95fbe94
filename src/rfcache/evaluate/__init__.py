"""Evaluation: distances to the full-compute output, and matching methods at equal cost."""

from __future__ import annotations

from rfcache.evaluate.metrics import psnr, relative_l2

__all__ = ["psnr", "relative_l2"]
