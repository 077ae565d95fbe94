"""Evaluation: distances to the full-compute output, and the method comparison at equal cost (``rfc-bench``)."""

from __future__ import annotations

from rfcache.evaluate.bench import BenchConfig, BenchRecord, BenchResult, run_bench
from rfcache.evaluate.metrics import frechet_distance, psnr, relative_l2, ssim

__all__ = ["BenchConfig", "BenchRecord", "BenchResult", "frechet_distance", "psnr", "relative_l2", "run_bench", "ssim"]
