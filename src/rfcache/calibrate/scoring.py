"""Turn the search's schedule parameters into a static mask, cost and score it without a model run, confirm the best.

A :class:`Scorer` holds a recorded trace and (once fitted) an :class:`ErrorModel`. For the
parameters of one search trial it builds the mask of the schedule family
(:func:`schedule_mask`), the pattern the session would really run (the predictor's forced first
full steps added), its analytic FLOP fraction, and the error model's estimate of its final error.
Forecast-error tables and the dynamic-programming masks are memoised, so thousands of trials
cost seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rfcache.calibrate.errormodel import (
    ErrorModel,
    ForecastErrors,
    fit_error_model,
    fit_input_proxy,
    flops_fraction,
    optimal_masks,
    rcs_mask,
)
from rfcache.calibrate.search import Candidate
from rfcache.calibrate.trace import Trace
from rfcache.schedules.masks import interval_mask, warped_mask

__all__ = [
    "Scorer",
    "confirm_candidates",
    "fit_scorer",
    "pattern_text",
    "ratio_choice",
    "run_candidates",
    "run_key",
]

logger = logging.getLogger(__name__)


def pattern_text(pattern: Sequence[bool]) -> str:
    """``C`` for a full step, ``P`` for a predicted one (the summary's and the profile's notation)."""
    return "".join("C" if p else "P" for p in pattern)


def ratio_choice(params: dict[str, Any]) -> str:
    """Which relation ratio a candidate's predictor uses: ``runtime`` (from the last two full steps,
    also for predictors without one), or a calibrated ``constant`` or ``step-linear`` one."""
    if params["predictor"] != "relational" or not params.get("calibrated"):
        return "runtime"
    return str(params.get("ratio_form", "constant"))


class Scorer:
    """Masks, FLOP fractions and error estimates of schedule parameters on one trace.

    ``ratios``: the constant calibrated ratio per unit (per step and unit, shape (steps, units), on a
    two-expert trace: each expert's on its own steps); ``step_ratios``: the step-linear one per step
    and unit, shape (steps, units) (None: candidates cannot choose it).
    """

    def __init__(
        self,
        trace: Trace,
        *,
        ratios: Sequence[float] | np.ndarray | None,
        max_nfc: int,
        max_gap: int = 10,
        step_ratios: np.ndarray | None = None,
    ) -> None:
        self.trace, self.max_nfc, self.max_gap = trace, max_nfc, max_gap
        self.ratios = {"runtime": None, "constant": ratios, "step-linear": step_ratios}
        self.num_steps = trace.num_steps
        self.model: ErrorModel | None = None
        self.fit_patterns: list[tuple[bool, ...]] = []  # the patterns of the real runs the model was fitted on
        self._errors: dict[tuple[str, int, str], ForecastErrors] = {}
        self._optimal: dict[tuple[str, int, str, int, int], dict[int, tuple[bool, ...]]] = {}

    def set_model(self, model: ErrorModel) -> None:
        """Use ``model`` for estimates (the error model's favourite masks are recomputed)."""
        self.model = model
        self._optimal.clear()

    def errors(self, params: dict[str, Any]) -> ForecastErrors:
        """The forecast-error table of the candidate's predictor, order and ratio choice."""
        key = (params["predictor"], int(params["order"]), ratio_choice(params))
        if key not in self._errors:
            ratios = self.ratios[key[2]]
            if key[2] != "runtime" and ratios is None:
                raise ValueError(f"no {key[2]} calibrated ratios were given to the scorer")
            self._errors[key] = ForecastErrors(self.trace, key[0], key[1], ratios)
        return self._errors[key]

    def mask(self, params: dict[str, Any]) -> tuple[bool, ...]:
        """The schedule family's mask for ``params`` (before the predictor's forced full steps)."""
        n, family, warmup = self.num_steps, params["family"], int(params.get("warmup", 0))
        if family == "interval":
            return tuple(interval_mask(n, int(params["interval"]), warmup))
        if family == "warped":
            return warped_mask(n, int(params["nfc"]), warmup, float(params["alpha"]))
        if family == "rcs":
            return rcs_mask(
                self.trace,
                tau=float(params["tau"]),
                order=int(params["order"]),
                warmup=warmup,
                max_cached=int(params["max_cached"]),
                min_full=self.errors(params).min_full,
            )
        if family == "optimal":
            return self.optimal(params)
        raise ValueError(f"unknown schedule family {family!r}")

    def optimal(self, params: dict[str, Any], *, most: int | None = None) -> tuple[bool, ...]:
        """The error model's best mask with ``nfc`` full steps (falls back to the nearest count it reaches);
        ``most``: the largest count searched (default ``max_nfc``; the per-unit family looks beyond it)."""
        if self.model is None:
            raise RuntimeError("the 'optimal' family needs a fitted error model")
        fe = self.errors(params)
        warmup, nfc = int(params.get("warmup", 0)), int(params["nfc"])
        most = self.max_nfc if most is None else most
        key = (fe.predictor, fe.order, ratio_choice(params), warmup, most)
        if key not in self._optimal:
            self._optimal[key] = optimal_masks(fe, self.model, warmup=warmup, max_nfc=most, max_gap=self.max_gap)
        masks = self._optimal[key]
        return masks[min(masks, key=lambda k: abs(k - nfc))]

    def pattern_and_fraction(self, params: dict[str, Any]) -> tuple[tuple[bool, ...], float]:
        """The pattern the session runs and its FLOP fraction (analytic, predictor cost included)."""
        pattern = self.errors(params).pattern(self.mask(params))
        return pattern, flops_fraction(self.trace, pattern, params["predictor"], int(params["order"]))

    def step_errors(self, params: dict[str, Any], pattern: Sequence[bool]) -> np.ndarray:
        return self.errors(params).step_errors(pattern)[0]

    def estimate(self, params: dict[str, Any]) -> tuple[str, float, float]:
        """(pattern, FLOP fraction, estimated final rel-L2): the search's objective."""
        if self.model is None:
            raise RuntimeError("fit the error model before estimating")
        pattern, fraction = self.pattern_and_fraction(params)
        error = self.model.estimate(self.step_errors(params, pattern), pattern)
        return pattern_text(pattern), fraction, error if math.isfinite(error) else float("inf")


def fit_scorer(
    scorer: Scorer, runs: Sequence[dict[str, Any]], real_error: Callable[[dict[str, Any], str], float]
) -> dict[tuple, float]:
    """Fit the scorer's error model on real runs of ``runs`` (``real_error(params, pattern)``).

    Returns the measured errors keyed by :func:`run_key`, so those runs need not be repeated.
    """
    measured: dict[tuple, float] = {}
    errors, patterns = [], []
    for params in runs:
        pattern, _ = scorer.pattern_and_fraction(params)
        measured[run_key(params, pattern_text(pattern))] = real_error(params, pattern_text(pattern))
        errors.append(scorer.step_errors(params, pattern))
        patterns.append(pattern)
    scorer.set_model(fit_error_model(errors, patterns, list(measured.values())))
    scorer.fit_patterns = patterns
    return measured


def run_key(params: dict[str, Any], pattern: str, rows: tuple[str, ...] | None = None) -> tuple:
    """What a real run of a candidate depends on: the pattern (per-unit: the rows) and the predictor's settings."""
    return (pattern, rows, params["predictor"], int(params["order"]), ratio_choice(params))


def confirm_candidates(
    scorer: Scorer,
    candidates: Sequence[Candidate],
    measured: dict[tuple, float],
    real_error: Callable[..., float],
    *,
    count: int,
) -> tuple[list[Candidate], dict[str, float]]:
    """Real runs of the ``count`` best distinct candidates by estimate; returns them best first, and diagnostics.

    Candidates already run (``measured``: the error model's own runs) join the pool at no cost.
    The diagnostics say how well the error model's estimates match the real errors of the confirmed
    candidates it was not fitted on (Spearman, R² of log errors: out of sample), the fit's own
    R² and spread (labelled in-sample), and how well RCS's input-error signal tracks the module
    errors (:func:`fit_input_proxy`).
    """
    confirmed, fresh = run_candidates(candidates, measured, real_error, count=count)
    model = scorer.model
    assert model is not None
    proxy = fit_input_proxy(scorer.trace, scorer.errors({"predictor": "relational", "order": 1}), scorer.fit_patterns)
    diagnostics = {
        # out of sample: the confirmed candidates the error model was not fitted on
        "errmodel_spearman_out_of_sample": _spearman(fresh),
        "errmodel_r2_out_of_sample": _log_r2(fresh),
        "errmodel_out_of_sample_runs": float(len(fresh)),
        # in sample: the fit's own real runs (labelled so; they flatter the model)
        "errmodel_r2_in_sample": model.r2,
        "errmodel_spread_in_sample": model.spread,
        "errmodel_in_sample_runs": float(model.runs),
        **{f"errmodel_sensitivity_{i}": w for i, w in enumerate(model.knots)},
        "input_proxy_r2_median": float(np.median(proxy.unit_r2)),
        "input_proxy_step_r2": proxy.step_r2,
    }
    logger.info(
        "estimate vs real error over %d candidates the error model was not fitted on: Spearman %.2f",
        len(fresh),
        diagnostics["errmodel_spearman_out_of_sample"],
    )
    return confirmed, {k: float(v) for k, v in diagnostics.items() if np.isfinite(v)}  # a profile holds finite numbers


def run_candidates(
    candidates: Sequence[Candidate],
    measured: dict[tuple, float],
    real_error: Callable[..., float],
    *,
    count: int,
) -> tuple[list[Candidate], list[Candidate]]:
    """Real runs of the ``count`` best distinct candidates by estimate not yet in ``measured`` (which
    gains them): all distinct candidates run, best measured first, and those run now. Per-unit
    candidates (``rows``) run their rows, ``real_error(params, pattern, rows=rows)``."""
    confirmed: list[Candidate] = []
    fresh: list[Candidate] = []
    for cand in candidates:  # best estimate first
        key = run_key(cand.params, cand.pattern, cand.rows)
        if any(run_key(c.params, c.pattern, c.rows) == key for c in confirmed):
            continue
        if key not in measured:
            if len(fresh) >= count:
                continue
            rows = {"rows": cand.rows} if cand.rows is not None else {}
            measured[key] = real_error(cand.params, cand.pattern, **rows)
            fresh.append(replace(cand, error=measured[key], estimate=cand.error))
        confirmed.append(replace(cand, error=measured[key], estimate=cand.error))
    confirmed.sort(key=lambda c: c.error)
    return confirmed, fresh


def _log_r2(candidates: Sequence[Candidate]) -> float:
    """R² of the measured log errors explained by the estimates (1 - SS(log real - log est) / SS(log real))."""
    pairs = [(c.estimate, c.error) for c in candidates if c.estimate and c.error and c.estimate > 0 and c.error > 0]
    if len(pairs) < 3:
        return float("nan")
    est, real = np.log(np.array(pairs)).T
    ss_tot = float(((real - real.mean()) ** 2).sum())
    return 1 - float(((real - est) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def _spearman(candidates: Sequence[Candidate]) -> float:
    """Rank correlation of the error model's estimates with the measured errors (nan below 3)."""
    if len(candidates) < 3:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr([c.estimate for c in candidates], [c.error for c in candidates])[0])
