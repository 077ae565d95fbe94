"""The `BlockAdapter` interface: everything rfcache needs to know about one model family.

An adapter answers, for one family of diffusers transformers: where the block lists are, how a
block is called (`BlockSignature`), which sub-modules are cacheable *units*, how to read a unit's
input (the normalised, modulated hidden state) and output (before the block's gate), and what each
unit and the skeleton around them cost in FLOPs for a given `StepShape`.

Units are found by attribute path, so the runtime wraps exactly the sub-module whose work it
replaces; the block's own forward (norms, modulation, gates, residual adds) always runs unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from rfcache.errors import RfcacheError

__all__ = [
    "BlockAdapter",
    "BlockSignature",
    "CacheUnit",
    "Granularity",
    "StepShape",
    "UnsupportedModelError",
]

Granularity = Literal["module", "block"]


class UnsupportedModelError(RfcacheError, ValueError):
    """The model (or pipeline) has no adapter, or does not match what its adapter expects."""


@dataclass(frozen=True)
class BlockSignature:
    """How the blocks of one block list are called and what they return, by name.

    ``args`` are the forward's parameter names in order (so positional-only callers such as Wan
    and HunyuanVideo can be bound by name); ``outputs`` name the returned values in order, a single
    name when the block returns one tensor. An output may be ``None`` at run time (SD3's last block).
    """

    args: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, forward: Callable[..., Any], outputs: Sequence[str]) -> BlockSignature:
        return _signature_of(forward, tuple(outputs))

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map a call's positional and keyword arguments to parameter names."""
        if len(args) > len(self.args):
            raise TypeError(f"block called with {len(args)} positional arguments; signature has {len(self.args)}")
        bound = dict(zip(self.args, args, strict=False))
        bound.update(kwargs)
        return bound

    def named_outputs(self, output: Any) -> dict[str, Any]:
        """Name a block's return value(s)."""
        if len(self.outputs) == 1:
            return {self.outputs[0]: output}
        if not isinstance(output, tuple) or len(output) != len(self.outputs):
            raise TypeError(f"block returned {type(output).__name__}; expected a {len(self.outputs)}-tuple")
        return dict(zip(self.outputs, output, strict=True))


@dataclass(frozen=True)
class CacheUnit:
    """One cacheable unit: a sub-module (attention, feed-forward, ...) or a whole block.

    ``path`` is the dotted attribute path from the transformer (``transformer_blocks.3.attn1``);
    ``index`` is the unit's position in execution order within one forward.
    """

    index: int
    path: str
    block_list: str
    block_index: int
    kind: str


@dataclass(frozen=True)
class StepShape:
    """What a unit's cost depends on: batch size and token counts of one transformer call."""

    batch: int
    image_tokens: int
    text_tokens: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class BlockAdapter:
    """Base class of the per-family adapters; subclasses fill in the class attributes and hooks.

    Class attributes:
        family: short family name used in profiles and messages (``"dit"``).
        model_classes: exact diffusers class names this adapter handles (matched along the MRO).
        block_lists: attribute names of the block lists, in execution order.
        module_kinds: per block list, the cacheable sub-module attribute paths inside one block.
        taylorseer_warmup: leading full steps of the interval schedules (TaylorSeer's
            ``first_enhance`` for this family where its code publishes one; DiT's 2 otherwise).
    """

    family: ClassVar[str]
    model_classes: ClassVar[tuple[str, ...]]
    block_lists: ClassVar[tuple[str, ...]]
    module_kinds: ClassVar[dict[str, tuple[str, ...]]]
    timestep_arg: ClassVar[str] = "timestep"
    taylorseer_warmup: ClassVar[int] = 2
    # shared conditioning: the transformer inputs the conditioning modules read besides the timestep,
    # and what the pipeline divides the scheduler's timesteps by before passing them (Flux: 1000)
    conditioning_inputs: ClassVar[tuple[str, ...]] = ()
    timestep_divisor: ClassVar[float] = 1.0
    #: transformer inputs without a batch axis (shared by every sample, e.g. Flux's position ids)
    unbatched_inputs: ClassVar[tuple[str, ...]] = ()
    #: transformer inputs with a text token axis, and which axis it is (the export's dynamic text axis)
    text_inputs: ClassVar[dict[str, int]] = {}

    # -- structure -------------------------------------------------------------------------------

    def blocks(self, model: torch.nn.Module, block_list: str) -> torch.nn.ModuleList:
        blocks = getattr(model, block_list, None)
        if not isinstance(blocks, torch.nn.ModuleList):
            raise UnsupportedModelError(
                f"{type(model).__name__}.{block_list} is not a ModuleList; the {self.family} adapter expects one"
            )
        return blocks

    def signature(self, model: torch.nn.Module, block_list: str) -> BlockSignature:
        """The call signature of the blocks in ``block_list``."""
        blocks = self.blocks(model, block_list)
        return BlockSignature.of(type(blocks[0]).forward, self.block_outputs(block_list))

    def block_outputs(self, block_list: str) -> tuple[str, ...]:
        """Names of what a block of ``block_list`` returns, in order."""
        return ("hidden_states",)

    def units(self, model: torch.nn.Module, granularity: Granularity = "module") -> list[CacheUnit]:
        """The cacheable units in execution order."""
        units: list[CacheUnit] = []
        for block_list in self.block_lists:
            blocks = getattr(model, block_list, None)
            if blocks is None:
                continue
            for b, block in enumerate(self.blocks(model, block_list)):
                kinds = ("block",) if granularity == "block" else self.module_kinds_of(block_list, block)
                for kind in kinds:
                    path = f"{block_list}.{b}" if kind == "block" else f"{block_list}.{b}.{kind}"
                    units.append(CacheUnit(len(units), path, block_list, b, kind))
        if not units:
            raise UnsupportedModelError(f"{type(model).__name__} has no blocks in {self.block_lists}")
        return units

    def module_kinds_of(self, block_list: str, block: torch.nn.Module) -> tuple[str, ...]:
        """Sub-module paths of ``block`` that are units; those a block lacks (``None``) are skipped."""
        return tuple(k for k in self.module_kinds[block_list] if _get_path(block, k) is not None)

    def resolve(self, model: torch.nn.Module, unit: CacheUnit) -> torch.nn.Module:
        """The sub-module a unit names."""
        module = _get_path(model, unit.path)
        if not isinstance(module, torch.nn.Module):
            raise UnsupportedModelError(f"{type(model).__name__} has no sub-module {unit.path!r}")
        return module

    # -- reading a unit's input and output ------------------------------------------------------

    def unit_input(
        self, model: torch.nn.Module, unit: CacheUnit, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """The unit's input hidden state from the arguments its forward was called with.

        For a module this is the normalised, modulated hidden state it receives (its first
        argument or ``hidden_states``); for a whole block, the block's ``hidden_states``.
        """
        if unit.kind == "block":
            return self.signature(model, unit.block_list).bind(args, kwargs)["hidden_states"]
        if args:
            return args[0]
        return kwargs["hidden_states"]

    # -- cost -----------------------------------------------------------------------------------

    def step_shape(self, model: torch.nn.Module, inputs: dict[str, Any]) -> StepShape:
        """Batch and token counts of a transformer call with ``inputs`` (its forward kwargs)."""
        raise NotImplementedError

    def unit_flops(self, model: torch.nn.Module, unit: CacheUnit, shape: StepShape) -> int:
        """Analytic FLOPs (2 x multiply-adds of matmuls and attention) of one call of ``unit``.

        A whole block costs the sum of its modules; its modulation stays in the skeleton.
        """
        if unit.kind == "block":
            return sum(self.module_flops(model, u, shape) for u in self.module_units_of(model, unit))
        return self.module_flops(model, unit, shape)

    def module_flops(self, model: torch.nn.Module, unit: CacheUnit, shape: StepShape) -> int:
        """Analytic FLOPs of one call of the sub-module ``unit``."""
        raise NotImplementedError

    def module_units_of(self, model: torch.nn.Module, unit: CacheUnit) -> list[CacheUnit]:
        """The module-granularity units inside a block unit."""
        block = self.blocks(model, unit.block_list)[unit.block_index]
        return [
            CacheUnit(unit.index, f"{unit.path}.{k}", unit.block_list, unit.block_index, k)
            for k in self.module_kinds_of(unit.block_list, block)
        ]

    def skeleton_flops(self, model: torch.nn.Module, shape: StepShape) -> int:
        """Analytic FLOPs of everything outside the units: embeddings, modulation, final layer."""
        raise NotImplementedError

    # -- shared conditioning ---------------------------------------------------------------------

    def conditioning_paths(self, model: torch.nn.Module) -> tuple[str, ...]:
        """Sub-modules whose output is a function of (timestep, condition) only; () if not supported."""
        return ()

    def shared_conditioning(
        self, model: torch.nn.Module, inputs: dict[str, Any], timesteps: torch.Tensor, steps: int
    ) -> dict[str, Any]:
        """Every :meth:`conditioning_paths` module's output for ``steps`` steps in one batched pass.

        ``inputs`` are the transformer's call arguments at the first step, ``timesteps`` the
        timestep argument of every step, step-major, shape ``(steps * B,)``. Each output has
        ``steps * B`` rows (or is a tuple of such tensors), in the same order: row ``s * B + b`` is
        what the module returns for sample ``b`` at step ``s``.
        """
        raise NotImplementedError

    # -- examples -------------------------------------------------------------------------------

    def example_inputs(
        self,
        model: torch.nn.Module,
        *,
        batch: int = 2,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, Any]:
        """Keyword arguments for one forward of ``model`` at its configured sample size."""
        raise NotImplementedError


def modulation_outputs(model: torch.nn.Module, paths: Sequence[str], embedding: torch.Tensor) -> dict[str, Any]:
    """``linear(silu(embedding))`` for each adaLN modulation linear in ``paths`` that the model has.

    What diffusers' ``AdaLayerNormZero`` / ``AdaLayerNormZeroSingle`` / ``AdaLayerNormContinuous``
    do with a conditioning embedding before chunking it into shift, scale and gate.
    """
    activated = torch.nn.functional.silu(embedding)
    return {p: _get_path(model, p)(activated) for p in paths if _get_path(model, p) is not None}


def repeat_steps(value: Any, steps: int, batch: int | None = None) -> Any:
    """A per-sample condition ``(B, ...)`` repeated for ``steps`` steps, step-major: ``(steps * B, ...)``.

    ``batch``: the call's batch; a condition of batch 1 is broadcast to it first, as the model's own
    broadcasting does (e.g. Flux's true CFG with one negative prompt for several prompts)."""
    if isinstance(value, torch.Tensor):
        if batch is not None and value.ndim and value.shape[0] == 1 and batch > 1:
            value = value.expand(batch, *value.shape[1:])
        return value.repeat(steps, *([1] * (value.ndim - 1)))
    if isinstance(value, dict):
        return {k: repeat_steps(v, steps, batch) for k, v in value.items()}
    return value


def existing_paths(model: torch.nn.Module, paths: Sequence[str]) -> tuple[str, ...]:
    """The paths of ``paths`` that name a sub-module of ``model``."""
    return tuple(p for p in paths if isinstance(_get_path(model, p), torch.nn.Module))


@functools.lru_cache(maxsize=64)
def _signature_of(forward: Callable[..., Any], outputs: tuple[str, ...]) -> BlockSignature:
    # cached: block-granularity hooks look the signature up on every call
    params = [p for p in inspect.signature(forward).parameters if p != "self"]
    return BlockSignature(args=tuple(params), outputs=outputs)


def _get_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        if obj is None:
            return None
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
    return obj
