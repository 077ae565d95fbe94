"""Step graphs: the transformer at a full step and at a cached step, as modules torch can export.

Both wrap the unmodified transformer and route every unit through a named hook (the runtime's own
mechanism), so the graphs hold exactly what the PyTorch runtime computes:

- **full step**: every unit runs; its output refreshes the Taylor differences against the previous
  full step's state (``distance`` steps earlier) and, for the relational predictor, the input at
  the full step and the ratio ``s``. Inputs: the transformer's inputs, ``distance``, the previous
  state. Outputs: the model output, then the new state.
- **cached step**: no unit runs. Each unit's output is predicted from the state and the step's
  ``coeffs`` (``k^i / i!``, 0 beyond the order available at that step), so one graph serves every
  cached step whatever ``k`` is; the skeleton (embeddings, norms, modulation, gates, residual adds,
  final layer) runs exactly. Inputs: the transformer's inputs, ``coeffs``, the state. Output: the
  model output. The units' weights are not in this graph. Calibrated ratios are baked in; a
  step-linear one (a profile's ``ratio_form``) as its per-unit intercept and slope, with the step's
  position (``rfcache.schedules.ratio_position``) as one more, last, entry of ``coeffs``, so the
  graph computes ``s = a + b * position`` as the PyTorch runtime does.

State tensors are named ``u{unit}.o{output}.d{i}`` (difference ``D_i``), ``u{unit}.in`` (input at
the last full step), ``u{unit}.o{output}.s`` (run-time ratio) and ``u{unit}.o{output}.g{i}{j}``
(per-sample ``<D_i, D_j>``, so a cached step needs no pass to get the norm of the change term;
predictors.gram_relational_forecast); their order is the units' call order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rfcache.models import BlockAdapter, CacheUnit, Granularity
from rfcache.models.hooks import attach_unit_hooks, detach_unit_hooks
from rfcache.runtime.predictors import (
    difference_gram,
    gram_relational_forecast,
    relation_ratio,
    update_differences,
    weighted_sum,
)

__all__ = ["MODEL_OUTPUT", "PredictorSpec", "StateTensor", "StepGraphs"]

MODEL_OUTPUT = "sample"
_HOOK = "rfcache-export"


@dataclass(frozen=True)
class PredictorSpec:
    """What the cache state holds: the predictor, its order and any calibrated ratios (per unit;
    with ``ratio_slopes``, step-linear)."""

    predictor: str
    order: int
    ratios: tuple[float, ...] | None = None
    ratio_slopes: tuple[float, ...] | None = None

    @property
    def keep(self) -> int:
        """Highest difference order kept (``D_0..D_keep``)."""
        return 0 if self.predictor == "reuse" else self.order

    @property
    def num_coeffs(self) -> int:
        """Entries of the cached step's ``coeffs``: ``k^i / i!`` for ``i = 0..keep``, then the step's
        position for a step-linear ratio."""
        return self.keep + 1 + (self.ratio_slopes is not None)

    @property
    def runtime_ratio(self) -> bool:
        return self.predictor == "relational" and self.ratios is None


@dataclass(frozen=True)
class StateTensor:
    """One tensor of the cache state: its name, shape and dtype (``float32`` ...)."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class _Layout:
    tensors: int  # how many tensors the unit returns
    positions: tuple[bool, ...]  # which places of a returned tuple hold tensors
    single: bool  # returns a bare tensor


