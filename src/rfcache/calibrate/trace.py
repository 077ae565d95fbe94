"""Recording full-compute trajectories and fitting per-unit relation coefficients.

For every unit, step and lag ``N`` (1..``max_lag``) the recorder keeps, per sample, the pair
``(||I(t) - I(t-N)||, ||O(t) - O(t-N)||)``: how far the unit's input moved and how far its output
moved. That is all RFE's ratio needs: ``s = ||ΔO|| / ||ΔI||`` (method.md). The fit regresses
``||ΔO||`` on ``||ΔI||`` through the origin per unit and reports R² and the ratio's spread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfcache.models import BlockAdapter, get_adapter, get_transformer
from rfcache.models.hooks import attach_unit_hooks, detach_unit_hooks
from rfcache.runtime.predictors import per_sample_norm

__all__ = ["RatioFit", "Trace", "fit_ratios", "record_trace"]

logger = logging.getLogger(__name__)


@dataclass
class Trace:
    """Input/output change norms of full-compute runs: arrays of shape (steps, units, lags, samples)."""

    units: list[str]
    input_delta: np.ndarray
    output_delta: np.ndarray

    @property
    def num_steps(self) -> int:
        return self.input_delta.shape[0]

    def save(self, path: str | Path) -> None:
        """Write as ``.npz`` (numbers only, no pickled objects); atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, units=np.array(self.units), input_delta=self.input_delta, output_delta=self.output_delta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        with np.load(path, allow_pickle=False) as data:
            return cls(list(map(str, data["units"])), data["input_delta"], data["output_delta"])

    @classmethod
    def merge(cls, traces: list[Trace]) -> Trace:
        """Concatenate shards along the sample axis (same model, steps and lags required)."""
        first = traces[0]
        for t in traces[1:]:
            if t.units != first.units or t.input_delta.shape[:3] != first.input_delta.shape[:3]:
                raise ValueError("trace shards come from different models, step counts or lags")
        return cls(
            first.units,
            np.concatenate([t.input_delta for t in traces], axis=-1),
            np.concatenate([t.output_delta for t in traces], axis=-1),
        )


def record_trace(pipe: Any, call_kwargs: dict[str, Any], *, max_lag: int = 8) -> tuple[Trace, Any]:
    """Run ``pipe(**call_kwargs)`` at full compute, recording unit I/O changes; returns (trace, output)."""
    model = get_transformer(pipe)
    adapter: BlockAdapter = get_adapter(model)
    history: dict[int, list[tuple[torch.Tensor, list[torch.Tensor]]]] = {}
    rows: list[dict[int, np.ndarray]] = []  # per call: unit -> (lags, 2, samples)
    calls = {"n": 0}

    def on_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls["n"] += 1
        rows.append({})

    def call(unit, original, args, kwargs):
        out = original(*args, **kwargs)
        x = adapter.unit_input(model, unit, args, kwargs).detach()
        outs = [o.detach() for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
        past = history.setdefault(unit.index, [])
        stats = np.full((max_lag, 2, x.shape[0]), np.nan, dtype=np.float64)
        for lag in range(1, min(max_lag, len(past)) + 1):
            px, pouts = past[-lag]
            stats[lag - 1, 0] = per_sample_norm(x - px).cpu().numpy()
            delta = sum(per_sample_norm(o - p) ** 2 for o, p in zip(outs, pouts, strict=True)) ** 0.5
            stats[lag - 1, 1] = delta.cpu().numpy()
        past.append((x, outs))
        del past[:-max_lag]
        rows[-1][unit.index] = stats
        return out

    units = attach_unit_hooks(model, adapter, call, name="rfcache-trace")
    handle = model.register_forward_pre_hook(on_forward, with_kwargs=True)
    try:
        output = pipe(**call_kwargs)
    finally:
        handle.remove()
        detach_unit_hooks(model, name="rfcache-trace")
    steps = len(rows)
    samples = next(iter(rows[0].values())).shape[-1]
    data = np.full((steps, len(units), max_lag, 2, samples), np.nan)
    for s, row in enumerate(rows):
        for u, stats in row.items():
            data[s, u] = stats
    trace = Trace([u.path for u in units], data[:, :, :, 0], data[:, :, :, 1])
    logger.info("recorded %d transformer calls x %d units", steps, len(units))
    return trace, output


@dataclass(frozen=True)
class RatioFit:
    """Per unit: the fitted ratio ``s``, R² of ``||ΔO|| ≈ s ||ΔI||``, and the ratio's relative spread."""

    ratios: tuple[float, ...]
    r2: tuple[float, ...]
    spread: tuple[float, ...]

    def poor(self, threshold: float = 0.5) -> list[int]:
        return [i for i, r in enumerate(self.r2) if r < threshold]


def fit_ratios(trace: Trace, *, min_lag: int = 2) -> RatioFit:
    """Least squares through the origin, per unit, over steps, lags >= ``min_lag`` and samples."""
    ratios, r2s, spreads = [], [], []
    for u in range(len(trace.units)):
        x = trace.input_delta[:, u, min_lag - 1 :].ravel()
        y = trace.output_delta[:, u, min_lag - 1 :].ravel()
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
        x, y = x[ok], y[ok]
        s = float((x * y).sum() / (x * x).sum()) if x.size else 0.0
        ss_tot = float(((y - y.mean()) ** 2).sum()) if y.size else 0.0
        r2 = 1 - float(((y - s * x) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0
        per_point = y / x
        spreads.append(float(per_point.std() / per_point.mean()) if per_point.size and per_point.mean() > 0 else 0.0)
        ratios.append(s)
        r2s.append(r2)
    return RatioFit(tuple(ratios), tuple(r2s), tuple(spreads))
