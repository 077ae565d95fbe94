"""What a cached unit returns, taken apart and put back: a bare tensor, or a tuple with ``None`` places.

The session, the compiled step and the export graphs keep a unit's tensors in a flat list and rebuild
the unit's own return value from it with the layout recorded here.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["flatten_output", "unflatten_output"]


def flatten_output(out: Any) -> tuple[list[torch.Tensor], tuple[bool, ...], bool]:
    """A unit's output as ``(tensors, layout, single)``: its tensors in order, which places of a
    returned tuple hold one (``None`` places do not), and whether it is a bare tensor."""
    if isinstance(out, torch.Tensor):
        return [out], (True,), True
    if isinstance(out, tuple):
        return [o for o in out if o is not None], tuple(o is not None for o in out), False
    raise TypeError(f"a cached unit must return a tensor or a tuple of tensors, not {type(out).__name__}")


def unflatten_output(tensors: list[torch.Tensor], layout: tuple[bool, ...] | None, single: bool) -> Any:
    """The inverse of :func:`flatten_output`: ``tensors`` in the unit's own return form."""
    if single:
        return tensors[0]
    it = iter(tensors)
    return tuple(next(it) if present else None for present in (layout or ()))
