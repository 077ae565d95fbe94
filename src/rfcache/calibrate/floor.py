"""The smallest feasible budget: the FLOP fraction of the cheapest schedule the search always reaches.

A budget is feasible when the search (:mod:`rfcache.calibrate.search`) can produce a schedule whose
FLOP fraction (:func:`rfcache.calibrate.errormodel.flops_fraction`, the session's own count: the
computed module FLOPs plus the predictor's cost at every step) is within it. Whatever the data, the
search space holds these cheapest schedules, both with TaylorSeer of order 1 (the cheapest
predictor, and it needs one full step before it predicts where RFE needs two):

- ``warped`` with one warm-up step and two full steps: steps 0 and 1 full;
- at most ``_OPTIMAL_MAX_GAP + 1`` steps, ``optimal`` with one full step (step 0): the error
  model's masks cache at most ``_OPTIMAL_MAX_GAP - 1`` steps in a row, and the one-step mask is
  chosen only while the budget allows fewer than two full steps.

A two-expert pipeline's second expert starts with no history, so its first step (RFE: two) is
computed too. ``rcs`` can be cheaper on a trajectory whose inputs barely change, but how cheap
depends on the recording; the floor counts only what every recording reaches.

:func:`check_budget_floor` refuses a budget below the floor in one line naming it, from unit costs
measured on one transformer step (:func:`rfcache.calibrate.trace.step_unit_costs`), before any
recording; :func:`floor_seeds` are the schedules the study is seeded with where no uniform
schedule fits the budget, so a budget at the floor finds its schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rfcache.calibrate.errormodel import costs_flops_fraction
from rfcache.errors import RfcacheError
from rfcache.schedules.masks import effective_pattern, min_full_steps, warped_mask

__all__ = ["check_budget_floor", "floor_seeds", "smallest_budget"]

# the error model's masks (Scorer's max_gap): at most this many steps from one full step to the next
_OPTIMAL_MAX_GAP = 10


def floor_seeds(num_steps: int) -> list[dict[str, Any]]:
    """The search parameters of the cheapest schedules the search reaches at ``num_steps`` steps."""
    seeds: list[dict[str, Any]] = [
        {
            "family": "warped",
            "predictor": "taylor",
            "order": 1,
            "calibrated": False,
            "warmup": 1,
            "nfc": 2,
            "alpha": 0.0,
        }
    ]
    if num_steps - 1 <= _OPTIMAL_MAX_GAP:  # one full step, then every step cached
        seeds.append({"family": "optimal", "predictor": "taylor", "order": 1, "calibrated": False, "nfc": 2})
    return seeds


def _floor_mask(params: dict[str, Any], num_steps: int) -> tuple[bool, ...]:
    """The mask a floor seed gives (data-independent: the only mask of its family with that few full steps)."""
    if params["family"] == "warped":
        return warped_mask(num_steps, int(params["nfc"]), int(params["warmup"]), float(params["alpha"]))
    return tuple(step == 0 for step in range(num_steps))


def smallest_budget(unit_costs: np.ndarray, num_steps: int, *, expert_starts: Sequence[int] = ()) -> tuple[float, str]:
    """The smallest feasible budget at ``num_steps`` steps and the pattern of the schedule that costs it.

    ``unit_costs``: per unit and sample the analytic FLOPs, input and output element counts
    (a trace's ``unit_costs``); ``expert_starts``: where each later expert of a two-expert pipeline
    starts.
    """
    best: tuple[float, str] | None = None
    for params in floor_seeds(num_steps):
        text = "".join("C" if m else "P" for m in _floor_mask(params, num_steps))
        pattern = effective_pattern(text, min_full_steps(params["predictor"]), set(expert_starts))
        full = tuple(letter == "C" for letter in pattern)
        fraction = costs_flops_fraction(unit_costs, full, params["predictor"], int(params["order"]))
        if params["family"] == "optimal" and math.floor(fraction * num_steps) >= 2:
            continue  # a budget that allows two full steps gets the two-step mask, not this one
        if best is None or fraction < best[0]:
            best = (float(fraction), pattern)
    assert best is not None
    return best


def check_budget_floor(
    budget: float,
    unit_costs: np.ndarray,
    num_steps: int,
    *,
    expert_starts: Sequence[int] = (),
    name: str = "budget",
) -> None:
    """Refuse, in one line naming the smallest feasible budget, a budget no schedule of the search fits."""
    floor, pattern = smallest_budget(unit_costs, num_steps, expert_starts=expert_starts)
    if budget < floor:
        shown = math.ceil(floor * 1e4) / 1e4  # rounded up: the value shown is feasible itself
        full = ", ".join(str(step) for step, letter in enumerate(pattern) if letter == "C")
        raise RfcacheError(
            f"{name} {budget:g} is below the smallest feasible budget {shown:.4f} at {num_steps} steps (the "
            f"cheapest schedule computes steps {full} only and predicts the rest with TaylorSeer order 1: "
            f"{floor:.6f} of the module FLOPs); give {name} {shown:.4f} or more"
        )
