"""Recording full-compute trajectories and fitting per-unit relation coefficients.

For every unit, step and lag ``N`` (1..``max_lag``) the recorder keeps, per sample, the pair
``(||I(t) - I(t-N)||, ||O(t) - O(t-N)||)``: how far the unit's input moved and how far its output
moved. That is all RFE's ratio needs: ``s = ||ΔO|| / ||ΔI||`` (docs/method.md). The fit regresses
``||ΔO||`` on ``||ΔI||`` through the origin per unit and reports R² and the ratio's spread.

For the error model (:mod:`rfcache.calibrate.errormodel`) it also keeps a count sketch of every
unit's input and output per step and sample (:mod:`rfcache.calibrate.sketch`: enough to measure
any predictor's forecast error for any schedule), and the first unit's input tensor itself, which
RCS's relative-L1 decision needs, for as many samples as ``first_input_bytes`` allows.

Steps are denoising steps: a pipeline that calls the transformer once per CFG branch (the same
timestep twice) has its calls of one step stacked along the sample axis.

A two-expert pipeline (Wan 2.2) is recorded in one trace over the whole trajectory, each step from
the expert that ran it: the experts share a config (so units and costs), no change is measured
across the switch (the second expert's first steps have no history, as at step 0), and
``expert_starts`` holds the step where the second expert starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfcache.calibrate.sketch import count_sketch
from rfcache.errors import RfcacheError
from rfcache.models import BlockAdapter, get_adapter
from rfcache.models.hooks import attach_unit_hooks, detach_unit_hooks
from rfcache.outputs import write_file
from rfcache.runtime.experts import expert_models
from rfcache.runtime.identity import config_hash
from rfcache.runtime.parallel import refuse_context_parallel
from rfcache.runtime.predictors import per_sample_norm
from rfcache.schedules import ratio_position

__all__ = [
    "RatioFit",
    "RatioStepFit",
    "Trace",
    "fit_ratio_steps",
    "fit_ratios",
    "record_trace",
    "step_unit_costs",
    "unit_cost",
]

logger = logging.getLogger(__name__)


_OPTIONAL = ("input_sketch", "output_sketch", "first_input", "unit_costs", "expert_starts")


# Traces are recorded on one device: under context parallelism each unit sees a shard, and the
# sketches and the first unit's inputs the trace keeps would have to be gathered every step. The
# profile a one-device calibration gives runs split unchanged (the runtime reduces what it needs).
_RECORD_ON_ONE_DEVICE = "record on one device (the profile it gives runs under context parallelism unchanged)"


@dataclass
class Trace:
    """What full-compute runs showed, per step, unit and sample.

    ``input_delta``/``output_delta``: change norms, shape (steps, units, lags, samples).
    ``input_sketch``/``output_sketch``: count sketches, shape (steps, units, samples, width).
    ``first_input``: the first unit's input, shape (steps, kept samples, numel); the kept samples
    are the first ones of the sample axis. ``unit_costs``: per unit and sample, the analytic FLOPs
    of one call and the element counts of its input and output, shape (units, 3). The last four
    are None in traces recorded without them. ``expert_starts``: the steps where another expert
    takes over (two-expert pipelines; None or empty for one transformer).
    """

    units: list[str]
    input_delta: np.ndarray
    output_delta: np.ndarray
    input_sketch: np.ndarray | None = None
    output_sketch: np.ndarray | None = None
    first_input: np.ndarray | None = None
    unit_costs: np.ndarray | None = None
    expert_starts: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        return self.input_delta.shape[0]

    def expert_spans(self) -> list[tuple[int, int]]:
        """``[first, stop)`` of the steps each expert ran: one span for one transformer."""
        bounds = [0, *(int(s) for s in (self.expert_starts if self.expert_starts is not None else ())), self.num_steps]
        return list(itertools.pairwise(bounds))

    def only_steps(self, first: int, stop: int) -> Trace:
        """This trace with the changes of other steps blanked (NaN): fits see one expert's steps,
        at their positions on the whole trajectory."""
        keep = np.zeros(self.num_steps, dtype=bool)
        keep[first:stop] = True
        blank = np.where(keep[:, None, None, None], 1.0, np.nan)
        return dataclasses.replace(self, input_delta=self.input_delta * blank, output_delta=self.output_delta * blank)

    def save(self, path: str | Path) -> None:
        """Write as ``.npz`` (numbers only, no pickled objects); atomically."""
        extra = {k: getattr(self, k) for k in _OPTIONAL if getattr(self, k) is not None}
        arrays = {"units": np.array(self.units), "input_delta": self.input_delta, "output_delta": self.output_delta}
        write_file(path, lambda tmp: np.savez(tmp, **arrays, **extra), suffix=".npz")

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        with np.load(path, allow_pickle=False) as data:
            extra = {k: data[k] for k in _OPTIONAL if k in data.files}
            return cls(list(map(str, data["units"])), data["input_delta"], data["output_delta"], **extra)

    @classmethod
    def merge(cls, traces: list[Trace]) -> Trace:
        """Concatenate shards along the sample axis (same model, steps and lags required)."""
        first = traces[0]
        for t in traces[1:]:
            if t.units != first.units or t.input_delta.shape[:3] != first.input_delta.shape[:3]:
                raise ValueError("trace shards come from different models, step counts or lags")
        extra: dict[str, np.ndarray] = {}
        for name, axis in (("input_sketch", 2), ("output_sketch", 2), ("first_input", 1)):
            parts = [getattr(t, name) for t in traces]
            if all(p is not None for p in parts):
                extra[name] = np.concatenate(parts, axis=axis)
        # the first-unit inputs of later shards follow those of the first shard only if it kept all of its samples
        if "first_input" in extra and first.first_input.shape[1] < first.input_delta.shape[-1]:  # type: ignore[union-attr]
            extra["first_input"] = first.first_input  # type: ignore[assignment]
        for name in ("unit_costs", "expert_starts"):  # per sample or per trajectory: the same in every shard
            if getattr(first, name) is not None:
                extra[name] = getattr(first, name)
        return cls(
            first.units,
            np.concatenate([t.input_delta for t in traces], axis=-1),
            np.concatenate([t.output_delta for t in traces], axis=-1),
            **extra,
        )


def record_trace(
    pipe: Any,
    call_kwargs: dict[str, Any],
    *,
    max_lag: int = 8,
    sketch_width: int = 128,
    first_input_bytes: int = 256 * 2**20,
) -> tuple[Trace, Any]:
    """Run ``pipe(**call_kwargs)`` at full compute, recording unit I/O changes; returns (trace, output).

    ``sketch_width`` is the count-sketch length per unit and sample (0 records none);
    ``first_input_bytes`` caps the memory kept for the first unit's input tensors.
    """
    models = [m for _, m in expert_models(pipe)]
    refuse_context_parallel(models[0], "recording a calibration trace", _RECORD_ON_ONE_DEVICE)
    if len({config_hash(m.config) for m in models}) > 1:
        raise RfcacheError(f"{type(pipe).__name__}: its two experts have different configs; rfcache needs them alike")
    steps_hint = int(call_kwargs.get("num_inference_steps", 50))
    recorder = _Recorder(models, max_lag, sketch_width, first_input_bytes, steps_hint)
    adapter = recorder.adapter
    units = attach_unit_hooks(models[0], adapter, recorder.call, name="rfcache-trace")
    for other in models[1:]:
        attach_unit_hooks(other, adapter, recorder.call, name="rfcache-trace")
    handles = [m.register_forward_pre_hook(recorder.on_forward, with_kwargs=True) for m in models]
    try:
        output = pipe(**call_kwargs)
    finally:
        for m, handle in zip(models, handles, strict=True):
            handle.remove()
            detach_unit_hooks(m, name="rfcache-trace")
    trace = recorder.trace([u.path for u in units])
    logger.info("recorded %d steps (%d transformer calls) x %d units", trace.num_steps, len(recorder.rows), len(units))
    return trace, output


def unit_cost(
    adapter: BlockAdapter, model: torch.nn.Module, unit: Any, shape: Any, x: torch.Tensor, outs: list[torch.Tensor]
) -> tuple[float, float, float]:
    """One unit's cost per sample, as a trace's ``unit_costs`` holds it: its analytic FLOPs in a call of
    ``shape`` (:meth:`~rfcache.models.BlockAdapter.step_shape`), its input's and outputs' element counts."""
    b = x.shape[0]
    return adapter.unit_flops(model, unit, shape) / b, x.numel() / b, sum(o.numel() for o in outs) / b


def step_unit_costs(pipe: Any, run: Callable[[], Any]) -> np.ndarray:
    """The per-unit costs (shape (units, 3), as :func:`unit_cost`) of the transformer calls made while ``run()``
    runs ``pipe``, from each unit's first call: what a recording's ``unit_costs`` will hold."""
    model = expert_models(pipe)[0][1]
    adapter = get_adapter(model)
    shapes: list[Any] = []
    costs: dict[int, tuple[float, float, float]] = {}

    def on_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = dict(kwargs)
        if args:
            inputs.setdefault("hidden_states", args[0])
        shapes.append(adapter.step_shape(model, inputs))

    def call(unit: Any, original: Any, args: tuple, kwargs: dict) -> Any:
        out = original(*args, **kwargs)
        if unit.index not in costs:
            x = adapter.unit_input(model, unit, args, kwargs)
            outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
            costs[unit.index] = unit_cost(adapter, model, unit, shapes[0], x, outs)
        return out

    units = attach_unit_hooks(model, adapter, call, name="rfcache-costs")
    handle = model.register_forward_pre_hook(on_forward, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
        detach_unit_hooks(model, name="rfcache-costs")
    if len(costs) != len(units):
        raise RfcacheError(f"{type(model).__name__}: {len(units) - len(costs)} of its units did not run in one step")
    return np.array([costs[u] for u in range(len(units))], dtype=np.float64)


class _Recorder:
    """The hooks of one recording: per transformer call and unit, the input and output changes against
    the same unit's earlier calls (of the same CFG branch), sketches, costs and the first unit's input."""

    def __init__(
        self, models: list[torch.nn.Module], max_lag: int, sketch_width: int, first_input_bytes: int, steps_hint: int
    ) -> None:
        self.models, self.model = models, models[0]
        self.adapter: BlockAdapter = get_adapter(self.model)
        self.max_lag, self.sketch_width = max_lag, sketch_width
        self.first_input_bytes, self.steps_hint = first_input_bytes, steps_hint
        self.history: dict[tuple[int, int, int], list[tuple[torch.Tensor, list[torch.Tensor]]]] = {}
        self.rows: list[dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]] = []  # per call, unit
        self.firsts: list[tuple[int, np.ndarray]] = []  # per call: batch size, the kept samples' first-unit input
        self.timesteps: list[float] = []
        self.shapes: list[Any] = []
        self.costs: dict[int, tuple[float, float, float]] = {}  # unit -> per sample (flops, input, output numel)
        self.callers: list[int] = []  # per call: which expert ran it

    def on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.callers.append(next(i for i, m in enumerate(self.models) if m is module))
        inputs = dict(kwargs)
        if args:
            inputs.setdefault("hidden_states", args[0])
        t = inputs.get(self.adapter.timestep_arg)
        self.timesteps.append(float(torch.as_tensor(t).flatten()[0]) if t is not None else float("nan"))
        self.shapes.append(self.adapter.step_shape(self.model, inputs) if not self.shapes else self.shapes[0])
        self.rows.append({})

    def call(self, unit: Any, original: Any, args: tuple, kwargs: dict) -> Any:
        out = original(*args, **kwargs)
        x = self.adapter.unit_input(self.model, unit, args, kwargs).detach()  # (B, ...)
        outs = [o.detach() for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
        branch = _branch_index(self.timesteps)
        past = self.history.setdefault((self.callers[-1], unit.index, branch), [])  # no change across experts
        stats = np.full((self.max_lag, 2, x.shape[0]), np.nan, dtype=np.float64)
        for lag in range(1, min(self.max_lag, len(past)) + 1):
            px, pouts = past[-lag]
            stats[lag - 1, 0] = per_sample_norm(x - px).cpu().numpy()
            delta = sum(per_sample_norm(o - p) ** 2 for o, p in zip(outs, pouts, strict=True)) ** 0.5
            stats[lag - 1, 1] = delta.cpu().numpy()
        past.append((x, outs))
        del past[: -self.max_lag]
        sketches: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        if self.sketch_width:
            flat_out = torch.cat([o.flatten(1) for o in outs], dim=1)  # (B, sum of numels)
            width = self.sketch_width
            sketches = (count_sketch(x, width).cpu().numpy(), count_sketch(flat_out, width).cpu().numpy())
        self.rows[-1][unit.index] = (stats, *sketches)
        if unit.index not in self.costs:
            self.costs[unit.index] = unit_cost(self.adapter, self.model, unit, self.shapes[0], x, outs)
        if unit.index == 0:
            per_sample = x[0].numel() * 4 * self.steps_hint
            keep = min(x.shape[0], self.first_input_bytes // max(per_sample, 1))
            self.firsts.append((x.shape[0], x[:keep].flatten(1).float().cpu().numpy()))
        return out

    def trace(self, paths: list[str]) -> Trace:
        """The recorded calls as a :class:`Trace`: per denoising step (its CFG branches' calls joined)."""
        rows, firsts, callers = self.rows, self.firsts, self.callers
        groups = _step_groups(self.timesteps)  # calls of one denoising step (one per CFG branch, or one)
        starts = [s for s in range(1, len(groups)) if callers[groups[s][0]] != callers[groups[s - 1][0]]]
        samples = sum(next(iter(rows[g].values()))[0].shape[-1] for g in groups[0])
        data = np.full((len(groups), len(paths), self.max_lag, 2, samples), np.nan)
        width = self.sketch_width or 1
        in_sk = np.zeros((len(groups), len(paths), samples, width), dtype=np.float32)
        out_sk = np.zeros_like(in_sk)
        for s, group in enumerate(groups):
            for u in range(len(paths)):
                parts = [rows[c][u] for c in group]
                data[s, u] = np.concatenate([p[0] for p in parts], axis=-1)
                if self.sketch_width:
                    in_sk[s, u] = np.concatenate([p[1] for p in parts], axis=0)
                    out_sk[s, u] = np.concatenate([p[2] for p in parts], axis=0)
        first = None
        if all(kept.shape[0] for _, kept in firsts):
            if all(kept.shape[0] == batch for batch, kept in firsts):  # every sample kept
                first = np.stack([np.concatenate([firsts[c][1] for c in group]) for group in groups])
            else:  # a prefix of the sample axis: the first branch's kept samples
                n = min(kept.shape[0] for _, kept in firsts)
                first = np.stack([firsts[group[0]][1][:n] for group in groups])
        return Trace(
            paths,
            data[:, :, :, 0],
            data[:, :, :, 1],
            in_sk if self.sketch_width else None,
            out_sk if self.sketch_width else None,
            first,
            np.array([self.costs[u] for u in range(len(paths))], dtype=np.float64),
            np.array(starts, dtype=np.int64) if len(self.models) > 1 else None,
        )


def _branch_index(timesteps: list[float]) -> int:
    """How many calls before the current one had the same timestep (the CFG branch of the call)."""
    i = len(timesteps) - 1
    while i > 0 and timesteps[i - 1] == timesteps[-1]:
        i -= 1
    return len(timesteps) - 1 - i


def _step_groups(timesteps: list[float]) -> list[list[int]]:
    groups: list[list[int]] = []
    for i, t in enumerate(timesteps):
        if groups and timesteps[groups[-1][0]] == t:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


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


@dataclass(frozen=True)
class RatioStepFit:
    """Does the ratio ``s`` vary with the step? Per unit, ``||ΔO|| ≈ s(t) ||ΔI||`` with ``s`` constant
    and with ``s(t) = a + b (t / (S - 1) - 1/2)`` (linear in the step): the R² of each, and the
    relative change of the linear ``s`` over the trajectory, ``b / a``. ``intercepts`` (``a``, the
    ratio at mid-trajectory) and ``slopes`` (``b``, clipped to ``|b| <= 2a`` so ``s`` stays >= 0 at
    every step) are a profile's ``ratios``/``ratio_slopes`` in its ``step-linear`` form
    (:func:`rfcache.schedules.ratio_position` gives the step's position)."""

    r2_constant: tuple[float, ...]
    r2_linear: tuple[float, ...]
    relative_change: tuple[float, ...]
    intercepts: tuple[float, ...] = ()
    slopes: tuple[float, ...] = ()

    def table(self, num_steps: int) -> np.ndarray:
        """The step-linear ratio per step and unit, shape (steps, units)."""
        position = np.array([ratio_position(step, num_steps) for step in range(num_steps)])
        return np.asarray(self.intercepts)[None, :] + np.asarray(self.slopes)[None, :] * position[:, None]


def fit_ratio_steps(trace: Trace, *, min_lag: int = 2) -> RatioStepFit:
    """Least squares of the constant and the step-linear ratio per unit (docs/method.md: does ``s`` vary?)."""
    steps = trace.input_delta.shape[0]
    tau = np.array([ratio_position(step, steps) for step in range(steps)])
    r2c, r2l, change, intercepts, slopes = [], [], [], [], []
    for u in range(len(trace.units)):
        x = trace.input_delta[:, u, min_lag - 1 :]  # (S, L, B)
        y = trace.output_delta[:, u, min_lag - 1 :]
        t = np.broadcast_to(tau[:, None, None], x.shape)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
        x, y, t = x[ok], y[ok], t[ok]
        ss_tot = float(((y - y.mean()) ** 2).sum()) if y.size else 0.0
        fits = []
        for design in (x[:, None], np.stack([x, x * t], axis=1)):
            coef = np.linalg.lstsq(design, y, rcond=None)[0] if y.size else np.zeros(design.shape[1])
            residual = float(((y - design @ coef) ** 2).sum())
            fits.append((1 - residual / ss_tot if ss_tot > 0 else 0.0, coef))
        r2c.append(fits[0][0])
        r2l.append(fits[1][0])
        a, b = (float(v) for v in fits[1][1])
        change.append(b / a if a else 0.0)
        a = max(a, 0.0)
        intercepts.append(a)
        slopes.append(min(max(b, -2 * a), 2 * a))
    return RatioStepFit(tuple(r2c), tuple(r2l), tuple(change), tuple(intercepts), tuple(slopes))
