"""Optuna search over schedule families for the lowest error to full compute within a FLOP budget.

Each trial picks a schedule family and its parameters; ``evaluate`` turns them into a static
pattern, its FLOP fraction and its error to full compute on the calibration inputs (in
:func:`rfcache.calibrate.calibrate` the error model's estimate, so a trial costs milliseconds, not
a model run). The error is the objective and ``flops_fraction - budget`` the constraint
(``trial.set_constraint``, feasible when <= 0). Families:

- ``interval``: full step every ``interval`` steps after ``warmup`` full steps (uniform);
- ``rcs``: the pattern that RCS with ``tau``, ``warmup`` and ``max_cached`` produces on the
  calibration inputs (all in one batch, so it is one pattern: the static mask it freezes into);
- ``warped``: ``nfc`` full steps after the warm-up placed by a spacing that blends uniform
  (``alpha = 0``) with cosine spacing (``alpha = 1``: denser at both ends, where trajectories
  bend most), see :func:`rfcache.schedules.masks.warped_mask`;
- ``optimal``: the free-form mask with ``nfc`` full steps that the error model rates best
  (dynamic programming, :func:`rfcache.schedules.masks.optimal_masks`).

Predictors searched: ``relational`` (RFE, run-time or calibrated ratio) and ``taylor``. The study
is seeded with the uniform schedules that fit the budget and the error model's favourite mask
(``enqueue_trial``).

Several workers may share one study (storage.py): each stops when the study as a whole has
``trials`` complete trials, records its ``host:pid`` on the trials it runs, and samples with its
own seed (the worker that created the study uses ``seed`` itself, so a single worker is
reproducible).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from rfcache.calibrate.floor import floor_seeds
from rfcache.calibrate.storage import open_storage, worker_name
from rfcache.errors import RfcacheError
from rfcache.schedules import RATIO_FORMS
from rfcache.schedules.masks import interval_mask

__all__ = [
    "FAMILIES",
    "Candidate",
    "StudyMismatchError",
    "check_budget",
    "completed_trials",
    "error_model_runs",
    "full_steps_within",
    "max_nfc",
    "search_schedules",
    "uniform_seeds",
]

FAMILIES = ("interval", "rcs", "warped", "optimal")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A schedule the search evaluated: its parameters, frozen pattern, cost and error.

    ``error`` is the search's objective (the error model's estimate) until a real run confirms
    the candidate; then it is the measured error and ``estimate`` keeps the objective.

    ``rows`` (the per-unit family, :mod:`rfcache.calibrate.perunit`): one ``C``/``P`` row per unit in
    the adapter's order, ``pattern`` then their intersection; None for a step mask (every unit
    follows ``pattern``). ``trial`` is -1 for candidates made outside the Optuna study.
    """

    params: dict[str, Any]
    pattern: str
    flops_fraction: float
    error: float
    trial: int
    estimate: float | None = None
    rows: tuple[str, ...] | None = None


# (params) -> (pattern, flops_fraction, error) on the calibration inputs
Evaluate = Callable[[dict[str, Any]], tuple[str, float, float]]