class StepGraphs:
    """Builds the full-step and cached-step modules of one transformer for one predictor."""

    def __init__(
        self,
        model: torch.nn.Module,
        adapter: BlockAdapter,
        spec: PredictorSpec,
        input_names: tuple[str, ...],
        *,
        granularity: Granularity = "module",
        constants: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.adapter, self.spec = model, adapter, spec
        self.input_names = input_names
        self.constants = dict(constants or {})  # non-tensor transformer arguments, baked into the graphs
        self.granularity = granularity
        self.units: list[CacheUnit] = adapter.units(model, granularity)
        self._layouts: dict[int, _Layout] = {}
        self._state_specs: dict[str, StateTensor] = {}

    # -- discovering the state ---------------------------------------------------------------------

    def probe(self, inputs: dict[str, torch.Tensor]) -> None:
        """Run one full step eagerly to learn what each unit returns and the state's shapes."""
        self._state_specs.clear()  # with no known state, the step reads none (a first full step)
        first = next(iter(inputs.values()))
        distance = torch.ones((), device=first.device)  # on the model's device, as every step input
        with torch.no_grad():
            self.full_module()(*[inputs[n] for n in self.input_names], distance, _probe=True)

    @property
    def state(self) -> list[StateTensor]:
        """Every state tensor (what the full step writes and the cached step reads), in order."""
        return list(self._state_specs.values())

    @property
    def full_inputs(self) -> list[StateTensor]:
        """The part of the state a full step reads: ``D_0..D_{m-1}`` and the input at the last full step."""
        return [s for s in self._state_specs.values() if self._is_full_input(s.name)]

    def _is_full_input(self, name: str) -> bool:
        if name.endswith(".in"):
            return self.spec.runtime_ratio  # read only to refresh the run-time ratio
        if name.endswith(".s") or ".g" in name:
            return False
        return int(name.rsplit(".d", 1)[1]) < self.spec.keep

    # -- the modules -------------------------------------------------------------------------------

    def full_module(self) -> torch.nn.Module:
        return _StepModule(self, full=True)

    def cached_module(self) -> torch.nn.Module:
        return _StepModule(self, full=False)

    def _attach(self, call: Callable[[CacheUnit, Callable[..., Any], tuple, dict], Any]) -> None:
        attach_unit_hooks(self.model, self.adapter, call, name=_HOOK, granularity=self.granularity)

    def _detach(self) -> None:
        detach_unit_hooks(self.model, name=_HOOK)

    def _record(self, name: str, tensor: torch.Tensor) -> None:
        self._state_specs[name] = StateTensor(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))

    def _full_unit(
        self, unit: CacheUnit, original: Callable[..., Any], args: tuple, kwargs: dict, ctx: _StepContext
    ) -> Any:
        out = original(*args, **kwargs)
        x = self.adapter.unit_input(self.model, unit, args, kwargs)
        tensors, layout = _flatten(out)
        self._layouts[unit.index] = layout
        u, spec = unit.index, self.spec
        for j, o in enumerate(tensors):
            prev = [ctx.state_in.get(f"u{u}.o{j}.d{i}", torch.zeros_like(o)) for i in range(spec.keep)]
            differences = update_differences(prev, o, ctx.distance, spec.keep)
            for i, d in enumerate(differences):
                ctx.out(f"u{u}.o{j}.d{i}", d)
            if spec.predictor == "relational":
                for (a, b), g in difference_gram(differences).items():
                    ctx.out(f"u{u}.o{j}.g{a}{b}", g)
            if spec.runtime_ratio:
                before = ctx.state_in.get(f"u{u}.in", torch.zeros_like(x))
                ctx.out(f"u{u}.o{j}.s", relation_ratio(o, prev[0], x, before))
        if spec.predictor == "relational":
            ctx.out(f"u{u}.in", x)
        return out

    def _cached_unit(
        self, unit: CacheUnit, original: Callable[..., Any], args: tuple, kwargs: dict, ctx: _StepContext
    ) -> Any:
        u, spec, layout = unit.index, self.spec, self._layouts[unit.index]
        preds = []
        for j in range(layout.tensors):
            diffs = [ctx.state_in[f"u{u}.o{j}.d{i}"] for i in range(spec.keep + 1)]
            if spec.predictor == "reuse":
                preds.append(diffs[0])
            elif spec.predictor == "taylor":
                preds.append(weighted_sum(diffs, ctx.weights()))
            else:
                x = self.adapter.unit_input(self.model, unit, args, kwargs)
                if spec.ratios is not None:
                    ratio = torch.full((x.shape[0],), spec.ratios[u], dtype=torch.float32, device=x.device)
                    if spec.ratio_slopes is not None:
                        assert ctx.coeffs is not None
                        ratio = ratio + spec.ratio_slopes[u] * ctx.coeffs[spec.keep + 1].float()
                else:
                    ratio = ctx.state_in[f"u{u}.o{j}.s"]
                gram = {
                    (a, b): ctx.state_in[f"u{u}.o{j}.g{a}{b}"]
                    for a in range(1, spec.keep + 1)
                    for b in range(a, spec.keep + 1)
                }
                preds.append(gram_relational_forecast(diffs, ctx.weights(), gram, ratio, x, ctx.state_in[f"u{u}.in"]))
        return _unflatten(preds, layout)


@dataclass
class _StepContext:
    state_in: dict[str, torch.Tensor]
    distance: torch.Tensor | None = None
    coeffs: torch.Tensor | None = None
    state_out: dict[str, torch.Tensor] | None = None
    graphs: StepGraphs | None = None
    probing: bool = False

    def weights(self) -> list[Any]:
        """The step's ``coeffs`` with ``D_0``'s weight as the constant 1 it always is (no pass to scale it)."""
        assert self.coeffs is not None and self.graphs is not None
        return [1.0, *self.coeffs.unbind()[1 : self.graphs.spec.keep + 1]]

    def out(self, name: str, tensor: torch.Tensor) -> None:
        assert self.state_out is not None and self.graphs is not None
        self.state_out[name] = tensor
        if self.probing:
            self.graphs._record(name, tensor)


class _StepModule(torch.nn.Module):
    """``forward(*transformer_inputs, distance|coeffs, *state)``; see the module docstring."""

    def __init__(self, graphs: StepGraphs, *, full: bool) -> None:
        super().__init__()
        self.graphs, self.full = graphs, full
        self.transformer = graphs.model

    def forward(self, *tensors: torch.Tensor, _probe: bool = False) -> tuple[torch.Tensor, ...]:
        g = self.graphs
        n = len(g.input_names)
        model_inputs = dict(zip(g.input_names, tensors[:n], strict=True))
        constant = tensors[n]
        names = [s.name for s in (g.full_inputs if self.full else g.state)]
        state_in = dict(zip(names, tensors[n + 1 :], strict=True))
        if self.full:
            ctx = _StepContext(state_in, distance=constant, state_out={}, graphs=g, probing=_probe)
            hook = g._full_unit
        else:
            ctx = _StepContext(state_in, coeffs=constant, graphs=g)
            hook = g._cached_unit
        g._attach(lambda unit, original, args, kwargs: hook(unit, original, args, kwargs, ctx))
        try:
            out = self.transformer(**model_inputs, **g.constants, return_dict=False)[0]
        finally:
            g._detach()
        if not self.full:
            return (out,)
        assert ctx.state_out is not None
        return (out, *(ctx.state_out[s.name] for s in g.state))


def _flatten(out: Any) -> tuple[list[torch.Tensor], _Layout]:
    if isinstance(out, torch.Tensor):
        return [out], _Layout(1, (True,), True)
    if isinstance(out, tuple):
        tensors = [o for o in out if o is not None]
        return tensors, _Layout(len(tensors), tuple(o is not None for o in out), False)
    raise TypeError(f"a cached unit must return a tensor or a tuple of tensors, not {type(out).__name__}")


def _unflatten(tensors: list[torch.Tensor], layout: _Layout) -> Any:
    if layout.single:
        return tensors[0]
    it = iter(tensors)
    return tuple(next(it) if present else None for present in layout.positions)
