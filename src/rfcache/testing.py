"""Adapter conformance suite: every `BlockAdapter` must pass it on a tiny model of its family.

Subclass :class:`AdapterConformance` in a test module and implement ``make_model`` (a tiny model
built from a config, no hub access); pytest then collects every ``test_*`` method::

    class TestDiT(AdapterConformance):
        modules_per_block = {"transformer_blocks": 2}

        def make_model(self):
            return DiTTransformer2DModel(num_layers=2, ...)

Needs pytest (the ``dev`` extra).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rfcache.models import BlockAdapter, get_adapter
from rfcache.models.hooks import attach_unit_hooks, detach_unit_hooks, has_unit_hooks

__all__ = ["AdapterConformance", "count_flops", "first_output"]

FLOP_TOLERANCE = 0.05


def first_output(output: Any) -> torch.Tensor:
    """The sample tensor of a transformer's output (``.sample`` or the first tuple element)."""
    if hasattr(output, "sample"):
        return output.sample
    return output[0] if isinstance(output, tuple) else output


def count_flops(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """Measured FLOPs of one forward (total, per module path) with ``FlopCounterMode``.

    Attention runs on the math backend here so the counter sees its matmuls (CPU's fused
    attention kernel is not registered with the counter).
    """
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs)
    prefix = type(model).__name__ + "."
    per_module = {
        name.removeprefix(prefix): sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if name.startswith(prefix)
    }
    return counter.get_total_flops(), per_module


class AdapterConformance:
    """What every adapter must do on a tiny model of its family."""

    #: block list -> number of module units per block (checked when given)
    modules_per_block: ClassVar[dict[str, int]] = {}
    batch: ClassVar[int] = 2

    def make_model(self) -> torch.nn.Module:
        raise NotImplementedError

    @pytest.fixture
    def model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return self.make_model().eval()

    @pytest.fixture
    def adapter(self, model: torch.nn.Module) -> BlockAdapter:
        return get_adapter(model)

    @pytest.fixture
    def inputs(self, model: torch.nn.Module, adapter: BlockAdapter) -> dict[str, Any]:
        return adapter.example_inputs(model, batch=self.batch, generator=torch.Generator().manual_seed(0))

    def test_units_resolve_in_both_granularities(self, model: torch.nn.Module, adapter: BlockAdapter) -> None:
        modules = adapter.units(model, "module")
        blocks = adapter.units(model, "block")
        assert [u.index for u in modules] == list(range(len(modules)))
        for unit in modules + blocks:
            assert isinstance(adapter.resolve(model, unit), torch.nn.Module)
        assert {(u.block_list, u.block_index) for u in modules} == {(u.block_list, u.block_index) for u in blocks}
        per_block = Counter((u.block_list, u.block_index) for u in modules)
        for (block_list, _), count in per_block.items():
            if block_list in self.modules_per_block:
                assert count == self.modules_per_block[block_list], block_list

    def test_units_called_once_in_order_with_hidden_inputs(
        self, model: torch.nn.Module, adapter: BlockAdapter, inputs: dict[str, Any]
    ) -> None:
        for granularity in ("module", "block"):
            seen: list[tuple[int, torch.Size]] = []

            def call(unit, original, args, kwargs, seen=seen):
                x = adapter.unit_input(model, unit, args, kwargs)
                assert isinstance(x, torch.Tensor) and x.ndim == 3, unit.path  # (B, N, D)
                seen.append((unit.index, x.shape))
                out = original(*args, **kwargs)
                if unit.kind == "block":
                    adapter.signature(model, unit.block_list).named_outputs(out)
                return out

            units = attach_unit_hooks(model, adapter, call, name="conformance", granularity=granularity)
            try:
                with torch.no_grad():
                    model(**inputs)
            finally:
                detach_unit_hooks(model, name="conformance")
            assert [i for i, _ in seen] == [u.index for u in units], granularity
            assert all(shape[0] == self.batch for _, shape in seen)

    def test_flops_agree_with_counter(
        self, model: torch.nn.Module, adapter: BlockAdapter, inputs: dict[str, Any]
    ) -> None:
        total, measured = count_flops(model, inputs)
        shape = adapter.step_shape(model, inputs)
        unit_total = 0
        for unit in adapter.units(model, "module"):
            analytic = adapter.unit_flops(model, unit, shape)
            assert analytic == pytest.approx(measured[unit.path], rel=FLOP_TOLERANCE), unit.path
            unit_total += analytic
        for unit in adapter.units(model, "block"):
            assert adapter.unit_flops(model, unit, shape) <= measured[unit.path]
        analytic_total = unit_total + adapter.skeleton_flops(model, shape)
        assert analytic_total == pytest.approx(total, rel=FLOP_TOLERANCE)

    def test_pass_through_hooks_are_bit_exact(
        self, model: torch.nn.Module, adapter: BlockAdapter, inputs: dict[str, Any]
    ) -> None:
        with torch.no_grad():
            reference = first_output(model(**inputs)).clone()
            for granularity in ("module", "block"):
                attach_unit_hooks(model, adapter, lambda u, f, a, k: f(*a, **k), name="exact", granularity=granularity)
                assert has_unit_hooks(model)
                hooked = first_output(model(**inputs))
                detach_unit_hooks(model, name="exact")
                assert not has_unit_hooks(model)
                assert torch.equal(hooked, reference), granularity
            assert torch.equal(first_output(model(**inputs)), reference)

    def test_example_inputs_follow_device_and_dtype(self, model: torch.nn.Module, adapter: BlockAdapter) -> None:
        inputs = adapter.example_inputs(model, batch=1, dtype=torch.float64)
        floats = [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        assert floats and all(v.dtype == torch.float64 for v in floats)
