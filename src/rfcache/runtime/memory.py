"""How many bytes a cache will hold, estimated before anything is cached.

What a session keeps per unit and CFG branch once a generation has had enough full steps:

- the divided differences ``D_0 .. D_m`` of every output tensor of the unit: ``m + 1`` copies of
  the output (``m`` = the order; one copy for ``reuse``);
- for the ``relational`` predictor, the unit's input at the last full step: one copy of the input;
- for the ``dynamic`` policy, per branch, ``m + 1`` copies of the first unit's input.

The unit shapes come from a *shape-only* forward of the transformer on the real call's inputs
(PyTorch's fake tensors: no memory, no arithmetic), so every family's units are measured the same
way, exactly, whatever their layout. The per-sample ratios and Python objects are left out (a few
bytes per unit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rfcache.errors import RfcacheError

__all__ = [
    "CacheMemoryError",
    "UnitFootprint",
    "estimate_cache_bytes",
    "format_bytes",
    "shape_only_forward",
    "tensor_shapes",
]


class CacheMemoryError(RfcacheError, ValueError):
    """The cache would exceed ``max_cache_bytes``, or its size cannot be estimated."""


@dataclass(frozen=True)
class UnitFootprint:
    """Bytes of one unit call's input tensor and of all its output tensors together."""

    input_bytes: int
    output_bytes: int


def estimate_cache_bytes(footprints: list[UnitFootprint], *, predictor: str, order: int, policy: str) -> int:
    """Bytes of cached tensors one CFG branch holds (see the module docstring for what is counted)."""
    copies = 1 if predictor == "reuse" else order + 1
    total = 0
    for f in footprints:
        total += copies * f.output_bytes + (f.input_bytes if predictor == "relational" else 0)
    if policy == "dynamic" and footprints:
        total += (order + 1) * footprints[0].input_bytes
    return total


def shape_only_forward(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run ``model(*args, **kwargs)`` on fake tensors: every shape is computed, no memory is used.

    Hooks on the model run as usual, so a caller can read the unit shapes off them.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode  # what torch.export traces with

    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
        to_fake = _mapper(lambda t: mode.from_tensor(t))
        model(*to_fake(args), **to_fake(kwargs))


def tensor_shapes(obj: Any) -> str:
    """The shapes and dtypes of every tensor in a call's arguments: a key for what was estimated."""
    return repr(_mapper(lambda t: (tuple(t.shape), t.dtype))(obj))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _mapper(fn: Callable[[torch.Tensor], Any]) -> Callable[[Any], Any]:
    def apply(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return fn(obj)
        if isinstance(obj, dict):
            return {k: apply(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(apply(v) for v in obj)
        return obj

    return apply
