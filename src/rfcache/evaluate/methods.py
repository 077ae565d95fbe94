"""The methods a benchmark compares: how each is applied to a pipeline at a target cost.

A :class:`MethodSpec` builds an :class:`Applied` method for a :class:`Target`. Interval methods
derive their schedule from the target's NFC; methods with a continuous ``knob`` (RCS's ``tau``,
peers' thresholds) are swept by the benchmark until their measured FLOP fraction lands on the
target's. This module holds rfcache's own methods; ``peers.py`` holds diffusers' and cache-dit's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rfcache.errors import RfcacheError
from rfcache.models import get_adapter
from rfcache.runtime import disable, enable, get_session
from rfcache.schedules.masks import interval_for_nfc

__all__ = [
    "OURS",
    "Applied",
    "BenchContext",
    "MethodSpec",
    "Target",
    "ours_method",
]


@dataclass(frozen=True)
class Target:
    """A cost to match: ``fraction`` of the full-compute transformer FLOPs (measured).

    ``nfc`` is the number of full steps of the interval schedules at this cost and ``budget`` the
    analytic module-FLOP fraction (predictors charged) a calibrated profile is given to land on it.
    """

    label: str
    nfc: int
    fraction: float
    budget: float


@dataclass
class BenchContext:
    """What a method may need beyond the pipeline: step count, calibration inputs, a per-run cache."""

    steps: int
    calibrate: Callable[[], Any] | None = None  # runs one full-compute generation (MagCache's calibration)
    calibrate_trials: int = 24
    memo: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] = field(default_factory=dict)  # the workload's pipeline arguments (size, guidance, ...)
    prompts: list[str] | None = None  # the workload's prompts (text pipelines)
    # transformer calls per denoising step in a full-compute run (2 under true CFG: cond, then uncond)
    calls_per_step: Callable[[], int] = lambda: 1


@dataclass
class Applied:
    """A method attached to a pipeline: ``params`` as applied, state to measure, and how to undo it."""

    params: dict[str, Any]
    remove: Callable[[], None]
    state_roots: Callable[[], Iterable[Any]] = lambda: ()
    reset: Callable[[], None] = lambda: None  # called before every generation


@dataclass(frozen=True)
class MethodSpec:
    """One method of the comparison.

    ``apply(pipe, target, knob_value, ctx)`` attaches it; ``knob`` names a continuous parameter the
    benchmark sweeps (log-spaced bisection in ``knob_range``, higher = cheaper) to match the target's
    FLOP fraction; ``check()`` returns why the method cannot run here (a missing package), or None.
    """

    name: str
    source: str
    apply: Callable[[Any, Target, float | None, BenchContext], Applied]
    knob: str | None = None
    knob_range: tuple[float, float] = (1e-4, 10.0)
    check: Callable[[], str | None] = lambda: None
    description: str = ""


def _session_roots(pipe: Any) -> Callable[[], Iterable[Any]]:
    session = get_session(pipe)
    skip = {"model", "adapter", "scheduler", "profile", "config"}
    # everything the session holds except the model, its adapter, scheduler and configuration
    return lambda: [v for k, v in vars(session).items() if k not in skip]


def _enable(pipe: Any, params: dict[str, Any], profile: Any = None) -> Applied:
    if profile is None:
        enable(pipe, **params)
    else:
        enable(pipe, profile)
    return Applied(params=params, remove=lambda: disable(pipe), state_roots=_session_roots(pipe))


def _interval(method: str, order: int | None) -> Callable[[Any, Target, float | None, BenchContext], Applied]:
    def apply(pipe: Any, target: Target, knob: float | None, ctx: BenchContext) -> Applied:
        interval, warmup, _ = interval_for_nfc(ctx.steps, target.nfc, warmup=get_adapter(pipe).taylorseer_warmup)
        params = {"method": method, "interval": interval, "warmup": warmup}
        return _enable(pipe, params if order is None else {**params, "order": order})

    return apply


def _dynamic(method: str, order: int) -> Callable[[Any, Target, float | None, BenchContext], Applied]:
    def apply(pipe: Any, target: Target, tau: float | None, ctx: BenchContext) -> Applied:
        return _enable(pipe, {"method": method, "order": order, "warmup": 2, "tau": float(tau or 0.0)})

    return apply


#: the inputs the static method calibrates with (samples, selection, test): seeds 0..13, which the
#: benchmark's evaluated and tuning samples stay clear of
CALIBRATION_ITEMS = (8, 4, 2)


def _static(pipe: Any, target: Target, knob: float | None, ctx: BenchContext) -> Applied:
    """A profile calibrated (rfcache.calibrate, seeded) for this target's budget; memoised per budget."""
    from rfcache.calibrate import calibrate

    key = f"profile@{target.budget:.4f}"
    if key not in ctx.memo:
        run = {k: ctx.call[k] for k in ("guidance_scale", "height", "width", "num_frames") if k in ctx.call}
        call_args = {k: v for k, v in ctx.call.items() if k not in run}
        result = calibrate(
            pipe,
            budget=target.budget,
            num_inference_steps=ctx.steps,
            trials=ctx.calibrate_trials,
            samples=CALIBRATION_ITEMS[0],
            selection=CALIBRATION_ITEMS[1],
            test=CALIBRATION_ITEMS[2],  # its own test report is not used here: the benchmark evaluates its own samples
            progress=False,
            name=f"bench-{target.label.replace(' ', '')}",
            prompts=ctx.prompts,
            call_args=call_args,
            **run,
        )
        ctx.memo[key] = result.profile
    profile = ctx.memo[key]
    applied = _enable(pipe, {}, profile=profile)
    method = profile.method
    applied.params = {"budget": round(target.budget, 4), "predictor": f"{method.predictor} m={method.order}"}
    applied.params["schedule"] = method.schedule_family
    return applied


