"""SmoothCache (Liu et al., 2024) as an ``rfc-bench`` peer, on the package's own caching helper.

SmoothCache reuses a layer's output from the last computed step while the layer type's calibrated
error stays under a threshold ``alpha``: one static schedule per layer type, shared by all blocks.
The ``dit-smoothcache`` wheel (0.1.1) ships ``SmoothCacheHelper`` (wrap named components of given
block classes; a schedule of 1 = compute, 0 = reuse the cached output, per component name) but not
its ``calibration`` package, so the calibration is written here against the paper's method:

1. full-compute generations on the calibration inputs (the same items rfcache's static profile
   calibrates on: :data:`~rfcache.evaluate.methods.CALIBRATION_ITEMS` from the workload's
   calibration prompts or class labels, seeds from 0), recording every cached unit's output;
2. for each layer type (block list + component name: ``attn1``, ``ff``; on Flux ``attn``, ``ff``,
   ``ff_context`` of the double-stream and ``proj_mlp``, ``attn``, ``proj_out`` of the single-stream
   blocks) the relative L1 change ``|O_t - O_{t-k}|_1 / |O_{t-k}|_1`` for every step ``t`` and
   look-back ``k = 1..t``, averaged over the type's blocks, the guidance branches and the inputs;
3. the schedule of a type at ``alpha``: the first and last steps are computed; step ``t`` reuses
   the output of the last computed step ``s`` while ``error(t, t - s) <= alpha``, else it computes.

``alpha`` is the knob the benchmark sweeps to land on the target's FLOP fraction. The units are
the ones rfcache caches (attention and feed-forward), so it can reach low fractions (its stock
``DiffuserCacheHelper`` wraps ``attn1`` only). Pipelines that call the transformer once per
guidance branch (Flux's true CFG) get one helper per branch, chosen by a pre-hook that counts
calls at the same timestep, so each branch has its own step counter and cache. The helper's
``print`` on every wrapped call is silenced while the peer is applied.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from typing import Any

import torch

from rfcache.evaluate.methods import Applied, BenchContext, Target
from rfcache.models import get_adapter, get_transformer

__all__ = ["SMOOTHCACHE_HINT", "apply_smoothcache", "check_smoothcache", "smoothcache_schedule"]

SMOOTHCACHE_HINT = (
    "package dit-smoothcache not installed; install the bench extra with the CPU torch pinned: "
    "pip install 'rfcache[bench]' torch==2.13.0 (pin the torch you have)"
)


def _helper_module() -> Any:
    """``SmoothCache.smooth_cache_helper``, imported without its import-time prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        from SmoothCache import smooth_cache_helper
    return smooth_cache_helper


def check_smoothcache() -> str | None:
    try:
        _helper_module()
    except ImportError:
        return SMOOTHCACHE_HINT
    return None


class _Branches:
    """A transformer pre-hook's count of calls at one timestep: 0 = first guidance branch, 1 = second."""

    def __init__(self) -> None:
        self.branch, self.last = 0, None

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        value = float(torch.as_tensor(t).flatten()[0]) if t is not None else None
        self.branch = self.branch + 1 if value is not None and value == self.last else 0
        self.last = value

    def reset(self) -> None:
        self.branch, self.last = 0, None


def _layer_types(model: torch.nn.Module) -> dict[tuple[str, str], list[str]]:
    """(block list, component name) -> the unit paths of that layer type, in block order."""
    types: dict[tuple[str, str], list[str]] = defaultdict(list)
    for unit in get_adapter(model).units(model, "module"):
        types[(unit.block_list, unit.path.rsplit(".", 1)[1])].append(unit.path)
    return dict(types)


def _flat(output: Any) -> torch.Tensor:
    parts = output if isinstance(output, (tuple, list)) else (output,)
    return torch.cat([p.detach().float().flatten() for p in parts if isinstance(p, torch.Tensor)])


def _relative_l1(outputs: list[torch.Tensor]) -> torch.Tensor:
    """``(N, N)``: entry ``[t, k]`` is ``|O_t - O_{t-k}|_1 / |O_{t-k}|_1`` for ``1 <= k <= t`` (else 0)."""
    stacked = torch.stack(outputs).double()  # (N, D)
    norms = stacked.abs().sum(1).clamp_min(1e-12)  # (N,)
    n = stacked.shape[0]
    errors = torch.zeros(n, n, dtype=torch.float64)
    for k in range(1, n):
        errors[k:, k] = (stacked[k:] - stacked[:-k]).abs().sum(1) / norms[:-k]
    return errors


