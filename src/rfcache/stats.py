"""Intervals on quality figures: a 95 % bootstrap interval on a mean, and paired ratios between methods.

Quality is measured per sample. A figure is the mean over samples with its bootstrap interval
(``scipy.stats.bootstrap``, BCa, percentile where BCa is undefined); a comparison of method A with
method B on the same samples is *paired*: the geometric mean of the per-sample ratios ``a_i / b_i``
with the interval of that geometric mean. "A beats B" only when the whole interval is below 1.
A shared leaf module (numpy and scipy only), used by calibration and the benchmarks alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "mean_interval", "paired_ratio"]

CONFIDENCE = 0.95
_RESAMPLES = 4999


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % bootstrap interval (``nan`` bounds below two samples)."""

    value: float
    low: float
    high: float

    @property
    def ci95(self) -> list[float | None]:
        """``[low, high]`` for JSON (``None`` where undefined)."""
        return [None if not math.isfinite(v) else v for v in (self.low, self.high)]

    def verdict(self) -> str:
        """For a ratio: ``"lower"`` if the interval lies below 1, ``"higher"`` above, else ``"tie"``."""
        if self.high < 1:
            return "lower"
        if self.low > 1:
            return "higher"
        return "tie"

    def format(self, spec: str = ".4g") -> str:
        """``value [low, high]``."""
        if not math.isfinite(self.low):
            return format(self.value, spec)
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _bootstrap(values: np.ndarray, statistic: str, seed: int) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if len(values) < 2 or np.ptp(values) == 0:  # no spread to resample
        return (math.nan, math.nan) if len(values) < 2 else (float(values[0]), float(values[0]))
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap(
                (values,),
                getattr(np, statistic),
                confidence_level=CONFIDENCE,
                n_resamples=_RESAMPLES,
                method=method,
                random_state=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return math.nan, math.nan


def mean_interval(values: Sequence[float], *, seed: int = 0) -> Interval:
    """The mean of per-sample ``values`` with its 95 % bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values")
    return Interval(float(x.mean()), *_bootstrap(x, "mean", seed))


def paired_ratio(values: Sequence[float], reference: Sequence[float], *, seed: int = 0) -> Interval:
    """Geometric mean of the per-sample ratios ``values[i] / reference[i]`` with its 95 % interval."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values need one shape, got {a.shape} and {b.shape}")
    logs = np.log(np.maximum(a, 1e-300)) - np.log(np.maximum(b, 1e-300))
    low, high = _bootstrap(logs, "mean", seed)
    return Interval(float(np.exp(logs.mean())), math.exp(low), math.exp(high))
