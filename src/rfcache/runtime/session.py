"""`CacheSession`: the cache state of one model for one generation, and the hooks that use it.

The session wraps each unit's forward (through the adapter) and registers a forward pre-hook on
the transformer that identifies the denoising step from the ``timestep`` the pipeline passes:

- a timestep lower than the last one starts the next step;
- the same timestep again is another call of the same step: the next CFG branch (pipelines with
  sequential guidance call the transformer twice per step), which keeps its own cache;
- a higher timestep starts a new generation, which resets all state.

At the first unit call of each step and branch the policy decides, from the first unit's input
where it needs it, whether the step is full (every unit computed, cache refreshed) or cached
(every unit predicted). The block skeleton always runs. A non-finite prediction is replaced by
a real computation of that unit and counted.

Guards: with ``max_cache_bytes`` set, each generation's cache size is estimated at its first
transformer call (and again when a sequential-CFG branch appears) from a shape-only forward of
that call (memory.py) and the generation is refused before anything is cached if the estimate is
over the limit. A fixed schedule (a profile's mask) must start at the scheduler's first step: a
session that first sees a generation part-way through (enabled, or re-enabled with another
profile, mid-generation) refuses to run rather than apply the schedule to the wrong steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.models import BlockAdapter, CacheUnit, StepShape
from rfcache.models.hooks import attach_unit_hooks, detach_unit_hooks
from rfcache.runtime.config import CacheConfig
from rfcache.runtime.identity import input_resolution
from rfcache.runtime.memory import (
    CacheMemoryError,
    UnitFootprint,
    estimate_cache_bytes,
    format_bytes,
    shape_only_forward,
    tensor_shapes,
)
from rfcache.runtime.policies import DynamicPolicy, IntervalPolicy, Policy, StaticPolicy
from rfcache.runtime.predictors import (
    estimate_predictor_flops,
    relation_ratio,
    relational_forecast,
    taylor_forecast,
    update_differences,
)
from rfcache.runtime.runspec import guidance_mode
from rfcache.schedules import Profile

__all__ = ["CacheSession", "CacheSummary"]

logger = logging.getLogger(__name__)
HOOK_NAME = "rfcache"


@dataclass(frozen=True)
class CacheSummary:
    """What the last generation did. FLOPs are analytic (adapter counts), not measured."""

    method: str
    num_steps: int
    num_full_steps: int
    pattern: str
    patterns: tuple[str, ...]
    flops_fraction: float
    total_flops: int
    full_flops: int
    module_flops: int
    computed_module_flops: int
    predictor_flops: int
    nonfinite_fallbacks: int
    num_calls: int

    def __str__(self) -> str:
        lines = [
            f"method            {self.method}",
            f"steps             {self.num_steps} ({self.num_full_steps} full)",
            f"pattern           {self.pattern}",
            f"flops fraction    {self.flops_fraction:.3f} of module FLOPs (analytic, predictor cost included)",
            f"total flops       {self.total_flops / 1e9:.3f} GFLOP vs {self.full_flops / 1e9:.3f} full (analytic)",
            f"non-finite        {self.nonfinite_fallbacks} predictions recomputed",
        ]
        return "\n".join(lines)


@dataclass
class _UnitState:
    differences: list[list[torch.Tensor]] = field(default_factory=list)  # per output tensor: D_0..D_m
    ratios: list[torch.Tensor] = field(default_factory=list)  # per output tensor: s, (B,)
    input_at_full: torch.Tensor | None = None
    last_full: int = -1
    layout: tuple[bool, ...] | None = None  # which output positions hold tensors
    single: bool = True


@dataclass
class _Branch:
    policy: Policy
    step: int = -1
    full: bool = True
    decided_step: int = -1
    last_full: int = -1
    num_full: int = 0
    units: dict[int, _UnitState] = field(default_factory=dict)
    pattern: list[str] = field(default_factory=list)


@dataclass
class _Counters:
    calls: int = 0
    skeleton: int = 0
    module: int = 0
    computed: int = 0
    predictor: int = 0
    fallbacks: int = 0


class CacheSession:
    """Cache state and hooks for one transformer; see the module docstring for the step rules."""

    def __init__(
        self,
        model: torch.nn.Module,
        adapter: BlockAdapter,
        config: CacheConfig,
        *,
        profile: Profile | None = None,
        scheduler: Any = None,
        pipeline: Any = None,
    ) -> None:
        self.model, self.adapter, self.config = model, adapter, config
        self.profile, self.scheduler, self.pipeline = profile, scheduler, pipeline
        self.units: list[CacheUnit] = []
        self._pre_hook: Any = None
        self._policy_template = self._make_policy()
        self._flop_cache: dict[tuple, int] = {}
        self._probe: list[UnitFootprint] | None = None  # set while a shape-only forward runs
        self._bytes_cache: dict[str, int] = {}
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------------

    def attach(self) -> None:
        self.units = attach_unit_hooks(
            self.model, self.adapter, self._call_unit, name=HOOK_NAME, granularity=self.config.granularity
        )
        self._pre_hook = self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def detach(self) -> None:
        detach_unit_hooks(self.model, name=HOOK_NAME)
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None
        self.reset()

    def reset(self) -> None:
        """Forget all cached tensors and counts (a new generation starts from scratch)."""
        self._timestep: float | None = None
        self._step = -1
        self._branch_index = 0
        self._branches: list[_Branch] = []
        self._shape: StepShape | None = None
        self._counters = _Counters()

    # -- step identification ----------------------------------------------------------------------

    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self._probe is not None:
            return
        inputs = dict(kwargs)
        if args:
            inputs.setdefault("hidden_states", args[0])
        timestep = inputs.get(self.adapter.timestep_arg)
        if timestep is None:
            raise RfcacheError(
                f"{type(module).__name__} was called without '{self.adapter.timestep_arg}'; "
                "rfcache identifies denoising steps by it"
            )
        t = float(torch.as_tensor(timestep).flatten()[0])
        if self._timestep is None or t > self._timestep:
            self.reset()
            self._step, self._branch_index = 0, 0
            if self.config.policy == "static":
                self._check_generation_start(t)
            if self.profile is not None:
                self._check_profile(inputs)
        elif t == self._timestep:
            self._branch_index += 1
        else:
            self._step, self._branch_index = self._step + 1, 0
        shape = self.adapter.step_shape(self.model, inputs)
        if len(self._branches) <= self._branch_index and self.config.max_cache_bytes is not None:
            n = self._branch_index + 1
            try:
                self.check_memory(args, kwargs, branches=n, context=f"batch {shape.batch}, {n} CFG branch(es)")
            except CacheMemoryError:
                self.reset()  # the generation is abandoned; the next call starts a new one
                raise
        self._timestep = t
        while len(self._branches) <= self._branch_index:
            self._branches.append(_Branch(policy=self._policy_template.new_state()))
        self._shape = shape
        self._shape_key = (shape.batch, shape.image_tokens, shape.text_tokens, tuple(sorted(shape.extra.items())))
        self._counters.calls += 1
        self._counters.skeleton += self._cached_flops(("skeleton", self._shape_key), None)

    def _check_generation_start(self, t: float) -> None:
        """Refuse a fixed schedule whose first call is not the scheduler's first step (it would be misaligned)."""
        sched = self.scheduler
        if sched is None:
            return
        timesteps = getattr(sched, "timesteps", None)
        total = len(timesteps) if timesteps is not None else "?"
        if hasattr(sched, "step_index"):  # schedulers that count their steps: None until the first step
            done = sched.step_index
        elif timesteps is not None:  # the others are called with their own timestep values
            values = [float(v) for v in torch.as_tensor(timesteps).flatten()]
            done = values.index(t) if t in values else None
        else:
            return
        if done:
            raise RfcacheError(
                f"caching with a fixed schedule began in the middle of a generation (at step {done + 1} of "
                f"{total}); enable a profile, or switch to another one, between pipeline calls"
            )

    def _check_profile(self, inputs: dict[str, Any]) -> None:
        assert self.profile is not None
        timesteps = getattr(self.scheduler, "timesteps", None)
        # pipelines that keep their guidance scale during the call (SD3, Flux, Wan) are checked on it too
        scale = getattr(self.pipeline, "_guidance_scale", None)
        scale = float(scale) if isinstance(scale, (int, float)) else None
        self.profile.check_sampling(  # the scheduler was checked at enable time
            num_steps=len(timesteps) if timesteps is not None else None,
            resolution=input_resolution(inputs["hidden_states"]),
            guidance=guidance_mode(self.pipeline, scale) if scale is not None else None,
            guidance_scale=scale,
        )

    # -- the unit wrapper -------------------------------------------------------------------------

    def _call_unit(self, unit: CacheUnit, original: Any, args: tuple, kwargs: dict) -> Any:
        if self._probe is not None:  # a shape-only forward: note the unit's tensor sizes
            out = original(*args, **kwargs)
            x = self.adapter.unit_input(self.model, unit, args, kwargs)
            tensors, _, _ = _flatten(out)
            self._probe.append(UnitFootprint(_nbytes(x), sum(_nbytes(o) for o in tensors)))
            return out
        if self._step < 0:  # called outside a transformer forward (e.g. a block run on its own)
            return original(*args, **kwargs)
        branch = self._branches[self._branch_index]
        x = self.adapter.unit_input(self.model, unit, args, kwargs)
        if branch.decided_step != self._step:
            self._decide(branch, x)
        flops = self._cached_flops(("unit", unit.index, self._shape_key), unit)
        self._counters.module += flops
        state = branch.units.setdefault(unit.index, _UnitState())
        if not branch.full and state.last_full >= 0:
            out = self._predict(unit, state, x)
            if out is not None:
                return out
            self._counters.fallbacks += 1
        out = original(*args, **kwargs)
        self._counters.computed += flops
        self._refresh(state, out, x)
        return out

    def _decide(self, branch: _Branch, first_input: torch.Tensor) -> None:
        step = self._step
        since = step - branch.last_full if branch.last_full >= 0 else step + 1
        full = branch.policy.decide(step, since, first_input if branch.policy.needs_first_input else None)
        if not full and branch.num_full < self.config.min_full_steps:
            full = True  # the predictor has no history yet (RFE needs two full steps)
        if full:
            branch.policy.observe_full(step, first_input if branch.policy.needs_first_input else None)
            branch.last_full = step
            branch.num_full += 1
        elif self.config.predictor != "reuse" and branch.policy.needs_first_input:
            self._counters.predictor += self._monitor_flops(first_input)
        branch.full, branch.decided_step, branch.step = full, step, step
        branch.pattern.append("C" if full else "P")

    def _refresh(self, state: _UnitState, out: Any, x: torch.Tensor) -> None:
        step = self._step
        tensors, state.layout, state.single = _flatten(out)
        distance = step - state.last_full if state.last_full >= 0 else 1
        kind, order = self.config.predictor, self.config.order
        keep = 0 if kind == "reuse" else order
        old = state.differences or [[] for _ in tensors]
        if kind == "relational" and state.input_at_full is not None and state.differences:
            state.ratios = [
                relation_ratio(o, prev[0], x, state.input_at_full) for o, prev in zip(tensors, old, strict=True)
            ]
        state.differences = [update_differences(prev, o, distance, keep) for prev, o in zip(old, tensors, strict=True)]
        if kind == "relational":
            state.input_at_full = x.detach().clone()
        state.last_full = step
        numel_out = sum(t.numel() for t in tensors)
        self._counters.predictor += estimate_predictor_flops(kind, order, numel_out, x.numel(), full=True)

    def _predict(self, unit: CacheUnit, state: _UnitState, x: torch.Tensor) -> Any | None:
        k = self._step - state.last_full
        kind = self.config.predictor
        outs: list[torch.Tensor] = []
        for i, diffs in enumerate(state.differences):
            if kind == "reuse" or len(diffs) == 1:
                pred = diffs[0]
            elif kind == "taylor":
                pred = taylor_forecast(diffs, k)
            else:
                ratio = self._ratio(unit, state, i)
                pred = relational_forecast(diffs, k, ratio, x, state.input_at_full)
            if self.config.check_finite and not bool(torch.isfinite(pred).all()):
                logger.warning("non-finite prediction for %s at step %d; computing it", unit.path, self._step)
                return None
            outs.append(pred)
        numel_out = sum(t.numel() for t in outs)
        self._counters.predictor += estimate_predictor_flops(kind, self.config.order, numel_out, x.numel(), full=False)
        return _unflatten(outs, state.layout, state.single)

    def _ratio(self, unit: CacheUnit, state: _UnitState, position: int) -> torch.Tensor:
        calibrated = self.config.ratios
        if calibrated is not None:
            return torch.full((state.differences[position][0].shape[0],), float(calibrated[unit.index]))
        return state.ratios[position]

    # -- memory ---------------------------------------------------------------------------------

    def cache_bytes(self, args: tuple, kwargs: dict) -> int:
        """Estimated bytes the cache holds per CFG branch for transformer calls with these arguments."""
        key = tensor_shapes((args, kwargs))
        if key not in self._bytes_cache:
            self._probe = []
            try:
                shape_only_forward(self.model, args, kwargs)
            except Exception as exc:  # an op fake tensors do not support: say so, on one line
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise CacheMemoryError(
                    f"cannot estimate the cache size of {type(self.model).__name__} (shape-only forward failed: "
                    f"{first}); unset max_cache_bytes"
                ) from exc
            finally:
                footprints, self._probe = self._probe, None
            c = self.config
            estimate = estimate_cache_bytes(footprints, predictor=c.predictor, order=c.order, policy=c.policy)
            self._bytes_cache[key] = estimate
        return self._bytes_cache[key]

    def check_memory(self, args: tuple, kwargs: dict, *, branches: int, context: str) -> int:
        """The estimate for ``branches`` CFG branches; a :class:`CacheMemoryError` if over ``max_cache_bytes``."""
        total = self.cache_bytes(args, kwargs) * branches
        limit = self.config.max_cache_bytes
        if limit is not None and total > limit:
            raise CacheMemoryError(
                f"caching {type(self.model).__name__} would hold about {format_bytes(total)} of tensors "
                f"({len(self.units)} units, {context}), over max_cache_bytes={limit} ({format_bytes(limit)})"
            )
        return total

    # -- accounting -------------------------------------------------------------------------------

    def _cached_flops(self, key: tuple, unit: CacheUnit | None) -> int:
        if key not in self._flop_cache:
            assert self._shape is not None
            if unit is None:
                self._flop_cache[key] = self.adapter.skeleton_flops(self.model, self._shape)
            else:
                self._flop_cache[key] = self.adapter.unit_flops(self.model, unit, self._shape)
        return self._flop_cache[key]

    def _monitor_flops(self, first_input: torch.Tensor) -> int:
        return (2 * self.config.order + 5) * first_input.numel()

    def _make_policy(self) -> Policy:
        c = self.config
        if c.policy == "always":
            return IntervalPolicy(interval=1)
        if c.policy == "interval":
            return IntervalPolicy(interval=c.interval, warmup=c.warmup)
        if c.policy == "static":
            assert c.mask is not None
            return StaticPolicy(tuple(c.mask))
        return DynamicPolicy(tau=c.tau, order=c.order, warmup=c.warmup, max_cached=c.max_cached)

    def summary(self) -> CacheSummary:
        c = self._counters
        patterns = tuple("".join(b.pattern) for b in self._branches)
        first = patterns[0] if patterns else ""
        pattern = first if len(set(patterns)) <= 1 else " | ".join(patterns)
        spent = c.computed + c.predictor
        return CacheSummary(
            method=self.config.method,
            num_steps=len(first),
            num_full_steps=first.count("C"),
            pattern=pattern,
            patterns=patterns,
            flops_fraction=spent / c.module if c.module else 1.0,
            total_flops=c.skeleton + spent,
            full_flops=c.skeleton + c.module,
            module_flops=c.module,
            computed_module_flops=c.computed,
            predictor_flops=c.predictor,
            nonfinite_fallbacks=c.fallbacks,
            num_calls=c.calls,
        )


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _flatten(out: Any) -> tuple[list[torch.Tensor], tuple[bool, ...], bool]:
    if isinstance(out, torch.Tensor):
        return [out], (True,), True
    if isinstance(out, tuple):
        return [o for o in out if o is not None], tuple(o is not None for o in out), False
    raise TypeError(f"a cached unit must return a tensor or a tuple of tensors, not {type(out).__name__}")


def _unflatten(tensors: list[torch.Tensor], layout: tuple[bool, ...] | None, single: bool) -> Any:
    if single:
        return tensors[0]
    it = iter(tensors)
    return tuple(next(it) if present else None for present in (layout or ()))
