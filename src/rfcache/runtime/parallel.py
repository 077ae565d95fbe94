"""Context parallelism: one generation split over the ranks of a group, cached as one device would.

diffusers' context parallelism (``transformer.enable_parallelism(config=ContextParallelConfig(...))``,
Ulysses or Ring) splits the sequence at the model's input: every unit then sees its rank's shard
of the tokens. What a prediction or a decision takes over the sequence is therefore reduced over
the context-parallel group before it is used, so that every rank computes what one device would:

- L2 norms (RFE's ``||I(t-k) - I(t)||``, ``||O(t) - O(t+N)||``, ``||I(t) - I(t+N)||``) as sums of
  squares, the Gram entries ``<D_i, D_j>`` as sums (so ``||d(k)||`` is the whole sequence's);
- RCS's relative L1 error as sums of absolute values (numerator and denominator), and its
  decision agreed by all ranks (full if any rank says full);
- the non-finite guard's flag agreed by all ranks (re-run if any rank saw NaN or inf).

Each is one ``all_reduce`` of a few per-sample floats (the shard's partial sums, stacked), no
tensor of the sequence's size is sent. A sum of per-rank partial sums rounds differently from one
device's sum: predictions agree with one device's to float rounding (about 1e-7 relative in fp32).

Everything else the cache does is per element and needs nothing: Taylor forecasts, reuse, the
divided differences, a static mask. Shared conditioning takes the timestep and the per-sample
condition only (no tokens) and runs before the split. Off context parallelism the reduction is
``None`` and every function takes its one-device path, unchanged.

The group is looked up from the model at every generation's first call (:func:`context_group`),
so parallelism enabled before or after ``rfcache.enable`` both work. Assumed, and true of the
Flux and Wan split plans: every unit's tensors are shards of the sequence (none replicated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rfcache.errors import RfcacheError

__all__ = [
    "SINGLE_DEVICE_BUNDLES",
    "ContextGroup",
    "Reduce",
    "check_units_unsplit",
    "context_group",
    "is_context_parallel",
    "refuse_context_parallel",
]

# why a bundle is refused under context parallelism (export, Bundle.into, rfc-export and rfc-run under torchrun):
# its step graphs are traced whole, without diffusers' split and gather hooks
SINGLE_DEVICE_BUNDLES = "bundles are single-device"

# sums a tensor of per-sample partial sums over the group; None: one device, nothing to reduce
Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ContextGroup:
    """A model's context-parallel process group: what the cache reduces over."""

    group: Any  # torch.distributed.ProcessGroup
    size: int
    rank: int
    mode: str  # "ulysses", "ring" or "ulysses+ring"

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum over the group's ranks of each rank's ``partial`` (the same shape on every rank)."""
        import torch.distributed._functional_collectives as funcol

        out = funcol.all_reduce(partial.contiguous(), "sum", self.group)
        return funcol.wait_tensor(out) if not torch.compiler.is_compiling() else out

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every rank if ``flag`` is true on any rank: one decision for the whole group."""
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item() > 0)


def context_group(model: torch.nn.Module) -> ContextGroup | None:
    """The context-parallel group of ``model`` (diffusers' ``enable_parallelism``), None without one."""
    config = getattr(model, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None:
        return None
    mesh = cp._flattened_mesh
    if mesh is None or mesh.size() == 1:
        return None
    ring, ulysses = cp.ring_degree or 1, cp.ulysses_degree or 1
    mode = "+".join(name for name, degree in (("ulysses", ulysses), ("ring", ring)) if degree > 1)
    return ContextGroup(group=mesh.get_group(), size=mesh.size(), rank=mesh.get_local_rank(), mode=mode)


def check_units_unsplit(model: torch.nn.Module, modules: dict[str, torch.nn.Module], group: ContextGroup) -> None:
    """Refuse units that are themselves where the split plan splits or gathers (Wan's first block at
    ``granularity="block"``): such a unit would see the whole sequence on one side and a shard on the other."""
    for path, module in modules.items():
        registry = getattr(module, "_diffusers_hook", None)
        names = [n for n in getattr(registry, "hooks", {}) if n.startswith(("cp_input", "cp_output"))]
        if names:
            raise RfcacheError(
                f"{type(model).__name__}: the cached unit {path} is where context parallelism ({group.mode}) splits "
                "or gathers the sequence; use granularity='module'"
            )


def is_context_parallel(model: Any) -> bool:
    """Whether ``model`` (a transformer, or a pipeline's) runs under diffusers' context parallelism."""
    from rfcache.models import get_transformer

    try:
        model = model if isinstance(model, torch.nn.Module) else get_transformer(model)
    except Exception:  # not a pipeline we know: then not one we split either
        return False
    return context_group(model) is not None


def refuse_context_parallel(model: Any, what: str, why: str) -> None:
    """One line refusing ``what`` on a model under context parallelism, saying ``why``."""
    if is_context_parallel(model):
        raise RfcacheError(f"{what} is not supported under context parallelism: {why}")
