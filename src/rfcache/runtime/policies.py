"""Policies: when a step is computed in full. The decision is per step, taken before any unit runs.

- ``interval``: full for the first ``warmup`` steps, then whenever ``interval`` steps have passed
  since the last full one (TaylorSeer's placement, :func:`rfcache.schedules.masks.interval_mask`).
- ``dynamic`` (RCS): full when the accumulated relative-L1 error of the Taylor forecast of the
  first unit's input since the last full step exceeds ``tau``; after ``warmup`` full steps, and at
  most ``max_cached`` cached steps in a row. In a batched call the decision covers the whole
  batch and uses the largest per-sample error, so no sample's error runs past ``tau``.
- ``static``: a fixed per-step mask (from a profile), and optionally one mask per unit: the step's
  decision is then "every unit computed" and :meth:`Policy.unit_plan` says which units compute.

Under context parallelism (parallel.py) ``decide`` gets ``reduce``: the first unit's input is a
shard of the sequence, and RCS's L1 sums are taken over the whole group, so every rank computes
one device's error (the session then makes every rank take one decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rfcache.errors import RfcacheError
from rfcache.runtime.parallel import Reduce
from rfcache.runtime.predictors import per_sample_norms, taylor_forecast, update_differences
from rfcache.schedules.masks import interval_for_nfc, interval_mask, is_interval_full

__all__ = ["DynamicPolicy", "IntervalPolicy", "Policy", "StaticPolicy", "interval_for_nfc", "interval_mask"]


class Policy:
    """Decides, per step, whether every unit is computed (True) or predicted (False)."""

    needs_first_input: bool = False

    def decide(
        self, step: int, steps_since_full: int, first_input: torch.Tensor | None, *, reduce: Reduce | None = None
    ) -> bool:
        raise NotImplementedError

    def unit_plan(self, step: int) -> tuple[bool, ...] | None:
        """Per unit index, whether it is planned computed at ``step``; None: every unit follows :meth:`decide`."""
        return None

    def observe_full(self, step: int, first_input: torch.Tensor | None) -> None:
        """Called after a full step (any reason) so stateful policies refresh their reference."""

    def new_state(self) -> Policy:
        """A fresh copy for a new generation or CFG branch."""
        return self


@dataclass
class IntervalPolicy(Policy):
    interval: int
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.interval < 1 or self.warmup < 0:
            raise ValueError(f"interval must be >= 1 and warmup >= 0, got {self.interval}, {self.warmup}")

    def decide(
        self, step: int, steps_since_full: int, first_input: torch.Tensor | None, *, reduce: Reduce | None = None
    ) -> bool:
        return is_interval_full(step, self.interval, self.warmup)


@dataclass
class StaticPolicy(Policy):
    """A profile's mask; with ``unit_masks`` (one row per unit) ``mask`` is the steps every unit computes."""

    mask: tuple[bool, ...]
    unit_masks: tuple[tuple[bool, ...], ...] | None = None

    def unit_plan(self, step: int) -> tuple[bool, ...] | None:
        if self.unit_masks is None:
            return None
        return tuple(row[step] for row in self.unit_masks)

    def decide(
        self, step: int, steps_since_full: int, first_input: torch.Tensor | None, *, reduce: Reduce | None = None
    ) -> bool:
        if step >= len(self.mask):
            raise RfcacheError(f"the static schedule has {len(self.mask)} steps; the sampler asked for step {step + 1}")
        return self.mask[step]


@dataclass
class DynamicPolicy(Policy):
    """RCS with its accumulator; one instance per generation and branch (see :meth:`new_state`)."""

    tau: float
    order: int = 1
    warmup: int = 2
    max_cached: int | None = None
    needs_first_input: bool = True
    _differences: list[torch.Tensor] = field(default_factory=list, repr=False)
    _last_full: int = -1
    _accumulated: float = 0.0

    def __post_init__(self) -> None:
        if self.tau < 0 or self.warmup < 0 or (self.max_cached is not None and self.max_cached < 0):
            raise ValueError("tau, warmup and max_cached must be non-negative")

    def new_state(self) -> DynamicPolicy:
        return DynamicPolicy(self.tau, self.order, self.warmup, self.max_cached)

    def decide(
        self, step: int, steps_since_full: int, first_input: torch.Tensor | None, *, reduce: Reduce | None = None
    ) -> bool:
        if step < self.warmup or not self._differences or first_input is None:
            return True
        if self.max_cached is not None and steps_since_full > self.max_cached:
            return True
        forecast = taylor_forecast(self._differences, step - self._last_full)
        miss, size = per_sample_norms([first_input - forecast, first_input], p=1, reduce=reduce)  # (B,) each
        error = miss / size.clamp_min(1e-12)
        self._accumulated += float(error.max())
        return self._accumulated > self.tau

    def observe_full(self, step: int, first_input: torch.Tensor | None) -> None:
        if first_input is None:
            return
        distance = step - self._last_full if self._differences else 1
        self._differences = update_differences(self._differences, first_input, distance, self.order)
        self._last_full = step
        self._accumulated = 0.0