def uniform_seeds(
    num_steps: int, budget: float, *, warmups: tuple[int, ...] = (1, 2, 3), expert_starts: tuple[int, ...] = ()
) -> list[dict[str, Any]]:
    """The densest uniform schedules whose share of full steps fits the budget, one per warm-up.

    ``expert_starts``: where a two-expert pipeline's second expert starts; its first two steps are
    full (the relational seeds' history starts again there), which the seeds leave room for."""
    # a budget with room for fewer than three full steps: the cheapest schedules the search reaches first
    seeds = floor_seeds(num_steps) if full_steps_within(budget, num_steps) < 3 else []
    forced = {s + i for s in expert_starts for i in (0, 1) if s + i < num_steps}
    for warmup in warmups:
        for interval in range(1, 25):
            mask = interval_mask(num_steps, interval, warmup)
            nfc = sum(bool(m) or c in forced for c, m in enumerate(mask))
            if nfc <= full_steps_within(budget, num_steps, margin=_SEED_MARGIN):
                seeds.append(
                    {
                        "family": "interval",
                        "predictor": "relational",
                        "order": 1,
                        "calibrated": False,
                        "interval": interval,
                        "warmup": warmup,
                    }
                )
                break
    nfc = max(3, full_steps_within(budget, num_steps, margin=_MASK_MARGIN) - len(forced))
    for predictor, order in (("relational", 1), ("relational", 2), ("taylor", 2)):
        seeds.append({"family": "optimal", "predictor": predictor, "order": order, "calibrated": False, "nfc": nfc})
    for form in RATIO_FORMS:  # the calibrated ratio in each form, scored from the start
        calibrated = {"calibrated": True, "ratio_form": form}
        seeds.append({"family": "optimal", "predictor": "relational", "order": 2, **calibrated, "nfc": nfc})
    for alpha in (0.5, 1.0):
        seeds.append(
            {
                "family": "warped",
                "predictor": "relational",
                "order": 1,
                "calibrated": False,
                "warmup": 2,
                "nfc": nfc,
                "alpha": alpha,
            }
        )
    return seeds


def error_model_runs(num_steps: int, budget: float, *, expert_starts: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """The schedules run for real to fit the error model: the seeds, and a sparser uniform one for range."""
    seeds = [
        s for s in uniform_seeds(num_steps, budget, expert_starts=expert_starts) if s["family"] != "optimal"
    ]  # optimal needs the model
    intervals = [s for s in seeds if s["family"] == "interval"]
    if intervals:
        densest = min(intervals, key=lambda s: s["interval"])
        seeds.append({**densest, "interval": 2 * densest["interval"], "predictor": "taylor", "order": 2})
    return seeds


def check_budget(budget: float, *, name: str = "budget") -> None:
    """Refuse a budget outside (0, 1]: the fraction of the full-compute module FLOPs a schedule may spend."""
    if not 0 < budget <= 1:
        raise RfcacheError(f"{name} must be in (0, 1], got {budget}")


# how much of the budget the seed schedules' full steps may take: the rest is left for the
# predictor's own cost (open choice: a uniform seed at 0.97, the error model's masks at 0.95, the
# search's own trials at the whole budget, the FLOP constraint deciding)
_SEED_MARGIN = 0.97
_MASK_MARGIN = 0.95


def full_steps_within(budget: float, num_steps: int, *, margin: float = 1.0) -> int:
    """The budget rule: the most full steps out of ``num_steps`` whose share fits ``margin * budget``
    (a step's full compute costs ``1 / num_steps`` of the generation's module FLOPs)."""
    return math.floor(budget * num_steps * margin)


def max_nfc(budget: float, num_steps: int) -> int:
    """The most full steps a candidate can have within ``budget`` (predictions cost something too)."""
    return max(1, full_steps_within(budget, num_steps))


def search_schedules(
    evaluate: Evaluate,
    *,
    budget: float,
    num_steps: int,
    trials: int,
    storage: str | optuna.storages.BaseStorage | None,
    study_name: str,
    seed: int = 0,
    identity: dict[str, str] | None = None,
    progress: bool = True,
    sampler: optuna.samplers.BaseSampler | None = None,
    expert_starts: tuple[int, ...] = (),
) -> tuple[optuna.Study, list[Candidate]]:
    """Run (or resume, or join) the study; returns it and the feasible candidates, best first.

    ``expert_starts`` (two-expert pipelines): where the second expert starts, for the seeds.

    ``sampler`` defaults to TPE seeded per worker (:func:`_worker_seed`); a random sampler gives an
    unbiased sample of the search space, as the calibration benchmark uses to measure the error
    model's ranking.
    """
    worker = worker_name()
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage) if isinstance(storage, str) else storage,
        direction="minimize",
        load_if_exists=True,
    )
    _check_identity(study, identity or {})
    if not study.trials:
        for params in uniform_seeds(num_steps, budget, expert_starts=expert_starts):
            if "nfc" in params:  # within the range _suggest draws it from (Optuna warns otherwise)
                least, most = _nfc_range(params, budget, num_steps)
                params = {**params, "nfc": min(max(params["nfc"], least), most)}
            study.enqueue_trial(params, user_attrs={"enqueued_by": worker}, skip_if_exists=True)
    study.sampler = sampler or optuna.samplers.TPESampler(seed=_worker_seed(study, seed, worker))
    remaining = max(0, trials - completed_trials(study))

    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial, budget, num_steps)
        trial.set_user_attr("worker", worker)
        pattern, fraction, error = evaluate(params)
        trial.set_user_attr("pattern", pattern)
        trial.set_user_attr("flops_fraction", fraction)
        trial.set_constraint("flops_over_budget", fraction - budget)
        return error if math.isfinite(error) else 1e9

    if remaining:
        stop = optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(
            objective, n_trials=remaining, callbacks=[stop], show_progress_bar=progress, gc_after_trial=False
        )
    candidates = [
        Candidate(
            params=dict(t.params),
            pattern=t.user_attrs["pattern"],
            flops_fraction=t.user_attrs["flops_fraction"],
            error=float(t.value),
            trial=t.number,
        )
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("flops_fraction", 2.0) <= budget
    ]
    candidates.sort(key=lambda c: c.error)
    return study, candidates


