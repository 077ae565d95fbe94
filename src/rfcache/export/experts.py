"""Bundles of two-expert pipelines (Wan 2.2): one complete bundle per transformer, in one folder.

A two-expert profile exports to a folder holding the profile, a manifest whose ``experts`` list
says which steps each transformer covers, and one sub-folder per expert (``transformer/``,
``transformer_2/``), each a complete single-transformer bundle with its own graphs, coefficients
and pattern over the whole trajectory (its own steps are the ones it runs). The top manifest
lists and hashes every file, so an altered expert file is refused like any other.
``Bundle.into(pipe)`` puts each expert's engine in place of its transformer, the second counting
steps from the boundary (engine.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.export.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, PROFILE, Bundle, BundleError, write_bundle
from rfcache.runtime.experts import check_profile_experts, expert_models
from rfcache.schedules import Profile

__all__ = ["expert_bundles", "export_experts"]


def export_experts(pipe: Any, profile: Profile, out: str | Path, *, force: bool = False, **options: Any) -> Path:
    """Export each expert of a two-expert ``pipe`` with its part of ``profile`` into the bundle ``out``."""
    from rfcache.export.api import effective_pattern, export
    from rfcache.runtime.config import CacheConfig

    if isinstance(pipe, torch.nn.Module):
        raise RfcacheError(f"profile {profile.name!r} is for a two-expert pipeline; export it from the pipeline")
    check_profile_experts(profile, pipe)
    assert profile.experts is not None
    min_full = CacheConfig(method="static", predictor=profile.method.predictor, mask=profile.mask).min_full_steps

    def fill(folder: Path) -> dict[str, Any]:
        entries, patterns, manifests = [], [], []
        for i, ((component, model), expert) in enumerate(zip(expert_models(pipe), profile.experts, strict=True)):
            first, stop = expert.steps
            own = profile.for_expert(i)
            # the expert's session starts with no history: its first steps are full whatever the mask says
            own = dataclasses.replace(
                own, schedule=own.schedule[:first] + effective_pattern(own.schedule[first:], min_full)
            )
            with _only_expert(pipe, component, model):
                export(pipe, own, folder / component, **options)
            sub = Bundle.load(folder / component)
            manifests.append(sub.manifest)
            patterns.append(sub.pattern[first:stop])
            entries.append({"component": component, "steps": [first, stop], "bundle": component})
        profile.save(folder / PROFILE)
        first_manifest = manifests[0]
        pattern = "".join(patterns)
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": first_manifest["versions"],
            "backend": first_manifest["backend"],
            "precision": first_manifest["precision"],
            "model": first_manifest["model"],
            "schedule": {
                "mask": profile.schedule,
                "pattern": pattern,
                "nfc": pattern.count("C"),
                "flops_fraction": profile.budget.achieved,
            },
            "sampling": {"recipe": "transformer-only"},
            "setup": {**first_manifest.get("setup", {}), "boundary_step": profile.sampling.boundary_step},
            "experts": entries,
        }

    return write_bundle(out, fill, force=force)


def expert_bundles(bundle: Bundle) -> list[tuple[str, int, Bundle]]:
    """``(component, first step, bundle)`` per expert of a two-expert bundle, each verified."""
    return [
        (entry["component"], int(entry["steps"][0]), Bundle.load(bundle.path / entry["bundle"]))
        for entry in bundle.manifest["experts"]
    ]


def validate_experts(data: dict[str, Any], path: Path) -> None:
    """The ``experts`` list of a two-expert bundle's manifest: components, contiguous steps, sub-folders."""
    experts, schedule = data.get("experts"), data.get("schedule")
    if not isinstance(experts, list) or len(experts) != 2 or not isinstance(schedule, dict):
        raise BundleError(f"{path}: experts must be a list of two entries, with a schedule")
    mask = schedule.get("mask")
    start = 0
    for i, entry in enumerate(experts):
        ok = isinstance(entry, dict) and isinstance(entry.get("component"), str)
        steps = entry.get("steps") if ok else None
        ok = ok and isinstance(steps, list) and len(steps) == 2 and all(type(s) is int for s in steps)
        ok = ok and steps[0] == start and steps[0] < steps[1] and isinstance(entry.get("bundle"), str)
        ok = ok and entry["bundle"] == entry["component"]  # a plain sub-folder name, never a path
        if not ok:
            raise BundleError(
                f"{path}: experts[{i}] must have a component, steps [{start}, stop] and its bundle folder"
            )
        start = steps[1]
    if not isinstance(mask, str) or start != len(mask):
        raise BundleError(f"{path}: the experts' steps must cover the schedule's {len(mask or '')} steps")


@contextlib.contextmanager
def _only_expert(pipe: Any, component: str, model: torch.nn.Module) -> Iterator[None]:
    """Within the block ``pipe`` is a one-transformer pipeline running ``model`` at every step, so the
    export captures ``model``'s real arguments (both experts take the same ones)."""
    saved = {name: getattr(pipe, name) for name in ("transformer", "transformer_2")}
    ratio = pipe.config.boundary_ratio
    try:
        pipe.transformer, pipe.transformer_2 = model, None
        pipe.register_to_config(boundary_ratio=None)
        yield
    finally:
        pipe.transformer, pipe.transformer_2 = saved["transformer"], saved["transformer_2"]
        pipe.register_to_config(boundary_ratio=ratio)
