"""`enable`, `disable`, `summary`: apply a caching method to an unmodified pipeline or transformer."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.models import BlockAdapter, get_adapter, get_transformer
from rfcache.models.hooks import has_unit_hooks
from rfcache.runtime.compile import CompiledSchedule, compiled_step_kinds, max_step_kinds
from rfcache.runtime.config import CacheConfig
from rfcache.runtime.experts import (
    check_profile_experts,
    combine_summaries,
    expert_first_steps,
    expert_models,
    split_expert_params,
)
from rfcache.runtime.identity import model_identity
from rfcache.runtime.parallel import context_group
from rfcache.runtime.regional import RegionalSchedule
from rfcache.runtime.runspec import RunSpec, run_setup
from rfcache.runtime.session import CacheSession, CacheSummary
from rfcache.schedules import Profile, load_profile

__all__ = ["disable", "enable", "get_session", "profile_config", "summary"]

_SESSION_ATTR = "_rfcache_session"
# what a profile decides (its method, schedule and ratios): not also given as an enable() parameter
_PROFILE_FIXED = frozenset(
    {"interval", "order", "warmup", "tau", "max_cached", "mask", "unit_masks", "ratios", "ratio_slopes"}
)


def enable(
    pipe_or_model: Any,
    profile: Any = None,
    *,
    method: str | None = None,
    compile: bool = False,
    cuda_graphs: bool = False,
    run: RunSpec | None = None,
    **params: Any,
) -> CacheSession:
    """Start caching ``pipe_or_model``'s transformer with ``method`` (default rfc) or a profile; returns the session.

    ``profile`` (a :class:`Profile`, a YAML path or a shipped name) replays its static schedule
    with its predictor and coefficients; one made for another model, scheduler, step count or
    input resolution is refused, and so is a ``method`` or schedule parameter (``interval``, ``order``,
    ``warmup``, ``tau``, ``max_cached``, ...) given with a profile. The pipeline call itself is unchanged. Parameters
    (``interval``, ``order``, ``warmup``, ``tau``, ``max_cached``, ``granularity``,
    ``check_finite``, ``max_cache_bytes``, ``share_conditioning``) are those of :class:`CacheConfig`.
    Enabling twice on one model is an error (disable first); so is a cache estimated to exceed ``max_cache_bytes``, and
    a profile enabled part-way through a generation. With a profile, every generation is checked
    against the setup it records (steps, resolution, and the guidance mode where the pipeline says
    its scale); ``run`` (the :class:`~rfcache.runtime.runspec.RunSpec` about to run) is checked now.

    On a two-expert pipeline (Wan 2.2: ``transformer`` and ``transformer_2``) each expert gets its own
    session (the first one is returned): a two-expert profile's schedule is replayed by each on the
    steps it runs; a method starts afresh on each expert; a parameter may be given per expert as
    ``{"transformer": ..., "transformer_2": ...}``. A one-transformer profile is refused there, and
    the reverse.

    ``compile=True`` runs a fixed schedule (a profile, or an interval method) under
    ``torch.compile`` in two compiled variants, full step and cached step, with no recompilation
    on later generations of the same shape (compile.py); ``cuda_graphs=True`` (CUDA only) also
    captures each variant as a CUDA graph and replays it. A per-unit profile is compiled
    regionally: each unit class's forward and the predictor's forecast once, reused by every block
    and step (regional.py).

    Example:
        >>> pipe = rfcache.load_pipeline("toy")
        >>> rfcache.enable(pipe, method="taylorseer", interval=4, order=2)
        >>> images = pipe(class_labels=[3], generator=torch.Generator().manual_seed(0)).images
        >>> print(rfcache.summary(pipe))
    """
    names = {f.name for f in dataclasses.fields(CacheConfig)} - {"method"}
    unknown = sorted(set(params) - names)
    if unknown:
        expected = ", ".join(sorted(names))
        raise RfcacheError(f"unknown caching parameter(s) {', '.join(unknown)}; expected some of {expected}")
    if profile is not None:
        fixed = (["method"] if method is not None else []) + sorted(set(params) & _PROFILE_FIXED)
        if fixed:
            raise RfcacheError(
                f"a profile fixes the method and its schedule; {', '.join(fixed)} would contradict it "
                "(give a profile or a method with its parameters, not both)"
            )
    method = method or "rfc"
    experts = expert_models(pipe_or_model)
    scheduler = getattr(pipe_or_model, "scheduler", None)
    if profile is not None:
        profile = profile if isinstance(profile, Profile) else load_profile(profile)
        check_profile_experts(profile, pipe_or_model)
        if run is not None and scheduler is not None:
            profile.check_setup(run_setup(pipe_or_model, run))
    static = profile is not None or method == "static"
    mask = params.get("mask")
    num_steps = len(mask) if isinstance(mask, (tuple, list)) else None
    first_steps = expert_first_steps(pipe_or_model, profile, static=static, num_steps=num_steps)
    sessions: list[CacheSession] = []
    try:
        for i, ((_, model), own) in enumerate(
            zip(experts, split_expert_params(params, [c for c, _ in experts]), strict=True)
        ):
            expert_profile = None if profile is None else profile.for_expert(i)
            sessions.append(
                _enable_model(pipe_or_model, model, expert_profile, method, compile, cuda_graphs, first_steps[i], own)
            )
    except BaseException:
        for session in sessions:
            _disable_model(session.model)
        raise
    return sessions[0]


def _enable_model(
    pipe_or_model: Any,
    model: torch.nn.Module,
    profile: Profile | None,
    method: str,
    compile: bool,
    cuda_graphs: bool,
    first_step: int,
    params: dict[str, Any],
) -> CacheSession:
    """Attach one session to ``model`` (a pipeline's transformer, or one of its experts)."""
    adapter = get_adapter(model)
    if getattr(model, _SESSION_ATTR, None) is not None:
        raise RfcacheError(f"caching is already enabled on this {type(model).__name__}; call rfcache.disable first")
    if has_unit_hooks(model):
        raise RfcacheError(f"this {type(model).__name__} is hooked by another rfcache feature (a trace recording?)")
    scheduler = getattr(pipe_or_model, "scheduler", None)
    if profile is None:
        config = CacheConfig(method=method, **params)
    else:
        config = profile_config(model, adapter, profile, scheduler, **params)
    pipeline = None if isinstance(pipe_or_model, torch.nn.Module) else pipe_or_model
    session = CacheSession(
        model, adapter, config, profile=profile, scheduler=scheduler, pipeline=pipeline, first_step=first_step
    )
    if cuda_graphs and not compile:
        raise RfcacheError("cuda_graphs=True needs compile=True (the CUDA graphs capture the compiled variants)")
    compiled: CompiledSchedule | RegionalSchedule | None = None
    if compile:  # one whole-forward variant per step kind, unless a per-unit schedule has more than dynamo keeps
        whole = compiled_step_kinds(config) <= max_step_kinds()
        compiled = (CompiledSchedule if whole else RegionalSchedule)(session, cuda_graphs=cuda_graphs)  # refuses first
    session.attach()
    if compiled is not None:
        compiled.attach()
        session.compiled = compiled
    try:
        session._use_group(context_group(model))  # what context parallelism cannot do is refused now (parallel.py)
        if config.max_cache_bytes is not None:  # the smallest generation the model can run must fit
            param = next(model.parameters(), None)
            where = {"device": param.device, "dtype": param.dtype} if param is not None else {}
            example = adapter.example_inputs(model, batch=1, **where)
            session.check_memory((), example, branches=1, context="one sample at the model's configured size")
    except BaseException:
        session.detach()
        raise
    setattr(model, _SESSION_ATTR, session)
    return session


def profile_config(
    model: torch.nn.Module, adapter: BlockAdapter, profile: Profile, scheduler: Any = None, **params: Any
) -> CacheConfig:
    """The static-schedule config that replays ``profile`` on ``model``; refuses a mismatched model
    or scheduler with one line naming the mismatch."""
    granularity = profile.model.granularity
    profile.check_model(model_identity(model, adapter, granularity))
    if scheduler is not None:
        profile.check_sampling(scheduler=type(scheduler).__name__)
    calibrated = bool(profile.method.params.get("calibrated")) and bool(profile.ratios)
    # a per-unit profile's rows by the adapter's unit paths (a name the model lacks is refused)
    paths = [unit.path for unit in adapter.units(model, granularity)]
    return CacheConfig(
        method="static",
        predictor=profile.method.predictor,
        order=profile.method.order,
        mask=profile.mask,
        unit_masks=profile.unit_masks(paths) if profile.per_unit else None,
        ratios=profile.ratios if calibrated else None,
        ratio_slopes=profile.ratio_slopes if calibrated and profile.ratio_slopes else None,
        granularity=granularity,
        **params,
    )


def get_session(pipe_or_model: Any) -> CacheSession:
    """The active session of ``pipe_or_model``'s transformer; an error if caching is not enabled."""
    model = get_transformer(pipe_or_model)
    session = getattr(model, _SESSION_ATTR, None)
    if session is None:
        raise RfcacheError(f"caching is not enabled on this {type(model).__name__}; call rfcache.enable first")
    return session


def disable(pipe_or_model: Any) -> None:
    """Remove every hook and cached tensor (of both experts of a two-expert pipeline): the model
    behaves exactly as before ``enable``."""
    for _, model in expert_models(pipe_or_model):
        _disable_model(model)


def _disable_model(model: torch.nn.Module) -> None:
    session = getattr(model, _SESSION_ATTR, None)
    if session is not None:
        session.detach()
        delattr(model, _SESSION_ATTR)


def summary(pipe_or_model: Any) -> CacheSummary:
    """Counts of the last generation: steps, full steps, pattern, FLOP fraction, fallbacks (over both
    experts of a two-expert pipeline, their patterns joined in step order)."""
    sessions = [getattr(model, _SESSION_ATTR, None) for _, model in expert_models(pipe_or_model)]
    if any(session is None for session in sessions):
        get_session(pipe_or_model)  # the error naming the model
        raise RfcacheError(
            "caching is enabled on only one expert of this pipeline; call rfcache.enable on the pipeline"
        )
    return combine_summaries([session.summary() for session in sessions])