def _shipped(name: str) -> Callable[[Any, Target, float | None, BenchContext], Applied]:
    from rfcache.schedules import load_profile

    profile = load_profile(name)  # a missing or malformed profile fails here, before any work

    def apply(pipe: Any, target: Target, knob: float | None, ctx: BenchContext) -> Applied:
        applied = _enable(pipe, {}, profile=profile)
        applied.params = {"profile": name}
        return applied

    return apply


OURS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("fora", "rfcache", _interval("fora", None), description="FORA: reuse, interval"),
        MethodSpec("taylorseer-m1", "rfcache", _interval("taylorseer", 1), description="TaylorSeer m=1, interval"),
        MethodSpec("taylorseer-m2", "rfcache", _interval("taylorseer", 2), description="TaylorSeer m=2, interval"),
        MethodSpec("rfe-m1", "rfcache", _interval("rfe", 1), description="RFE m=1, interval"),
        MethodSpec("rfe-m2", "rfcache", _interval("rfe", 2), description="TaylorSeer m=2 + RFE, interval"),
        MethodSpec("rcs", "rfcache", _dynamic("rcs", 2), knob="tau", description="TaylorSeer m=2 + RCS"),
        MethodSpec("rfc", "rfcache", _dynamic("rfc", 2), knob="tau", description="RFC: RFE + RCS, m=2 (dynamic)"),
        MethodSpec("static", "rfcache", _static, description="calibrated static profile at the target's budget"),
    ]
}


def ours_method(name: str) -> MethodSpec:
    """One of :data:`OURS`, or ``profile:NAME`` for a profile file or shipped profile at its own cost."""
    if name.startswith("profile:"):
        profile = name.removeprefix("profile:")
        return MethodSpec(name, "rfcache", _shipped(profile), description=f"profile {profile} (its own budget)")
    if name not in OURS:
        raise RfcacheError(f"unknown method {name!r}")
    return OURS[name]