def _record_errors(pipe: Any, generate: Any, items: list[Any], steps: int) -> dict[tuple[str, str], torch.Tensor]:
    """Mean relative-L1 matrices per layer type over ``items``' full-compute generations."""
    model = get_transformer(pipe)
    types = _layer_types(model)
    branches = _Branches()
    seen: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
    sums: dict[tuple[str, str], torch.Tensor] = {key: torch.zeros(steps, steps, dtype=torch.float64) for key in types}
    counts: dict[tuple[str, str], int] = defaultdict(int)

    def recorder(path: str) -> Any:
        return lambda module, args, output: seen[(path, branches.branch)].append(_flat(output))

    handles = [model.register_forward_pre_hook(branches, with_kwargs=True)]
    handles += [model.get_submodule(p).register_forward_hook(recorder(p)) for paths in types.values() for p in paths]
    try:
        for item in items:
            seen.clear()
            branches.reset()
            with torch.no_grad():
                generate(item)
            for key, paths in types.items():
                for (path, _), outputs in seen.items():
                    if path in paths and len(outputs) == steps:
                        sums[key] += _relative_l1(outputs)
                        counts[key] += 1
    finally:
        for handle in handles:
            handle.remove()
    return {key: sums[key] / max(counts[key], 1) for key in types}


def smoothcache_schedule(errors: torch.Tensor, alpha: float) -> list[int]:
    """SmoothCache's schedule (1 = compute, 0 = reuse) from a layer type's error matrix at ``alpha``."""
    steps = errors.shape[0]
    schedule, last = [1] * steps, 0
    for t in range(1, steps - 1):
        if float(errors[t, t - last]) <= alpha:
            schedule[t] = 0
        else:
            last = t
    return schedule


def _calibration_errors(pipe: Any, ctx: BenchContext) -> dict[tuple[str, str], torch.Tensor]:
    """The error matrices, memoised in the benchmark context (one calibration pass per benchmark)."""
    if "smoothcache_errors" in ctx.memo:
        return ctx.memo["smoothcache_errors"]
    from rfcache.calibrate.api import input_sets
    from rfcache.evaluate.methods import CALIBRATION_ITEMS

    items = list(input_sets(pipe, ctx.prompts, CALIBRATION_ITEMS, seed=0, allow_overlap=True).calibration)

    def generate(item: Any) -> None:
        inputs = {"prompt": [item.prompt]} if item.prompt is not None else {"class_labels": [item.label]}
        generator = torch.Generator().manual_seed(item.seed)
        pipe(**ctx.call, **inputs, num_inference_steps=ctx.steps, generator=generator, output_type="np")

    ctx.memo["smoothcache_errors"] = _record_errors(pipe, generate, items, ctx.steps)
    return ctx.memo["smoothcache_errors"]


def apply_smoothcache(pipe: Any, target: Target, alpha: float | None, ctx: BenchContext) -> Applied:
    """SmoothCache at threshold ``alpha`` on the transformer's attention and feed-forward units."""
    helpers_module = _helper_module()
    errors = _calibration_errors(pipe, ctx)
    model = get_transformer(pipe)
    schedules = {key: smoothcache_schedule(e, float(alpha or 0.0)) for key, e in errors.items()}
    branches = _Branches()
    helpers: list[Any] = []
    restore: list[tuple[torch.nn.Module, Any]] = []
    for block_list in dict.fromkeys(block_list for block_list, _ in schedules):
        names = [name for bl, name in schedules if bl == block_list]
        schedule = {name: schedules[(block_list, name)] for name in names}
        per_branch = [helpers_module.SmoothCacheHelper(model, [], names, schedule) for _ in range(2)]
        helpers += per_branch
        for index, _ in enumerate(getattr(model, block_list)):
            for name in names:
                module = model.get_submodule(f"{block_list}.{index}.{name}")
                restore.append((module, vars(module).get("forward")))
                wrapped = [h.create_wrapped_forward(f"{block_list}.{index}.{name}", module.forward) for h in per_branch]
                module.forward = lambda *a, _w=wrapped, **k: _w[min(branches.branch, 1)](*a, **k)
    handle = model.register_forward_pre_hook(branches, with_kwargs=True)
    helpers_module.print = lambda *args, **kwargs: None  # the helper prints on every wrapped call

    def remove() -> None:
        handle.remove()
        for module, forward in restore:
            del module.forward
            if forward is not None:
                module.forward = forward
        vars(helpers_module).pop("print", None)

    def reset() -> None:
        branches.reset()
        for helper in helpers:
            helper.reset_state()

    fraction = {key: sum(s) / len(s) for key, s in schedules.items()}
    params = {"alpha": float(f"{float(alpha or 0.0):.4g}")}
    params["computed"] = {f"{bl}.{name}": round(f, 3) for (bl, name), f in fraction.items()}
    return Applied(params=params, remove=remove, state_roots=lambda: [h.cache for h in helpers], reset=reset)