def _suggest(trial: optuna.Trial, budget: float, num_steps: int) -> dict[str, Any]:
    """One trial's schedule: its family, predictor and the family's own parameters."""
    family = trial.suggest_categorical("family", list(FAMILIES))
    predictor = trial.suggest_categorical("predictor", ["relational", "taylor"])
    params: dict[str, Any] = {
        "family": family,
        "predictor": predictor,
        "order": trial.suggest_int("order", 1, 2),
        "calibrated": trial.suggest_categorical("calibrated", [False, True]),
    }
    if predictor == "relational" and params["calibrated"]:  # the calibrated ratio's form
        params["ratio_form"] = trial.suggest_categorical("ratio_form", list(RATIO_FORMS))
    if family != "optimal":  # the error model's mask places its early full steps itself
        params["warmup"] = trial.suggest_int("warmup", 1, 6)
    if family == "interval":
        params["interval"] = trial.suggest_int("interval", 2, 12)
    elif family in ("warped", "optimal"):
        params["nfc"] = trial.suggest_int("nfc", *_nfc_range(params, budget, num_steps))
        if family == "warped":
            params["alpha"] = trial.suggest_float("alpha", 0.0, 1.0)
    else:
        params["tau"] = trial.suggest_float("tau", 1e-3, 4.0, log=True)
        params["max_cached"] = trial.suggest_int("max_cached", 1, 12)
    return params


def _nfc_range(params: dict[str, Any], budget: float, num_steps: int) -> tuple[int, int]:
    """The range ``nfc`` is drawn from: past the warm-up, up to the most full steps the budget allows."""
    least = int(params.get("warmup", 1)) + 1
    return least, max(least, max_nfc(budget, num_steps))


def completed_trials(study: optuna.Study) -> int:
    """Finished trials (enqueued seeds not run yet do not count)."""
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def _worker_seed(study: optuna.Study, seed: int, worker: str) -> int:
    """``seed`` for the worker that seeded the study; a distinct one for every other worker.

    Workers sharing a seed would draw the same random start-up trials and duplicate each other.
    """
    first = min(study.trials, key=lambda t: t.number, default=None)
    if first is not None and first.user_attrs.get("enqueued_by") == worker:
        return seed
    return (seed + zlib.crc32(f"{worker}:{len(study.trials)}".encode())) % 2**32


def _check_identity(study: optuna.Study, identity: dict[str, str]) -> None:
    stored = study.user_attrs.get("rfcache_identity")
    if stored is None:
        study.set_user_attr("rfcache_identity", identity)
    elif stored != identity:
        diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        raise StudyMismatchError(
            f"study {study.study_name!r} was created for another calibration setup ({', '.join(diff)} differ); "
            "use another --study name"
        )


class StudyMismatchError(RfcacheError, ValueError):
    """The Optuna study named was created for another model, budget or sampling setup."""
