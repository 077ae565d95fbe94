"""A per-unit profile at (near) the FLOPs of a step-mask one, for the speed benchmarks.

Not calibrated: speed depends on the pattern only. Each block keeps the step mask's interval and
warm-up with its full steps shifted by the block's index modulo the interval (and the last steps
made full where the shift lost one), so every unit computes exactly as often as under the step
mask (equal FLOPs) while almost every step is a different mix of computed and predicted units: the
hardest case for a per-unit runtime, and a handful of step kinds for a bundle.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rfcache.models import get_adapter, get_transformer
from rfcache.schedules import Profile
from rfcache.schedules.masks import interval_mask, rows_intersection, step_kinds


def staggered_row(steps: int, interval: int, warmup: int, phase: int) -> str:
    """The interval schedule (TaylorSeer's placement) with its full steps after the warm-up ``phase`` steps later."""
    base = interval_mask(steps, interval, warmup)
    row = ["C" if step < warmup or (step - phase >= warmup and base[step - phase]) else "P" for step in range(steps)]
    last = steps - 1
    while row.count("C") < sum(base):  # as many full steps as the step mask: the latest predicted ones
        while row[last] == "C":
            last -= 1
        row[last] = "C"
    return "".join(row)


def staggered_profile(pipe: Any, profile: Profile, *, interval: int, warmup: int) -> Profile:
    """``profile`` with one row per unit: its block's staggered interval row."""
    model = get_transformer(pipe)
    units = get_adapter(model).units(model, profile.model.granularity)
    steps = len(profile.schedule)
    rows = {u.path: staggered_row(steps, interval, warmup, u.block_index % interval) for u in units}
    return dataclasses.replace(
        profile,
        name=f"{profile.name}-per-unit",
        schedule=rows_intersection(list(rows.values())),
        unit_schedules=rows,
    )


def kinds_of(profile: Profile) -> int:
    """How many step kinds (graphs of its bundle) a per-unit profile has."""
    return len(step_kinds(list(profile.unit_rows().values())))
