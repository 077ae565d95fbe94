"""``enable(per_unit_profile, compile=True)``: a per-unit schedule with many step kinds, compiled regionally.

A per-unit schedule decides each unit's compute or predict choice per step, so a whole-forward graph
specialised on the choices needs one variant per step kind (compile.py does that up to dynamo's
recompile limit, :func:`~rfcache.runtime.compile.max_step_kinds`). Beyond it the choice stays where the
eager session makes it (its unit wrapper, with each unit's own history, counts and non-finite
guard), and what runs after it is compiled once and reused by every block (regional compilation,
as diffusers' ``compile_repeated_blocks``):

- each unit's own forward (the attention, the feed-forward, or a whole block): one
  ``torch.compile`` of its class's ``forward`` with the module as an argument, so the blocks of a
  transformer share the compiled code (their parameters are graph inputs);
- the predictor's arithmetic at a cached step (TaylorSeer's weighted sum, RFE's forecast): one
  compiled function, its step-dependent weights device tensors (the session's), so only the number
  of differences a unit holds (bounded by the order) gives another variant.

The number of graphs is then bounded by the unit classes and the predictor's orders, not by steps
or step kinds, and a second generation compiles nothing. The skeleton (embeddings, norms,
modulation, residual adds) and the refresh at a computed step run eagerly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.models import CacheUnit
from rfcache.models.hooks import attach_module_hooks, attach_unit_hooks, detach_unit_hooks
from rfcache.runtime.predictors import stacked_relational_forecast, weighted_sum
from rfcache.runtime.session import HOOK_NAME, CacheSession

__all__ = ["RegionalSchedule"]

logger = logging.getLogger(__name__)


class RegionalSchedule:
    """Runs a session's per-unit schedule with each unit and the predictor compiled; see the module docstring."""

    def __init__(self, session: CacheSession, *, cuda_graphs: bool = False) -> None:
        if cuda_graphs:
            raise RfcacheError("cuda_graphs=True is not supported with per-unit profiles (their compile is regional)")
        self.session, self.model, self.adapter = session, session.model, session.adapter
        self._forwards: dict[Any, Callable[..., Any]] = {}  # a unit class's forward -> compiled
        self._bound: dict[int, Callable[..., Any]] = {}  # unit index -> its compiled forward, bound
        self._kernels = (
            torch.compile(weighted_sum, dynamic=False),
            torch.compile(stacked_relational_forecast, dynamic=False),
        )

    def attach(self) -> None:
        """Route the session's unit calls through the compiled units and its forecasts through the kernels."""
        s = self.session
        detach_unit_hooks(self.model, name=HOOK_NAME)  # the session's unit and conditioning wrappers
        attach_unit_hooks(self.model, self.adapter, self._call_unit, name=HOOK_NAME, granularity=s.config.granularity)
        if s.config.shares_conditioning:
            paths = self.adapter.conditioning_paths(self.model)
            attach_module_hooks(self.model, paths, s._call_conditioning, name=HOOK_NAME)
        s.weighted_sum, s.relational_forecast = self._kernels

    def detach(self) -> None:
        """Give the session back its eager forecasts (its hooks are removed by the session)."""
        self.session.weighted_sum, self.session.relational_forecast = weighted_sum, stacked_relational_forecast

    def _call_unit(self, unit: CacheUnit, original: Any, args: tuple, kwargs: dict) -> Any:
        compiled = self._bound.get(unit.index)
        if compiled is None:
            compiled = self._bound[unit.index] = self._compile(original)
        live = self.session._probe is None and self.session._step >= 0  # eager for a shape probe or a stray call
        return self.session._call_unit(unit, compiled if live else original, args, kwargs)

    def _compile(self, original: Any) -> Callable[..., Any]:
        """``original`` (a unit's bound forward) compiled once per class: the module is an argument."""
        func, owner = getattr(original, "__func__", None), getattr(original, "__self__", None)
        if func is None or not isinstance(owner, torch.nn.Module):  # another library's wrapper: on its own
            return torch.compile(original, dynamic=False)
        if func not in self._forwards:
            self._forwards[func] = torch.compile(func, dynamic=False)
        return functools.partial(self._forwards[func], owner)
