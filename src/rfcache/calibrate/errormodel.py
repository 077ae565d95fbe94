"""Error models: score a candidate schedule from the full-compute trace, without running the model.

A candidate is a per-step compute mask, a predictor and its order. Its estimated final error is
built in two stages (docs/method.md, "Calibration", step 3):

1. **Forecast errors** (:class:`ForecastErrors`, exact given the trace, no fit): replaying the
   candidate on the recorded full-compute trajectory, each cached step ``c`` gets the error of
   every unit's prediction (made by the run-time session's rules from the full steps before
   ``c``) against the unit's recorded output. Per step they are summed over units and samples,
   relative to the outputs' size: ``e(c) = sum ||O_pred - O|| / sum ||O||``. They are measured on
   count sketches of the recorded tensors (:mod:`rfcache.calibrate.sketch`), so any schedule can
   be replayed from a few megabytes. "Teacher-forced": the replay feeds each step the true
   inputs, while a real run feeds it the inputs its own earlier predictions produced.

2. **Propagation to the final output** (:class:`ErrorModel`, fitted on a few real runs): the
   error a cached step injects reaches the final output scaled by a sensitivity ``w(c)`` (a
   piecewise-linear curve over the steps, positive, ``knots`` of them). Errors of consecutive
   cached steps point the same way (one forecast drifting away) so they add up; separate runs
   of cached steps are refreshed by a full step in between, so they add like independent errors:

       final rel-L2 ≈ sqrt( Σ_runs ( Σ_{c in run} w(c) e(c) )² )

   ``w`` is fitted by least squares on log errors over the real runs; R² (of log errors) and the
   spread (median |estimate / measured - 1|) are the fit's diagnostics, and a poor fit warns.
   On the embedded model (50 steps, 55 real runs) this form ranked 38 candidate schedules with a
   leave-one-out Spearman correlation of 0.98 and a median deviation of 12 %; a plain weighted
   sum of the errors ranked them at 0.96 but deviated by 60 %.

Because the squared estimate is a sum over runs of cached steps, the schedule it rates best for
``n`` full steps can be found exactly by dynamic programming over the positions of the full
steps (:func:`optimal_masks`): the free-form masks the error model favours.

The same replay gives RCS's decisions (:func:`rcs_mask`, from the first unit's recorded input)
and the analytic FLOP fraction of a mask (:func:`flops_fraction`, the session's own count), so a
candidate is scored and costed without a model run. :func:`fit_input_proxy` measures how well the
first unit's accumulated input forecast error ``Σ e_I`` (what RCS watches) tracks the module
errors: a diagnostic that says whether the dynamic scheduler's signal means anything here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rfcache.calibrate.trace import Trace
from rfcache.errors import RfcacheError
from rfcache.runtime.predictors import estimate_predictor_flops
from rfcache.schedules import masks

__all__ = [
    "ErrorModel",
    "ForecastErrors",
    "InputProxyFit",
    "costs_flops_fraction",
    "fit_error_model",
    "fit_input_proxy",
    "flops_fraction",
    "optimal_masks",
    "per_unit_rows",
    "rcs_mask",
]

logger = logging.getLogger(__name__)
_EPS = 1e-12


class ForecastErrors:
    """Teacher-forced forecast errors of one predictor on a trace's sketches (see the module docstring).

    Args:
        trace: a trace recorded with sketches.
        predictor: ``reuse``, ``taylor`` or ``relational``.
        order: Taylor order m (the relational predictor's direction).
        ratios: calibrated relation ratio for ``relational``: per unit (constant), or per step and
            unit, shape (steps, units) (step-linear); None: the run-time ratio from the last two
            full steps, as the session computes it.
    """

    def __init__(
        self, trace: Trace, predictor: str, order: int, ratios: Sequence[float] | np.ndarray | None = None
    ) -> None:
        if trace.input_sketch is None or trace.output_sketch is None:
            raise RfcacheError("the trace has no sketches (recorded by an older rfcache); record it again")
        self.predictor, self.order = predictor, order
        self.keep = 0 if predictor == "reuse" else order  # differences kept beyond D_0
        self.min_full = 2 if predictor == "relational" else 1
        # a two-expert trace: each expert's session starts with no history at its first step
        self.expert_starts = {int(s) for s in (trace.expert_starts if trace.expert_starts is not None else ())}
        self.inputs = trace.input_sketch.astype(np.float32)  # (S, U, B, W); float32 halves the replay time
        self.outputs = trace.output_sketch.astype(np.float32)  # (S, U, B, W)
        self.num_steps = self.outputs.shape[0]
        self.output_size = np.linalg.norm(self.outputs, axis=-1).sum(axis=(1, 2))  # (S,)
        # the calibrated ratio at every step, (S, U, 1)
        self.ratios = None if ratios is None else _ratio_table(np.asarray(ratios, dtype=np.float64), self.outputs.shape)
        self._memo: dict[tuple[int, ...], np.ndarray] = {}

    def pattern(self, mask: Sequence[bool]) -> tuple[bool, ...]:
        """The steps the session really computes: the mask, plus the predictor's forced first full steps
        (of each expert)."""
        text = masks.effective_pattern("".join("C" if m else "P" for m in mask), self.min_full, self.expert_starts)
        return tuple(letter == "C" for letter in text)

    def unit_errors(self, mask: Sequence[bool]) -> tuple[np.ndarray, tuple[bool, ...]]:
        """Per step and unit ``sum_samples ||O_pred - O||`` (zero at full steps), and the effective pattern."""
        pattern = self.pattern(mask)
        errors = np.zeros(self.outputs.shape[:2])  # (S, U)
        fulls: list[int] = []
        for c, full in enumerate(pattern):
            if c in self.expert_starts:
                fulls = []  # no forecast across an expert switch
            if full:
                fulls.insert(0, c)
                continue
            key = tuple(fulls[: self.keep + 1])
            block = self._memo.get(key)
            if block is None or block.shape[0] < c - key[0]:
                block = self._memo[key] = self._segment(key, max(c - key[0], 8))
            errors[c] = block[c - key[0] - 1]
        return errors, pattern

    def step_errors(self, mask: Sequence[bool]) -> tuple[np.ndarray, tuple[bool, ...]]:
        """Per step ``e(c)``: summed unit errors relative to the summed output norms; and the pattern."""
        errors, pattern = self.unit_errors(mask)
        return errors.sum(axis=1) / np.maximum(self.output_size, _EPS), pattern

    def segment(self, fulls: tuple[int, ...], length: int) -> np.ndarray:
        """``e(a + k)`` for ``k = 1..length`` after full steps ``fulls`` (latest first); shape (length,)."""
        a, block = fulls[0], self.errors_after(fulls, length)
        return block.sum(axis=1) / np.maximum(self.output_size[a + 1 : a + 1 + len(block)], _EPS)

    def errors_after(self, fulls: tuple[int, ...], length: int) -> np.ndarray:
        """Per unit ``||O_pred - O||`` summed over samples at the (at most ``length``) steps after
        ``fulls[0]``, memoised on the full steps the predictor keeps; shape (ks, units)."""
        ks = min(length, self.num_steps - 1 - fulls[0])
        if ks <= 0:
            return np.zeros((0, self.outputs.shape[1]))
        key = fulls[: self.keep + 1]
        block = self._memo.get(key)
        if block is None or block.shape[0] < ks:
            block = self._memo[key] = self._segment(key, ks)
        return block[:ks]

    def unit_segment(self, unit: int) -> masks.Segment:
        """:meth:`segment` of one unit alone: its own ``||O_pred - O||`` over samples, relative to its
        own output norm (teacher-forced: its input is the recorded one, not one built from predictions)."""
        size = np.linalg.norm(self.outputs[:, unit], axis=-1).sum(axis=-1)  # (S,)

        def segment(fulls: tuple[int, ...], length: int) -> np.ndarray:
            a, block = fulls[0], self.errors_after(fulls, length)
            return block[:, unit] / np.maximum(size[a + 1 : a + 1 + len(block)], _EPS)

        return segment

    def _segment(self, fulls: tuple[int, ...], length: int) -> np.ndarray:
        """Unit errors at steps ``a+1 .. a+length`` predicted from ``fulls``: shape (length, U)."""
        a = fulls[0]
        length = max(1, min(length, self.num_steps - 1 - a))
        O, I = self.outputs, self.inputs  # noqa: E741 - docs/method.md's names
        diffs = [O[a]]  # D_0 .. D_m at the last full step, as update_differences builds them
        if len(fulls) >= 2 and self.keep >= 1:
            n = a - fulls[1]
            diffs.append((O[a] - O[fulls[1]]) / n)
            if len(fulls) >= 3 and self.keep >= 2:
                previous = (O[fulls[1]] - O[fulls[2]]) / (fulls[1] - fulls[2])
                diffs.append((diffs[1] - previous) / n)
        ks = np.arange(1, length + 1, dtype=O.dtype)[:, None, None, None]  # (K, 1, 1, 1)
        truth = O[a + 1 : a + 1 + length]  # (K, U, B, W)
        change = sum(d * ks**i / math.factorial(i) for i, d in enumerate(diffs) if i >= 1)
        if self.predictor == "relational" and len(diffs) >= 2:
            if self.ratios is not None:
                ratio = self.ratios[a + 1 : a + 1 + length]  # (K, U, 1): at the predicted steps
            else:
                b = fulls[1]
                ratio = _norm(O[a] - O[b]) / np.maximum(_norm(I[a] - I[b]), _EPS)  # (U, B)
            magnitude = ratio * _norm(I[a + 1 : a + 1 + length] - I[a])  # (K, U, B)
            scale = magnitude / np.maximum(_norm(change), _EPS)
            prediction = diffs[0] + scale[..., None] * change
        elif len(diffs) >= 2:
            prediction = diffs[0] + change
        else:
            prediction = np.broadcast_to(diffs[0], truth.shape)
        return _norm(prediction - truth).sum(axis=-1)  # (K, U)


def _ratio_table(ratios: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-unit or per-step-and-unit ratio as a (steps, units, 1) table; refuses another shape."""
    steps, units = shape[:2]
    if ratios.shape not in ((units,), (steps, units)):
        raise ValueError(f"ratios must have shape ({units},) or ({steps}, {units}), got {ratios.shape}")
    return np.broadcast_to(ratios, (steps, units))[:, :, None]


def _norm(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x, axis=-1)


@dataclass(frozen=True)
class ErrorModel:
    """Sensitivity of the final output to the error injected at each step, fitted on real runs.

    ``knots``: the sensitivity at evenly spaced steps (first to last), linearly interpolated.
    ``r2`` (of log errors), ``spread`` (median |estimate / measured - 1|) and ``runs`` describe the fit.
    """

    knots: tuple[float, ...]
    num_steps: int
    r2: float
    spread: float
    runs: int

    @property
    def sensitivity(self) -> np.ndarray:
        return _basis(self.num_steps, len(self.knots)) @ np.asarray(self.knots)  # (S,)

    def estimate(self, errors: np.ndarray, pattern: Sequence[bool]) -> float:
        """Estimated final relative L2 error of a schedule with per-step errors ``errors``."""
        sums = _run_sums(errors * self.sensitivity, pattern)
        return float(np.sqrt(sums @ sums))

    def poor(self, *, min_r2: float = 0.8, max_spread: float = 0.3) -> bool:
        return self.r2 < min_r2 or self.spread > max_spread


def _basis(num_steps: int, knots: int) -> np.ndarray:
    """Piecewise-linear hat functions over the steps: shape (steps, knots); rows sum to 1."""
    if knots == 1:
        return np.ones((num_steps, 1))
    centres = np.linspace(0, num_steps - 1, knots)
    width = (num_steps - 1) / (knots - 1)
    return np.maximum(0.0, 1 - np.abs(np.arange(num_steps)[:, None] - centres[None]) / width)


def _run_sums(weighted: np.ndarray, pattern: Sequence[bool]) -> np.ndarray:
    """Sums of ``weighted`` over each run of consecutive cached steps."""
    sums, current = [], 0.0
    for value, full in zip(weighted, pattern, strict=True):
        if full:
            if current:
                sums.append(current)
            current = 0.0
        else:
            current += value
    if current:
        sums.append(current)
    return np.asarray(sums, dtype=np.float64)


def fit_error_model(
    errors: Sequence[np.ndarray],
    patterns: Sequence[Sequence[bool]],
    measured: Sequence[float],
    *,
    knots: int = 3,
    smoothness: float = 0.1,
) -> ErrorModel:
    """Fit the sensitivity curve to real runs: per-step errors, patterns and measured final rel-L2.

    Uses at most ``runs - 1`` knots so the fit is never exactly determined, and penalises
    differences between neighbouring log-knots (``smoothness`` per unit of log ratio, against
    residuals of log errors): a few similar runs cannot identify the curve's shape, and an
    unpenalised fit then drives some knot to zero, which the search exploits by leaving that
    part of the trajectory uncomputed. Warns when the fit is poor.
    """
    from scipy.optimize import least_squares

    y = np.asarray(measured, dtype=np.float64)
    usable = [i for i in range(len(y)) if y[i] > 0 and np.any(errors[i] > 0)]
    if not usable:
        raise RfcacheError("the error model needs at least one real run with cached steps")
    num_steps = len(errors[0])
    k = max(1, min(knots, len(usable) - 1))
    phi = _basis(num_steps, k)
    # per run, per run of cached steps: the errors projected on the basis, so the estimate is a quadratic form
    blocks = [_run_blocks(errors[i], patterns[i], phi) for i in usable]
    log_y = np.log(y[usable])

    def estimates(theta: np.ndarray) -> np.ndarray:
        w = np.exp(theta)
        return np.array([np.sqrt(np.sum((b @ w) ** 2)) for b in blocks])

    start = np.full(k, float(np.mean(log_y - np.log([np.sqrt(np.sum(b.sum(1) ** 2)) for b in blocks]))))

    def residuals(t: np.ndarray) -> np.ndarray:
        return np.concatenate([np.log(np.maximum(estimates(t), 1e-300)) - log_y, smoothness * np.diff(t)])

    theta = least_squares(residuals, start).x
    est = estimates(theta)
    ss_tot = float(((log_y - log_y.mean()) ** 2).sum())
    r2 = 1 - float(((np.log(est) - log_y) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0
    spread = float(np.median(np.abs(est / y[usable] - 1)))
    model = ErrorModel(tuple(float(v) for v in np.exp(theta)), num_steps, r2, spread, len(usable))
    if model.poor():
        logger.warning(
            "the error model fits the real runs poorly (R² %.2f of log errors, median deviation %.0f%% over %d runs): "
            "the search's estimates are rough, the real confirmation runs decide",
            r2,
            100 * spread,
            len(usable),
        )
    return model


def _run_blocks(errors: np.ndarray, pattern: Sequence[bool], phi: np.ndarray) -> np.ndarray:
    """Rows: runs of cached steps; columns: the run's errors summed against each basis function."""
    rows, current = [], None
    for c, full in enumerate(pattern):
        if full:
            if current is not None:
                rows.append(current)
            current = None
        else:
            current = (current if current is not None else 0) + errors[c] * phi[c]
    if current is not None:
        rows.append(current)
    return np.array(rows) if rows else np.zeros((0, phi.shape[1]))


def optimal_masks(
    errors: ForecastErrors,
    model: ErrorModel,
    *,
    warmup: int,
    max_nfc: int,
    max_gap: int = 10,
) -> dict[int, tuple[bool, ...]]:
    """The mask the error model rates best for each number of full steps ``warmup+1 .. max_nfc``.

    :func:`rfcache.schedules.masks.optimal_masks` on this predictor's replayed forecast errors
    and the model's sensitivity curve (the first ``warmup`` steps, at least the predictor's own
    forced full steps, are fixed).
    """
    warmup = min(max(warmup, errors.min_full, 1), errors.num_steps)
    return masks.optimal_masks(
        errors.num_steps,
        errors.segment,
        model.sensitivity,
        keep=errors.keep,
        warmup=warmup,
        max_nfc=max(max_nfc, warmup),  # a budget below the forced full steps still gets their mask (over budget)
        max_gap=max_gap,
    )


def rcs_mask(
    trace: Trace, *, tau: float, order: int, warmup: int, max_cached: int | None, min_full: int
) -> tuple[bool, ...]:
    """The pattern RCS (runtime ``DynamicPolicy``, batch decision on the largest per-sample error) gives on the trace.

    Replayed on the recorded first-unit inputs of the full-compute run
    (:func:`rfcache.schedules.masks.rcs_mask`), so a real run, whose inputs carry its own
    prediction errors, can decide a step or two differently.
    """
    if trace.first_input is None:
        raise RfcacheError("the trace has no first-unit inputs (recorded by an older rfcache); record it again")
    return masks.rcs_mask(
        trace.first_input, tau=tau, order=order, warmup=warmup, max_cached=max_cached, min_full=min_full
    )


def flops_fraction(trace: Trace, pattern: Sequence[bool], predictor: str, order: int) -> float:
    """The session's FLOP fraction of a static ``pattern``: computed module FLOPs plus predictor cost.

    Counted analytically from the trace's per-unit costs exactly as ``CacheSession`` counts them.
    """
    if trace.unit_costs is None:
        raise RfcacheError("the trace has no unit costs (recorded by an older rfcache); record it again")
    return costs_flops_fraction(trace.unit_costs, pattern, predictor, order)


def costs_flops_fraction(unit_costs: np.ndarray, pattern: Sequence[bool], predictor: str, order: int) -> float:
    """:func:`flops_fraction` from per-unit costs, shape (units, 3): per sample the unit's analytic
    FLOPs, input and output element counts (:func:`rfcache.calibrate.trace.unit_cost`)."""
    flops, numel_in, numel_out = (np.asarray(unit_costs)[:, i] for i in range(3))
    module = float(flops.sum())
    units = list(zip(numel_in.astype(int), numel_out.astype(int), strict=True))
    full_cost = module + sum(estimate_predictor_flops(predictor, order, o, i, full=True) for i, o in units)
    cached_cost = sum(estimate_predictor_flops(predictor, order, o, i, full=False) for i, o in units)
    n_full = sum(bool(p) for p in pattern)
    return (n_full * full_cost + (len(pattern) - n_full) * cached_cost) / (len(pattern) * module)


@dataclass(frozen=True)
class InputProxyFit:
    """How well RCS's signal, the accumulated first-unit input error ``Σ e_I``, tracks module errors.

    Per unit: R² of ``unit output error ≈ γ Σ e_I`` (least squares through the origin) over the
    cached steps of the schedules given; ``final_r2``: the same for the per-step error ``e(c)``.
    """

    unit_r2: tuple[float, ...]
    step_r2: float


def fit_input_proxy(trace: Trace, errors: ForecastErrors, masks: Sequence[Sequence[bool]]) -> InputProxyFit:
    """Fit the map from RCS's accumulated input error to each unit's (and the step's) forecast error."""
    if trace.first_input is None:
        raise RfcacheError("the trace has no first-unit inputs (recorded by an older rfcache); record it again")
    x = trace.first_input.astype(np.float64)  # (S, B', D)
    proxies, unit_rows, step_rows = [], [], []
    for mask in masks:
        unit_err, pattern = errors.unit_errors(mask)
        step_err = unit_err.sum(1) / np.maximum(errors.output_size, _EPS)
        diffs: list[np.ndarray] = []
        last, accumulated = -1, 0.0
        for c, full in enumerate(pattern):
            if full:
                distance = c - last if diffs else 1
                new = [x[c]]
                for i in range(min(errors.order, len(diffs))):
                    new.append((new[i] - diffs[i]) / distance)
                diffs, last, accumulated = new, c, 0.0
                continue
            forecast = sum(d * ((c - last) ** i / math.factorial(i)) for i, d in enumerate(diffs))
            accumulated += float(np.max(np.abs(x[c] - forecast).sum(-1) / np.maximum(np.abs(x[c]).sum(-1), _EPS)))
            proxies.append(accumulated)
            unit_rows.append(unit_err[c])
            step_rows.append(step_err[c])
    if not proxies:
        return InputProxyFit(tuple(0.0 for _ in errors.outputs[0]), 0.0)
    p = np.asarray(proxies)
    units = np.asarray(unit_rows)  # (n, U)
    return InputProxyFit(
        tuple(_r2_origin(p, units[:, u]) for u in range(units.shape[1])), _r2_origin(p, np.asarray(step_rows))
    )


def _r2_origin(x: np.ndarray, y: np.ndarray) -> float:
    slope = float((x * y).sum() / max(float((x * x).sum()), _EPS))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1 - float(((y - slope * x) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0


def per_unit_rows(
    errors: ForecastErrors, costs: Sequence[float], budget: float, *, max_gap: int = 10
) -> tuple[str, ...]:
    """A per-unit schedule under ``budget`` (computed fraction of the units' FLOPs, ``costs`` per unit):
    each unit's best masks by dynamic programming on its own teacher-forced forecast error
    (:meth:`ForecastErrors.unit_segment`, :func:`~rfcache.schedules.masks.optimal_masks`), their
    estimated errors as a table per number of full steps, and the Lagrangian split of the budget
    over the units (:func:`~rfcache.schedules.masks.split_budget`). One ``C``/``P`` row per unit, each
    keeping the predictor's warm-up. Interactions (a unit's input built from earlier predictions)
    are not modelled: the search's confirmation runs measure them.
    """
    if errors.expert_starts - {0}:
        raise RfcacheError("per-unit rows are not searched on two-expert traces yet")
    steps, units = errors.num_steps, errors.outputs.shape[1]
    if len(costs) != units:
        raise RfcacheError(f"per_unit_rows needs one cost per unit ({units}), got {len(costs)}")
    weights = np.ones(steps)
    best, tables = [], []
    for u in range(units):
        segment = errors.unit_segment(u)
        options = masks.optimal_masks(
            steps, segment, weights, keep=errors.keep, warmup=errors.min_full, max_nfc=steps, max_gap=max_gap
        )
        best.append(options)
        tables.append({n: masks.mask_error(m, segment, weights, keep=errors.keep) for n, m in options.items()})
    choice = masks.split_budget(tables, costs, budget, steps)
    return tuple("".join("C" if f else "P" for f in best[u][n]) for u, n in enumerate(choice))
