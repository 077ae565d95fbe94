"""`CacheSession`: the cache state of one model for one generation, and the hooks that use it.

The session wraps each unit's forward (through the adapter) and registers a forward pre-hook on
the transformer that identifies the denoising step from the ``timestep`` the pipeline passes:

- a timestep lower than the last one starts the next step;
- the same timestep again is another call of the same step: the next CFG branch (pipelines with
  sequential guidance call the transformer twice per step), which keeps its own cache;
- a higher timestep starts a new generation, which resets all state.

At the first unit call of each step and branch the policy decides, from the first unit's input
where it needs it, whether the step is full (every unit computed, cache refreshed) or cached
(every unit predicted). With per-unit masks (a per-unit profile) the policy's plan for the step
also names the units that compute: each unit then follows its own row, keeps its own history (its
differences use the distances between its own full steps, RFE its own ratio) and its own warm-up,
and the step counts as full only where every unit computes. The block skeleton always runs. A cached
step whose output is not finite is run again as a full step (as the bundle runner does) and counted:
one check per step, on the transformer's output, so the hot path has no per-unit host sync.

Hot path: the forecast coefficients ``k^i / i!`` are tensors prepared once per ``k`` (and device,
dtype); predictions are fused multiply-adds (``addcmul``) over the cached differences; RFE takes
``||d(k)||`` from the Gram entries ``<D_i, D_j>`` kept at the full step, so a cached step makes one
pass over each difference and one norm of the input change.

Shared conditioning (conditioning.py; on by default under a cache method, off for ``none``): the
modules the adapter names as functions of (timestep, condition) only are computed for every step
of the generation in one batched pass at its first call, and served per step.

Context parallelism (parallel.py): at each generation's first call the session looks up the
model's context-parallel group; under one, every norm and L1 sum a prediction or decision takes
over the sequence is reduced over the group, RCS's decision and the non-finite guard are agreed by
all ranks, and the predictor FLOPs count the whole sequence (the shard's times the group size), so
every rank computes, decides and summarises what one device would.

Guards: with ``max_cache_bytes`` set, each generation's cache size is estimated at its first
transformer call (and again when a sequential-CFG branch appears) from a shape-only forward of
that call (memory.py) and the generation is refused before anything is cached if the estimate is
over the limit. A fixed schedule (a profile's mask) must start at the scheduler's first step: a
session that first sees a generation part-way through (enabled, or re-enabled with another
profile, mid-generation) refuses to run rather than apply the schedule to the wrong steps.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.models import BlockAdapter, CacheUnit, StepShape
from rfcache.models.hooks import attach_module_hooks, attach_unit_hooks, detach_unit_hooks
from rfcache.runtime.conditioning import ConditioningStore, build_conditioning_store
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
from rfcache.runtime.outputs import flatten_output as _flatten
from rfcache.runtime.outputs import unflatten_output as _unflatten
from rfcache.runtime.parallel import ContextGroup, Reduce, check_units_unsplit, context_group
from rfcache.runtime.policies import DynamicPolicy, IntervalPolicy, Policy, StaticPolicy
from rfcache.runtime.predictors import (
    difference_gram,
    estimate_predictor_flops,
    gram_pair_weights,
    kept_differences,
    relation_ratio,
    stack_gram,
    stacked_relational_forecast,
    taylor_coefficients,
    update_differences,
    weighted_sum,
)
from rfcache.runtime.runspec import guidance_mode
from rfcache.schedules import Profile
from rfcache.schedules.masks import runs_full

__all__ = ["CacheSession", "CacheSummary", "call_kind"]

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
    shared_conditioning_calls: int = 0
    unit_patterns: tuple[str, ...] = ()  # per-unit schedules: per unit (execution order), the first branch's C/P
    unit_paths: tuple[str, ...] = ()

    @property
    def unit_fractions(self) -> tuple[float, ...]:
        """Per unit, the fraction of steps it was computed on (the first branch)."""
        return tuple(p.count("C") / len(p) if p else 1.0 for p in self.unit_patterns)

    def __str__(self) -> str:
        lines = [
            f"method            {self.method}",
            f"steps             {self.num_steps} ({self.num_full_steps} full)",
            f"pattern           {self.pattern}",
            f"flops fraction    {self.flops_fraction:.3f} of module FLOPs (analytic, predictor cost included)",
            f"total flops       {self.total_flops / 1e9:.3f} GFLOP vs {self.full_flops / 1e9:.3f} full (analytic)",
            f"non-finite        {self.nonfinite_fallbacks} cached steps recomputed in full",
        ]
        if len(set(self.unit_patterns)) > 1:  # per-unit schedules: one row per unit
            fractions = self.unit_fractions
            lines.append(f"per unit          computed on {min(fractions):.3f}..{max(fractions):.3f} of steps")
            width = max(len(p) for p in self.unit_paths)
            lines += [f"  {p:<{width}}  {row}" for p, row in zip(self.unit_paths, self.unit_patterns, strict=True)]
        return "\n".join(lines)


# a cached step's forecast weights: per term (D_0's the constant 1), all as one tensor, RFE's Gram pair weights
_Coefficients = tuple[list[Any], torch.Tensor, torch.Tensor]


@dataclass
class _UnitState:
    differences: list[list[torch.Tensor]] = field(default_factory=list)  # per output tensor: D_0..D_m
    ratios: list[torch.Tensor] = field(default_factory=list)  # per output tensor: s, (B,)
    grams: list[torch.Tensor] = field(default_factory=list)  # per output: <D_i, D_j> (1 <= i <= j), (B, P)
    input_at_full: torch.Tensor | None = None
    last_full: int = -1
    num_full: int = 0
    before: tuple | None = None  # the history before the latest refresh (a step re-run in full restores it)
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
    plan: tuple[bool, ...] | None = None  # per unit index: planned computed at this step (per-unit masks)
    unit_letters: dict[int, dict[int, str]] = field(default_factory=dict)  # unit -> step -> C/P
    first_input: torch.Tensor | None = None  # the first unit's input at the decided step (dynamic policy)
    conditioning: ConditioningStore | None = None
    conditioning_row: int | None = None  # the store's row served at this call, None: run the modules
    conditioning_start: int = 0  # the step the store's first row belongs to


@dataclass
class _Counters:
    calls: int = 0
    skeleton: int = 0
    module: int = 0
    computed: int = 0
    predictor: int = 0
    fallbacks: int = 0
    shared: int = 0


def call_kind(t: float, last: float | None, run: Any, last_run: Any) -> str:
    """What a transformer call at timestep ``t`` starts, after a call at ``last``: ``"generation"``
    (the first call, a higher timestep, or new scheduler timesteps ``run``: ``set_timesteps`` makes a
    tensor per generation, which tells generations apart when a second expert's only step repeats
    its timestep), ``"branch"`` (the same timestep: the next guidance branch) or ``"step"``.

    The PyTorch runtime and the bundle engine share it, so both count steps alike.
    """
    if last is None or t > last or (run is not None and run is not last_run):
        return "generation"
    return "branch" if t == last else "step"


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
        first_step: int = 0,
    ) -> None:
        self.model, self.adapter, self.config = model, adapter, config
        self.first_step = first_step  # a two-expert pipeline's second expert: its first step (runtime/experts.py)
        self.profile, self.scheduler, self.pipeline = profile, scheduler, pipeline
        self.units: list[CacheUnit] = []
        self._pre_hook: Any = None
        self._post_hook: Any = None
        self.compiled: Any = None  # a compile.CompiledSchedule (regional.RegionalSchedule) with compile=True
        # a cached step's forecasts; compiled ones under a per-unit schedule's regional compile
        self.weighted_sum: Callable[..., torch.Tensor] = weighted_sum
        self.relational_forecast: Callable[..., torch.Tensor] = stacked_relational_forecast
        self._retrying = False  # re-running a cached step in full
        self._coefficients: dict[tuple, _Coefficients] = {}  # (k, count, device, dtype) -> k^i / i!
        self._calibrated: dict[tuple, torch.Tensor] = {}  # (unit, batch, device, step or -1) -> s, (B,)
        self._policy_template = self._make_policy()
        self._flop_cache: dict[tuple, int] = {}
        self._probe: list[UnitFootprint] | None = None  # set while a shape-only forward runs
        self._bytes_cache: dict[str, int] = {}
        self._units_checked = False  # against context parallelism's split points, once (parallel.py)
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------------

    def attach(self) -> None:
        rows = self.config.unit_masks
        count = len(self.adapter.units(self.model, self.config.granularity))
        if rows is not None and len(rows) != count:
            raise RfcacheError(f"unit_masks has {len(rows)} rows; this {type(self.model).__name__} has {count} units")
        self.units = attach_unit_hooks(
            self.model, self.adapter, self._call_unit, name=HOOK_NAME, granularity=self.config.granularity
        )
        if self.config.shares_conditioning:
            paths = self.adapter.conditioning_paths(self.model)
            attach_module_hooks(self.model, paths, self._call_conditioning, name=HOOK_NAME)
        self._pre_hook = self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        self._post_hook = self.model.register_forward_hook(self._after_forward, with_kwargs=True)

    def detach(self) -> None:
        if self.compiled is not None:
            self.compiled.detach()
            self.compiled = None
        detach_unit_hooks(self.model, name=HOOK_NAME)
        for hook in (self._pre_hook, self._post_hook):
            if hook is not None:
                hook.remove()
        self._pre_hook = self._post_hook = None
        self.reset()

    def reset(self) -> None:
        """Forget all cached tensors and counts (a new generation starts from scratch)."""
        self._timestep: float | None = None
        self._run: Any = None  # the scheduler's timesteps of the current generation
        self._step = -1
        self._branch_index = 0
        self._branches: list[_Branch] = []
        self._shape: StepShape | None = None
        self._counters = _Counters()
        self._group: ContextGroup | None = None  # the context-parallel group of this generation (parallel.py)
        self._reduce: Reduce | None = None  # its sum over ranks; None on one device
        self._scale = 1  # the group's size: a unit's shard times it is the sequence one device sees

    # -- step identification ----------------------------------------------------------------------

    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self._probe is not None or self._retrying:
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
        run = getattr(self.scheduler, "timesteps", None)
        call = call_kind(t, self._timestep, run, self._run)
        if call == "generation":
            self.reset()
            self._use_group(context_group(module))
            self._run = run
            self._step, self._branch_index = self.first_step, 0
            if self.config.policy == "static":
                self._check_generation_start(t)
            if self.profile is not None:
                self._check_profile(inputs)
        elif call == "branch":
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
            branch = _Branch(policy=self._policy_template.new_state())
            self._branches.append(branch)  # before the store: building it runs the (wrapped) modules
            if self.config.shares_conditioning:
                branch.conditioning = build_conditioning_store(self.model, self.adapter, inputs, self.scheduler)
                branch.conditioning_start = self._step
        branch = self._branches[self._branch_index]
        if branch.conditioning is not None:
            row = branch.conditioning.lookup(self._step - branch.conditioning_start, t, inputs)
            branch.conditioning_row = row
            self._counters.shared += row is not None
        self._shape = shape
        self._shape_key = (shape.batch, shape.image_tokens, shape.text_tokens, tuple(sorted(shape.extra.items())))
        self._counters.calls += 1
        self._counters.skeleton += self._cached_flops(("skeleton", self._shape_key), None)
        self._call_start = dataclasses.replace(self._counters)  # what a re-run in full starts from

    def _use_group(self, group: ContextGroup | None) -> None:
        if group is not None and self.config.max_cache_bytes is not None:
            raise RfcacheError(
                f"max_cache_bytes is not supported under context parallelism ({group.mode}, {group.size} ranks): "
                "the shape-only forward cannot run the split model; unset it"
            )
        if group is not None and not self._units_checked:
            check_units_unsplit(self.model, {u.path: self.adapter.resolve(self.model, u) for u in self.units}, group)
            self._units_checked = True
        self._group, self._scale = group, group.size if group is not None else 1
        self._reduce = group.sum if group is not None else None

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
        if (done or 0) != self.first_step and self.first_step:
            raise RfcacheError(
                f"{type(self.model).__name__}: this expert's fixed schedule starts at step {self.first_step + 1}, "
                f"but it was first called at step {(done or 0) + 1} of {total} (the pipeline switches experts "
                "elsewhere than the profile's sampling.boundary_step)"
            )
        if done and not self.first_step:
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

    def _after_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """The once-per-step non-finite guard: a cached step with a NaN/inf output is run again in full."""
        if self._probe is not None or self._retrying or self._step < 0 or not self.config.check_finite:
            return None
        branch = self._branches[self._branch_index]
        if branch.full:
            return None
        finite = bool(torch.isfinite(_first_tensor(output)).all())
        if self._group is not None:  # every rank re-runs, or none: the split model's collectives must pair up
            finite = not self._group.any(not finite)
        if finite:
            return None
        logger.warning("non-finite output at cached step %d; running it in full", self._step)
        self._counters = self._call_start  # the cached pass is replaced, not added to
        self._counters.fallbacks += 1
        branch.full, branch.pattern[-1] = True, "C"
        self._mark_full(branch, self._step, branch.first_input)
        self._retrying = True
        try:
            return module(*args, **kwargs)
        finally:
            self._retrying = False

    def _call_conditioning(self, path: str, original: Any, args: tuple, kwargs: dict) -> Any:
        if self._probe is None and self._step >= 0:
            branch = self._branches[self._branch_index]
            if branch.conditioning is not None and branch.conditioning_row is not None:
                return branch.conditioning.outputs[path][branch.conditioning_row]
        return original(*args, **kwargs)

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
        full = branch.full or (
            branch.plan is not None and runs_full(branch.plan[unit.index], state.num_full, self.config.min_full_steps)
        )
        letters = branch.unit_letters.setdefault(unit.index, {})
        if not full and state.last_full >= 0:
            letters[self._step] = "P"
            return self._predict(unit, state, x)
        letters[self._step] = "C"
        out = original(*args, **kwargs)
        self._counters.computed += flops
        self._refresh(state, out, x)
        return out

    def _decide(self, branch: _Branch, first_input: torch.Tensor) -> None:
        step = self._step
        since = step - branch.last_full if branch.last_full >= 0 else step + 1
        needs = branch.policy.needs_first_input
        full = branch.policy.decide(step, since, first_input if needs else None, reduce=self._reduce)
        if needs and self._group is not None:  # one decision on every rank (full if any rank says so)
            full = self._group.any(full)
        full = runs_full(full, branch.num_full, self.config.min_full_steps)  # no history yet: computed
        branch.plan = branch.policy.unit_plan(step)  # per-unit masks: which units compute (when not full)
        branch.first_input = first_input if branch.policy.needs_first_input else None
        if full:
            self._mark_full(branch, step, branch.first_input)
        elif self.config.predictor != "reuse" and branch.policy.needs_first_input:
            self._counters.predictor += self._monitor_flops(first_input)
        branch.full, branch.decided_step, branch.step = full, step, step
        branch.pattern.append("C" if full else "P")

    @staticmethod
    def _mark_full(branch: _Branch, step: int, first_input: torch.Tensor | None) -> None:
        branch.policy.observe_full(step, first_input)
        branch.last_full = step
        branch.num_full += 1

    def _refresh(self, state: _UnitState, out: Any, x: torch.Tensor) -> None:
        step = self._step
        if state.last_full == step and state.before is not None:  # a step re-run in full: replace its refresh
            state.differences, state.ratios, state.grams, state.input_at_full, state.last_full, state.num_full = (
                state.before
            )
        state.before = (
            state.differences,
            state.ratios,
            state.grams,
            state.input_at_full,
            state.last_full,
            state.num_full,
        )
        tensors, state.layout, state.single = _flatten(out)
        distance = step - state.last_full if state.last_full >= 0 else 1
        kind, order = self.config.predictor, self.config.order
        keep = kept_differences(kind, order)
        old = state.differences or [[] for _ in tensors]
        if kind == "relational" and state.input_at_full is not None and state.differences:
            state.ratios = [
                relation_ratio(o, prev[0], x, state.input_at_full, reduce=self._reduce)
                for o, prev in zip(tensors, old, strict=True)
            ]
        state.differences = [update_differences(prev, o, distance, keep) for prev, o in zip(old, tensors, strict=True)]
        if kind == "relational":
            state.input_at_full = x.detach().clone()
            # ||d(k)|| at any k from <D_i, D_j>, without a pass over d(k); none before D_1 exists
            state.grams = [
                stack_gram(difference_gram(d, reduce=self._reduce)) if len(d) > 1 else d[0].new_zeros(0)
                for d in state.differences
            ]
        state.last_full = step
        state.num_full += 1
        numel_out = sum(t.numel() for t in tensors)
        self._counters.predictor += self._scale * estimate_predictor_flops(kind, order, numel_out, x.numel(), full=True)

    def _predict(self, unit: CacheUnit, state: _UnitState, x: torch.Tensor) -> Any:
        k = self._step - state.last_full
        kind = self.config.predictor
        outs: list[torch.Tensor] = []
        for i, diffs in enumerate(state.differences):
            if kind == "reuse" or len(diffs) == 1:
                pred = diffs[0]
            else:
                coeffs, values, pairs = self._step_coefficients(k, len(diffs), diffs[0])
                if kind == "taylor":
                    pred = self.weighted_sum(diffs, coeffs)
                else:
                    ratio = self._ratio(unit, state, i)
                    grams = state.grams[i]
                    pred = self.relational_forecast(
                        diffs, values, pairs, grams, ratio, x, state.input_at_full, reduce=self._reduce
                    )
            outs.append(pred)
        numel_out = sum(t.numel() for t in outs)
        flops = estimate_predictor_flops(kind, self.config.order, numel_out, x.numel(), full=False)
        self._counters.predictor += self._scale * flops
        return _unflatten(outs, state.layout, state.single)

    def _step_coefficients(self, k: int, count: int, like: torch.Tensor) -> _Coefficients:
        """The forecast weights at ``k``, made once per k (and device, dtype), as tensors on the device
        so no host value enters the arithmetic: ``[1, k/1!, k^2/2!, ...]`` (D_0's weight the constant 1,
        no pass to scale it), the same as one float32 tensor, and RFE's Gram pair weights."""
        key = (k, count, like.device, like.dtype)
        prepared = self._coefficients.get(key)
        if prepared is None:
            values = torch.tensor(taylor_coefficients(k, count), dtype=torch.float32).to(like.device)
            terms = [1.0, *values.to(like.dtype)[1:].unbind()]
            prepared = (terms, values, gram_pair_weights(values))
            self._coefficients[key] = prepared
        return prepared

    def _ratio(self, unit: CacheUnit, state: _UnitState, position: int) -> torch.Tensor:
        calibrated = self.config.ratios
        if calibrated is None:
            return state.ratios[position]
        like = state.differences[position][0]
        step = self._step if self.config.ratio_slopes is not None else -1  # a step-linear ratio varies
        key = (unit.index, like.shape[0], like.device, step)
        ratio = self._calibrated.get(key)
        if ratio is None:  # on the model's device: the norms it multiplies are float32 there
            value = self.config.ratio_at(unit.index, self._step)
            ratio = torch.full((like.shape[0],), value, dtype=torch.float32, device=like.device)
            self._calibrated[key] = ratio
        return ratio

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
        return (2 * self.config.order + 5) * first_input.numel() * self._scale

    def _make_policy(self) -> Policy:
        c = self.config
        if c.policy == "always":
            return IntervalPolicy(interval=1)
        if c.policy == "interval":
            return IntervalPolicy(interval=c.interval, warmup=c.warmup)
        if c.policy == "static":
            assert c.mask is not None
            return StaticPolicy(tuple(c.mask), c.unit_masks)
        return DynamicPolicy(tau=c.tau, order=c.order, warmup=c.warmup, max_cached=c.max_cached)

    def summary(self) -> CacheSummary:
        c = self._counters
        patterns = tuple("".join(b.pattern) for b in self._branches)
        first = patterns[0] if patterns else ""
        pattern = first if len(set(patterns)) <= 1 else " | ".join(patterns)
        spent = c.computed + c.predictor
        # per-unit schedules only (a one-mask schedule's units all follow ``pattern``)
        letters = self._branches[0].unit_letters if self._branches and self.config.unit_masks is not None else {}
        unit_patterns = tuple("".join(letters.get(u.index, {}).values()) for u in self.units) if letters else ()
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
            shared_conditioning_calls=c.shared,
            unit_patterns=unit_patterns,
            unit_paths=tuple(u.path for u in self.units) if unit_patterns else (),
        )


def _first_tensor(output: Any) -> torch.Tensor:
    """The model output's first tensor: a bare tensor, ``(sample, ...)`` or a diffusers output's ``sample``."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
