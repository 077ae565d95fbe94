"""``enable(..., compile=True)``: a fixed schedule under ``torch.compile``, one variant per step kind.

A fixed schedule (a profile's mask or per-unit rows, or an interval) decides every step before the
transformer runs, so the decision stays in eager Python (the session's forward pre-hook, step
bookkeeping and FLOP counts included) and the transformer's forward is compiled with
``fullgraph=True`` (no graph break anywhere, blocks included). Inside it the unit wrappers read one
Python tuple, ``plan`` (per unit: computed at this step), on which dynamo guards: one variant per
step kind, so exactly two for a one-mask schedule (the full step and the cached step) and the
number of distinct columns for a per-unit one (what ``--max-step-kinds`` bounds). A per-unit
schedule with more kinds than dynamo keeps variants (:func:`max_step_kinds`) is compiled
regionally instead (regional.py): fewer graphs, more eager work per step.

What would specialise per step is kept out of the graph as tensors:

- the Taylor weights ``k^i / i!`` of a cached step (0 above the order the full steps so far
  allow, as the bundle runner does) and the distance ``N`` of a full step are 0-d/1-d device
  tensors per unit (each unit counts its own steps since it was computed), prepared once per
  (unit, k, order) and reused;
- the cache state has a fixed layout from the first step on: ``D_0..D_m`` per unit output (orders
  not yet available hold finite values whose weight is 0), the input at the last full step, the
  run-time ratio ``s`` and, for RFE, the Gram entries ``<D_i, D_j>`` from which a cached step
  takes ``||d(k)||`` (as the eager session does; one pass over the differences, not two). Its
  first step per batch size runs eagerly to allocate it; every later step, and every later
  generation of the same shape, replays the compiled variants.

Shared conditioning is served the same way: the pre-hook picks the step's precomputed outputs
(conditioning.py), the graphs read them as tensors. The session's once-per-step non-finite guard
(its forward hook, outside the graph) re-runs a cached step in full through the full variant.
With ``cuda_graphs=True`` (CUDA only) the variants are compiled with ``mode="reduce-overhead"``,
whose CUDA-graph trees capture each variant once per batch size and replay it; not verified on
the development machines (no GPU there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.models import CacheUnit
from rfcache.models.hooks import attach_module_hooks, attach_unit_hooks, detach_unit_hooks
from rfcache.runtime.config import CacheConfig
from rfcache.runtime.outputs import flatten_output, unflatten_output
from rfcache.runtime.predictors import (
    difference_gram,
    estimate_predictor_flops,
    gram_pair_weights,
    kept_differences,
    padded_taylor_coefficients,
    relation_ratio,
    stack_gram,
    stacked_relational_forecast,
    weighted_sum,
)
from rfcache.runtime.session import HOOK_NAME, CacheSession
from rfcache.schedules import ratio_position
from rfcache.schedules.masks import runs_full

__all__ = ["CompiledSchedule", "compiled_step_kinds", "max_step_kinds"]

logger = logging.getLogger(__name__)


def _held_input(slot: _Slot, refreshed: bool) -> torch.Tensor | None:
    """A slot's input at its last full step, copied where this step's refresh overwrites it in place."""
    x = slot.input_at_full
    return x.clone() if refreshed and x is not None else x


def max_step_kinds() -> int:
    """The most step kinds compiled as whole-forward variants: dynamo's recompile limit (8 by default),
    one variant per kind and batch size; a per-unit schedule with more is compiled regionally."""
    return int(torch._dynamo.config.recompile_limit)


def compiled_step_kinds(config: CacheConfig) -> int:
    """The distinct step kinds (the set of units computed) the schedule runs, the predictor's warm-up
    included: 2 for a one-mask schedule (full, cached), the distinct columns for a per-unit one."""
    if config.unit_masks is None:
        return 2
    minimum, branch_full = config.min_full_steps, 0
    done = [0] * len(config.unit_masks)
    kinds = set()
    for step, planned in enumerate(config.mask or ()):
        full = runs_full(planned, branch_full, minimum)
        branch_full += full
        kind = tuple(full or runs_full(row[step], n, minimum) for row, n in zip(config.unit_masks, done, strict=True))
        done = [n + c for n, c in zip(done, kind, strict=True)]
        kinds.add(kind)
    return len(kinds)


@dataclass
class _Slot:
    """One unit's cache state in one CFG branch; fixed shapes, so the graphs never see it change."""

    differences: list[list[torch.Tensor]]  # per output tensor: D_0..D_keep
    ratios: list[torch.Tensor]  # per output tensor: s, (B,) (or a 0-d calibrated ratio)
    grams: list[torch.Tensor]  # per output tensor (relational): <D_i, D_j> for 1 <= i <= j, (B, P)
    input_at_full: torch.Tensor | None
    layout: tuple[bool, ...]
    single: bool
    numel_out: int
    numel_in: int


