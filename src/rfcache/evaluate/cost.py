"""Cost of one generation, measured the same way whatever method (ours or a peer's) is applied.

- **FLOPs**: one ``torch.utils.flop_counter.FlopCounterMode`` around the pipeline call, read
  before and after every call of the transformer, so the count covers exactly the denoising loop's
  transformer work (text encoders and VAE excluded) and yields a per-call profile. Attention runs on
  the math backend so the counter sees its matmuls. The counter counts matmuls, convolutions and
  attention (2 x multiply-adds); elementwise work (norms, residual adds, predictors' arithmetic)
  is not counted, for any method.
- **Cached state**: after every transformer call, the bytes of the distinct tensor storages
  reachable from the method's state objects; the peak over the generation is reported.
- **Wall time**: :func:`time_interleaved` — one process, a warm-up round, methods interleaved.
"""

from __future__ import annotations

import math
import statistics
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Measurement", "measure_generation", "step_fractions", "tensor_bytes", "time_interleaved"]

_MAX_OBJECTS = 200_000


@dataclass
class Measurement:
    """One generation: its images, transformer FLOPs (total and per call), and peak cached-state bytes."""

    images: torch.Tensor
    flops: int
    call_flops: list[int] = field(default_factory=list)
    call_timesteps: list[float | None] = field(default_factory=list)
    state_bytes: int = 0


def measure_generation(
    transformer: torch.nn.Module,
    generate: Callable[[], torch.Tensor],
    *,
    state_roots: Callable[[], Iterable[Any]] | None = None,
) -> Measurement:
    """Run ``generate()`` under one FLOP counter; attribute the FLOPs counted during each call of ``transformer``."""
    calls: list[int] = []
    timesteps: list[float | None] = []
    peak = [0]
    start = [0]

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        start[0] = counter.get_total_flops()
        timesteps.append(_timestep(args, kwargs))

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        calls.append(counter.get_total_flops() - start[0])
        if state_roots is not None:
            peak[0] = max(peak[0], tensor_bytes(state_roots()))

    handles = [
        # first: work done in other pre-hooks (rfcache's shared conditioning pass) counts for this call
        transformer.register_forward_pre_hook(before, with_kwargs=True, prepend=True),
        transformer.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            images = generate()
    finally:
        for handle in handles:
            handle.remove()
    return Measurement(images, sum(calls), calls, timesteps, peak[0])


def _timestep(args: tuple, kwargs: dict) -> float | None:
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if isinstance(t, torch.Tensor) and t.numel():
        return float(t.flatten()[0])
    return float(t) if isinstance(t, int | float) else None


def step_fractions(measured: Measurement, full: Measurement) -> list[float]:
    """Per denoising step, the share of the full-compute step's FLOPs that was spent.

    Consecutive transformer calls with the same timestep (sequential CFG branches) form one step.
    """
    if len(measured.call_flops) != len(full.call_flops):
        raise ValueError(
            f"{len(measured.call_flops)} transformer calls measured, {len(full.call_flops)} at full compute"
        )
    steps: list[tuple[int, int]] = []
    previous: float | None = None
    for i, (spent, ref) in enumerate(zip(measured.call_flops, full.call_flops, strict=True)):
        t = full.call_timesteps[i]
        if steps and t is not None and t == previous:
            steps[-1] = (steps[-1][0] + spent, steps[-1][1] + ref)
        else:
            steps.append((spent, ref))
        previous = t
    return [spent / ref if ref else 1.0 for spent, ref in steps]


def tensor_bytes(roots: Iterable[Any]) -> int:
    """Bytes of the distinct tensor storages reachable from ``roots`` (modules' own weights excluded).

    Walks containers and plain objects' attributes; skips ``nn.Module`` (weights are not cache),
    classes, functions and Python modules.
    """
    seen_objects: set[int] = set()
    seen_storages: set[tuple[int, str]] = set()
    stack = list(roots)
    total = 0
    while stack and len(seen_objects) < _MAX_OBJECTS:
        obj = stack.pop()
        if id(obj) in seen_objects or obj is None or isinstance(obj, str | bytes | int | float | bool):
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            key = (storage.data_ptr(), str(obj.device))
            if key not in seen_storages:
                seen_storages.add(key)
                total += storage.nbytes()
        elif isinstance(obj, torch.nn.Module | type | types.FunctionType | types.MethodType | types.ModuleType):
            continue
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, name, None) for name in obj.__slots__)
    return total


def time_interleaved(
    runs: Sequence[tuple[str, Callable[[], Any], Callable[[], None]]],
    *,
    repeats: int = 3,
    failures: dict[str, str] | None = None,
) -> dict[str, float]:
    """Median seconds of each ``(name, apply, run)``: ``apply()`` (untimed, returns a remover), then ``run()`` timed.

    Round 0 is a warm-up and is discarded; every later round runs every method once, in order,
    so drift of the machine's speed hits all methods alike. With ``failures`` given, a method that
    raises is dropped from later rounds, gets ``nan`` and its error is stored there; else it raises.
    """
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for round_index in range(repeats + 1):
        for name, apply, run in runs:
            if failures is not None and name in failures:
                continue
            try:
                remove = apply()
                try:
                    start = time.perf_counter()
                    run()
                    elapsed = time.perf_counter() - start
                finally:
                    if callable(remove):
                        remove()
            except Exception as exc:
                if failures is None:
                    raise
                failures[name] = f"{type(exc).__name__}: {exc}"
                continue
            if round_index:
                times[name].append(elapsed)
    return {name: statistics.median(t) if t else math.nan for name, t in times.items()}
