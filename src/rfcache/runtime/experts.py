"""Two-expert pipelines (Wan 2.2): ``transformer`` runs the high-noise steps, ``transformer_2`` the rest.

diffusers' ``WanPipeline`` switches experts where the timestep falls below
``boundary_ratio * scheduler.config.num_train_timesteps``; with ``boundary_ratio`` None (Wan 2.1,
Wan 2.2 TI2V-5B) ``transformer`` runs every step. rfcache treats each expert as its own schedule
within one profile: each gets its own session, and the second one's session counts steps from the
boundary step (its ``first_step``), so a profile's whole-trajectory schedule indexes the same steps
in both. Nothing crosses the switch: each expert's cache starts empty at its first step.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.models import get_transformer
from rfcache.schedules import Profile, ProfileError

__all__ = [
    "EXPERT_COMPONENTS",
    "boundary_step",
    "check_both_experts_run",
    "check_profile_experts",
    "expert_first_steps",
    "expert_models",
    "split_expert_params",
]

EXPERT_COMPONENTS = ("transformer", "transformer_2")


def expert_models(pipe_or_model: Any) -> list[tuple[str, torch.nn.Module]]:
    """``(component, transformer)`` per expert that runs steps: one pair, or two on a pipeline with a
    ``boundary_ratio`` and both transformers."""
    if isinstance(pipe_or_model, torch.nn.Module) or not _has_two_experts(pipe_or_model):
        return [("transformer", get_transformer(pipe_or_model))]
    return [(name, getattr(pipe_or_model, name)) for name in EXPERT_COMPONENTS]


def boundary_step(pipe: Any, num_steps: int) -> int | None:
    """The first step ``transformer_2`` runs at ``num_steps`` steps (as the pipeline computes it from
    its scheduler's timesteps); None for a one-transformer pipeline."""
    if isinstance(pipe, torch.nn.Module) or not _has_two_experts(pipe):
        return None
    scheduler = copy.deepcopy(pipe.scheduler)  # set_timesteps changes the scheduler's state
    scheduler.set_timesteps(num_steps)
    boundary = pipe.config.boundary_ratio * scheduler.config.num_train_timesteps
    return sum(1 for t in scheduler.timesteps if float(t) >= boundary)


def check_both_experts_run(pipe: Any, num_steps: int) -> None:
    """Refuse a step count at which one expert of a two-expert pipeline runs every step (a profile
    of two experts needs steps on both)."""
    step = boundary_step(pipe, num_steps)
    if step is not None and not 0 < step < num_steps:
        raise RfcacheError(
            f"{type(pipe).__name__}: at {num_steps} steps one expert runs every step (boundary_ratio "
            f"{pipe.config.boundary_ratio}); use more steps so both transformers run"
        )


def expert_first_steps(pipe: Any, profile: Profile | None, *, static: bool, num_steps: int | None) -> list[int]:
    """Per expert, the step its session counts from: the boundary for the second expert of a fixed
    (whole-trajectory) schedule, else 0 (a method such as TaylorSeer starts afresh on each expert)."""
    experts = expert_models(pipe)
    if len(experts) == 1 or not static:
        return [0] * len(experts)
    if profile is not None and profile.experts is not None:
        return [e.steps[0] for e in profile.experts]
    if num_steps is None:
        raise RfcacheError("a fixed mask on a two-expert pipeline needs its step count (the mask's length)")
    return [0, int(boundary_step(pipe, num_steps) or 0)]


def check_profile_experts(profile: Profile, pipe: Any) -> None:
    """Refuse a one-transformer profile on a two-expert pipeline and the reverse, in one line."""
    found = [name for name, _ in expert_models(pipe)]
    wanted = [e.component for e in profile.experts] if profile.experts is not None else ["transformer"]
    if len(found) == len(wanted) == 1:
        return
    if found != wanted:
        raise ProfileError(
            f"profile {profile.name!r} is for {_describe(wanted)}; this {type(pipe).__name__} has "
            f"{_describe(found)}: calibrate a profile on this pipeline"
        )


def split_expert_params(params: dict[str, Any], components: list[str]) -> list[dict[str, Any]]:
    """Per expert, the caching parameters: a value given as ``{component: value}`` goes to that expert."""
    per_expert: list[dict[str, Any]] = [{} for _ in components]
    for key, value in params.items():
        if isinstance(value, dict) and set(value) <= set(EXPERT_COMPONENTS) and value:
            missing = [c for c in components if c not in value]
            if missing:
                raise RfcacheError(f"caching parameter {key!r} is given per expert but not for {', '.join(missing)}")
            for i, c in enumerate(components):
                per_expert[i][key] = value[c]
        else:
            for p in per_expert:
                p[key] = value
    return per_expert


def combine_summaries(summaries: list[Any]) -> Any:
    """One summary of a generation over several experts: patterns joined in step order, counts added."""
    first = summaries[0]
    if len(summaries) == 1:
        return first
    branches = max(len(s.patterns) for s in summaries)
    patterns = tuple(
        "".join(s.patterns[min(b, len(s.patterns) - 1)] for s in summaries if s.patterns) for b in range(branches)
    )
    main = patterns[0] if patterns else ""
    totals = {
        name: sum(getattr(s, name) for s in summaries)
        for name in (
            "total_flops",
            "full_flops",
            "module_flops",
            "computed_module_flops",
            "predictor_flops",
            "nonfinite_fallbacks",
            "num_calls",
            "shared_conditioning_calls",
        )
    }
    spent = totals["computed_module_flops"] + totals["predictor_flops"]
    return dataclasses.replace(
        first,
        num_steps=len(main),
        num_full_steps=main.count("C"),
        pattern=main if len(set(patterns)) <= 1 else " | ".join(patterns),
        patterns=patterns,
        flops_fraction=spent / totals["module_flops"] if totals["module_flops"] else 1.0,
        unit_patterns=_joined_unit_patterns(summaries),
        **totals,
    )


def _joined_unit_patterns(summaries: list[Any]) -> tuple[str, ...]:
    """Each unit's pattern over the experts in step order (experts with the same units), else the first's."""
    counts = {len(s.unit_patterns) for s in summaries}
    if len(counts) != 1 or not summaries[0].unit_patterns:
        return summaries[0].unit_patterns
    return tuple("".join(rows) for rows in zip(*(s.unit_patterns for s in summaries), strict=True))


def _has_two_experts(pipe: Any) -> bool:
    ratio = getattr(getattr(pipe, "config", None), "boundary_ratio", None)
    return ratio is not None and all(isinstance(getattr(pipe, n, None), torch.nn.Module) for n in EXPERT_COMPONENTS)


def _describe(components: list[str]) -> str:
    if len(components) == 1:
        return "one transformer"
    return f"two experts ({', '.join(components)})"