@dataclass
class _BranchSlots:
    shape_key: tuple
    slots: dict[int, _Slot] = field(default_factory=dict)
    last_full: list[int] = field(default_factory=list)  # per unit index: its latest computed step (-1: none)
    num_full: list[int] = field(default_factory=list)  # per unit index: its computed steps this generation
    before: tuple | None = None  # this step's bookkeeping before it ran (a step re-run in full restores it)


class CompiledSchedule:
    """Runs a session's fixed schedule through ``torch.compile``; see the module docstring."""

    def __init__(self, session: CacheSession, *, cuda_graphs: bool = False) -> None:
        config = session.config
        if config.policy == "dynamic":
            raise RfcacheError(
                f"compile=True needs a fixed schedule (a profile or an interval method); {config.method!r} decides "
                "at run time from the first unit's input"
            )
        kinds = compiled_step_kinds(config)
        if kinds > max_step_kinds():  # more variants than dynamo keeps: regional.py compiles such schedules
            raise RfcacheError(
                f"this schedule has {kinds} step kinds; CompiledSchedule compiles at most {max_step_kinds()} "
                "(a per-unit one with more runs as a RegionalSchedule)"
            )
        param = next(session.model.parameters())
        if cuda_graphs and param.device.type != "cuda":
            raise RfcacheError("cuda_graphs=True needs the model on a CUDA device")
        self.session, self.model, self.adapter = session, session.model, session.adapter
        self.keep = kept_differences(config.predictor, config.order)
        self.cuda_graphs = cuda_graphs
        self.device = param.device
        self._tensors: dict[tuple, torch.Tensor] = {}  # this step's forecast tensors, made once per value
        count = len(session.adapter.units(session.model, config.granularity))  # (attached after this)
        self.plan: tuple[bool, ...] = (True,) * count  # the Python values the graphs are specialised on
        # per unit index, this step's forecast tensors: each unit has its own (its own distances under a
        # per-unit schedule; never one tensor shared by two units, which dynamo would guard as aliased)
        self.distances = [self._tensor(("distance", u, 1), lambda: 1.0) for u in range(count)]
        self.coeffs = [self._tensor(("coeffs", u, 0, 0), lambda: [1.0] * (self.keep + 1)) for u in range(count)]
        self.pair_weights = [gram_pair_weights(c) for c in self.coeffs]  # ||d(k)||^2 = grams @ pair_weights (RFE)
        # a step-linear calibrated ratio: s = ratios[u] + slopes[u] * position, position a per-step tensor
        slopes = config.ratio_slopes
        self.slopes = None if slopes is None else torch.tensor(slopes, dtype=torch.float32, device=param.device)
        self.position = torch.zeros((), dtype=torch.float32, device=param.device)
        self._pair_cache: dict[tuple, torch.Tensor] = {}
        self._branches: list[_BranchSlots] = []
        self._active: dict[int, _Slot] = {}
        self._slots = _BranchSlots(shape_key=())
        self._eager = True
        self._conditioning: dict[str, Any] = {}  # this step's shared conditioning outputs, by module path
        self._live = False  # inside this wrapper's transformer call (a constant to the graphs)
        self._original_forward = self.model.forward
        self._compiled = torch.compile(
            self._original_forward, fullgraph=True, dynamic=False, mode="reduce-overhead" if cuda_graphs else None
        )
        self._pre_hook: Any = None
        self._instance_forward: Any = None
        self._detached = False

    # -- lifecycle ------------------------------------------------------------------------------

    def attach(self) -> None:
        """Swap the session's unit wrappers for the graph-friendly ones and wrap the forward."""
        s = self.session
        detach_unit_hooks(self.model, name=HOOK_NAME)  # the session's unit and conditioning wrappers
        attach_unit_hooks(self.model, self.adapter, self._call_unit, name=HOOK_NAME, granularity=s.config.granularity)
        if s.config.shares_conditioning:
            paths = self.adapter.conditioning_paths(self.model)
            attach_module_hooks(self.model, paths, self._call_conditioning, name=HOOK_NAME)
        self._pre_hook = self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        # a forward another library set on the instance (diffusers' hook registry: context parallelism's
        # input split) is the one this wraps and the one detach restores
        self._instance_forward = vars(self.model).get("forward")
        self.model.forward = self._forward

    def detach(self) -> None:
        self._live = False
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None
        self._detached = True  # a wrapper set over this one after attach (diffusers' hooks) now passes through
        if vars(self.model).get("forward") == self._forward:
            if self._instance_forward is not None:
                self.model.forward = self._instance_forward
            else:
                del self.model.forward  # the class's forward shows through again

    # -- per step, eager ------------------------------------------------------------------------

    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """After the session's pre-hook identified the step: decide it, count it, pick the state."""
        s = self.session
        if s._probe is not None:
            return
        if s._retrying:  # the session's guard re-runs a cached step in full: as if it had been planned so
            self._restore()
            self._set_step((True,) * len(s.units))
            return
        while len(self._branches) <= s._branch_index:
            self._branches.append(_BranchSlots(shape_key=()))
        slots = self._branches[s._branch_index]
        if slots.shape_key != s._shape_key:  # a new batch size: allocate its state eagerly
            self._branches[s._branch_index] = slots = _BranchSlots(shape_key=s._shape_key)
        if s._step == 0 or not slots.last_full:
            slots.last_full, slots.num_full = [-1] * len(s.units), [0] * len(s.units)
        self._active, self._slots = slots.slots, slots
        self._eager = not slots.slots
        branch = s._branches[s._branch_index]
        s._decide(branch, None)  # fixed policies need no input
        minimum = s.config.min_full_steps
        plan = branch.plan or (False,) * len(s.units)  # per-unit masks: the units planned computed
        computes = tuple(
            branch.full or runs_full(planned, done, minimum) for planned, done in zip(plan, slots.num_full, strict=True)
        )
        if s.config.check_finite and not branch.full:  # what a re-run in full restores
            slots.before = (
                list(slots.last_full),
                list(slots.num_full),
                {i: (o.differences, o.ratios, o.grams, _held_input(o, computes[i])) for i, o in slots.slots.items()},
            )
        self._set_step(computes)
        store, row = branch.conditioning, branch.conditioning_row
        self._conditioning = {p: outs[row] for p, outs in store.outputs.items()} if row is not None else {}

    def _restore(self) -> None:
        """Every unit's history as it was before this step (units computed in it refreshed already)."""
        slots = self._slots
        assert slots.before is not None
        last_full, num_full, states = slots.before
        slots.last_full, slots.num_full = list(last_full), list(num_full)
        for index, (differences, ratios, grams, held) in states.items():
            slot = self._active[index]
            slot.differences, slot.ratios, slot.grams, slot.input_at_full = differences, ratios, grams, held

    def _set_step(self, computes: tuple[bool, ...]) -> None:
        """Each unit's forecast tensors for this step (its own distance since its last computed step)."""
        s, slots = self.session, self._slots
        self.plan = computes
        step = s._step
        for u, full in enumerate(computes):
            last = slots.last_full[u]
            if full:
                distance = step - last if last >= 0 else 1
                slots.last_full[u], slots.num_full[u] = step, slots.num_full[u] + 1
                self.distances[u] = self._tensor(("distance", u, distance), lambda d=distance: float(d))
                continue
            k, order = step - last, min(self.keep, slots.num_full[u] - 1)
            self.coeffs[u] = self._tensor(
                ("coeffs", u, k, order), lambda k=k, order=order: padded_taylor_coefficients(k, order, self.keep)
            )
            if ("pairs", u, k, order) not in self._pair_cache:
                self._pair_cache["pairs", u, k, order] = gram_pair_weights(self.coeffs[u])
            self.pair_weights[u] = self._pair_cache["pairs", u, k, order]
        if self.slopes is not None and not all(computes):
            mask = s.config.mask or ()
            self.position = self._tensor(("position", step), lambda: ratio_position(step, len(mask)))
        self._count(computes)

    def _tensor(self, key: tuple, value: Any) -> torch.Tensor:
        if key not in self._tensors:
            self._tensors[key] = torch.tensor(value(), dtype=torch.float32, device=self.device)
        return self._tensors[key]

    def _count(self, computes: tuple[bool, ...]) -> None:
        s, c = self.session, self.session._counters
        per_unit = s.config.unit_masks is not None
        branch = s._branches[s._branch_index]
        for unit, full in zip(s.units, computes, strict=True):
            flops = s._cached_flops(("unit", unit.index, s._shape_key), unit)
            c.module += flops
            c.computed += flops if full else 0
            if per_unit:  # the summary's per-unit patterns, as the eager unit wrapper records them
                branch.unit_letters.setdefault(unit.index, {})[s._step] = "C" if full else "P"
            slot = self._active.get(unit.index)
            if slot is not None:
                kind, order = s.config.predictor, s.config.order
                flops = estimate_predictor_flops(kind, order, slot.numel_out, slot.numel_in, full=full)
                c.predictor += s._scale * flops

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._detached or self.session._probe is not None or self.session._step < 0:  # a shape-only probe
            return self._original_forward(*args, **kwargs)
        self._live = True
        try:
            if self._eager:  # first step of this shape: allocate the state
                out = self._original_forward(*args, **kwargs)
                self._count_predictor_refresh()
                return out
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            return self._compiled(*args, **kwargs)
        finally:
            self._live = False

    def _count_predictor_refresh(self) -> None:
        """The eager first step allocated the state: count its refresh as the session would have."""
        kind, order, c = self.session.config.predictor, self.session.config.order, self.session._counters
        for slot in self._active.values():
            c.predictor += self.session._scale * estimate_predictor_flops(
                kind, order, slot.numel_out, slot.numel_in, full=True
            )

    # -- the unit wrapper: traced by dynamo, reads only ``full``, tensors and constants ---------------

    def _call_unit(self, unit: CacheUnit, original: Any, args: tuple, kwargs: dict) -> Any:
        if self.session._probe is not None or not self._live:  # eager only (shape probe, stray call)
            return original(*args, **kwargs)
        x = self.adapter.unit_input(self.model, unit, args, kwargs)
        slot = self._active.get(unit.index)
        if self.plan[unit.index] or slot is None:
            out = original(*args, **kwargs)
            self._refresh(unit, slot, out, x)
            return out
        return self._predict(unit, slot, x)

    def _call_conditioning(self, path: str, original: Any, args: tuple, kwargs: dict) -> Any:
        """Shared conditioning (conditioning.py): this step's precomputed output, picked in the pre-hook."""
        shared = self._conditioning.get(path) if self._live else None
        return original(*args, **kwargs) if shared is None else shared

    def _refresh(self, unit: CacheUnit, slot: _Slot | None, out: Any, x: torch.Tensor) -> None:
        tensors, layout, single = flatten_output(out)
        config = self.session.config
        relational = config.predictor == "relational"
        if slot is None:  # eager: the first step of this shape allocates the state
            differences = [[o, *(torch.zeros_like(o) for _ in range(self.keep))] for o in tensors]
            slot = _Slot(
                differences=differences,
                ratios=[self._initial_ratio(unit, o) for o in tensors],
                grams=[stack_gram(difference_gram(d, reduce=self.session._reduce)) for d in differences]
                if relational and self.keep
                else [],
                input_at_full=x.detach().clone() if relational else None,
                layout=layout,
                single=single,
                numel_out=sum(o.numel() for o in tensors),
                numel_in=x.numel(),
            )
            self._active[unit.index] = slot
            return
        differences, ratios = [], []
        for j, o in enumerate(tensors):
            prev = slot.differences[j]
            new = [o]
            for i in range(self.keep):
                new.append((new[i] - prev[i]) / self.distances[unit.index])
            differences.append(new)
            if relational and config.ratios is None:
                assert slot.input_at_full is not None
                ratios.append(relation_ratio(o, prev[0], x, slot.input_at_full, reduce=self.session._reduce))
            else:
                ratios.append(slot.ratios[j])
        slot.differences, slot.ratios = differences, ratios
        if relational:
            # in place: two units fed one tensor (a Flux single block's attention and feed-forward) would
            # otherwise get two equal clones the compiler may merge into one, and dynamo guards on aliasing
            slot.input_at_full.copy_(x)
            # ||d(k)|| at a cached step from <D_i, D_j>, as the session does: no pass over d(k)
            reduce = self.session._reduce
            slot.grams = [stack_gram(difference_gram(d, reduce=reduce)) for d in differences] if self.keep else []

    def _initial_ratio(self, unit: CacheUnit, o: torch.Tensor) -> torch.Tensor:
        calibrated = self.session.config.ratios
        value = float(calibrated[unit.index]) if calibrated is not None else 0.0
        if calibrated is not None:
            return torch.tensor(value, dtype=torch.float32, device=o.device)  # 0-d: broadcasts over the batch
        return torch.zeros(o.shape[0], dtype=torch.float32, device=o.device)

    def _predict(self, unit: CacheUnit, slot: _Slot, x: torch.Tensor) -> Any:
        kind = self.session.config.predictor
        outs = []
        for j, diffs in enumerate(slot.differences):
            if kind == "reuse":
                outs.append(diffs[0])
            elif kind == "taylor":
                outs.append(weighted_sum(diffs, self.coeffs[unit.index]))
            else:
                assert slot.input_at_full is not None
                ratio = slot.ratios[j]
                if self.slopes is not None:
                    ratio = ratio + self.slopes[unit.index] * self.position
                grams, x_full, coeffs = slot.grams[j], slot.input_at_full, self.coeffs[unit.index]
                reduce = self.session._reduce
                outs.append(
                    stacked_relational_forecast(
                        diffs, coeffs, self.pair_weights[unit.index], grams, ratio, x, x_full, reduce=reduce
                    )
                )
        return unflatten_output(outs, slot.layout, slot.single)
