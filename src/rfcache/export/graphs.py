"""Step graphs: the transformer at a full step and at a cached step, and the conditioning every step
reads, as modules torch can export.

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
- **step kind** (a per-unit profile's bundle; ``computed`` says which units run): a computed unit
  runs and refreshes its state as at a full step, a predicted one is predicted as at a cached step,
  each with its own history: the input ``unit_coeffs`` has one row per unit, a computed unit's
  distance to its previous computation in column 0, a predicted unit's ``coeffs``. Inputs: the
  transformer's inputs, ``unit_coeffs``, the computed units' previous state (``prev.``) and the
  predicted units' state. Outputs: the model output, then the computed units' new state. The
  kind with every unit computed is the full step with per-unit distances.
- **conditioning**: what the adapter's ``conditioning_paths`` compute from the timestep and the
  per-sample condition (timestep MLPs, adaLN linears), for many steps in one batched pass (its
  ``shared_conditioning``). Inputs: the timestep argument of every step ``(steps, batch)`` and the
  condition inputs. Outputs: ``c.{path}`` (``c.{path}.{i}`` for a tuple), ``(steps, batch, ...)``.
  Both step graphs take one step's rows of these as inputs, so neither holds the modulation weights.

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

from rfcache.export.manifest import CONDITIONING_PREFIX, PREVIOUS
from rfcache.models import BlockAdapter, CacheUnit, Granularity
from rfcache.models.hooks import attach_module_hooks, attach_unit_hooks, detach_unit_hooks
from rfcache.runtime.outputs import flatten_output, unflatten_output
from rfcache.runtime.predictors import (
    difference_gram,
    gram_relational_forecast,
    kept_differences,
    relation_ratio,
    update_differences,
    weighted_sum,
)

__all__ = ["PredictorSpec", "StateTensor", "StepGraphs"]

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
        return kept_differences(self.predictor, self.order)

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


@dataclass(frozen=True)
class _Layout:
    """What a unit returns (runtime/outputs.py): which places of a tuple hold tensors, or a bare tensor."""

    positions: tuple[bool, ...]
    single: bool

    @property
    def tensors(self) -> int:
        """How many tensors the unit returns."""
        return sum(self.positions)


def _flatten(out: Any) -> tuple[list[torch.Tensor], _Layout]:
    tensors, positions, single = flatten_output(out)
    return tensors, _Layout(positions, single)


def _unflatten(tensors: list[torch.Tensor], layout: _Layout) -> Any:
    return unflatten_output(tensors, layout.positions, layout.single)


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
        self.conditioning_paths = adapter.conditioning_paths(model)
        self._conditioning_layouts: dict[str, _Layout] = {}
        self._conditioning_specs: dict[str, StateTensor] = {}

    # -- discovering the state ---------------------------------------------------------------------

    def probe(self, inputs: dict[str, torch.Tensor]) -> None:
        """Run one full step eagerly to learn what each unit returns and the state's shapes."""
        self._state_specs.clear()  # with no known state, the step reads none (a first full step)
        self._conditioning_specs.clear()  # nor conditioning: its modules run and are recorded
        first = next(iter(inputs.values()))
        distance = torch.ones((), device=first.device)  # on the model's device, as every step input
        with torch.no_grad():
            self.full_module()(*[inputs[n] for n in self.input_names], distance, _probe=True)

    @property
    def state(self) -> list[StateTensor]:
        """Every state tensor (what the full step writes and the cached step reads), in order."""
        return list(self._state_specs.values())

    @property
    def conditioning(self) -> list[StateTensor]:
        """The conditioning modules' outputs, ``c.{path}`` (``c.{path}.{i}`` for a tuple): inputs of
        both step graphs, outputs of the conditioning graph (one row per step and sample)."""
        return list(self._conditioning_specs.values())

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

    def kind_module(self, computed: tuple[bool, ...]) -> torch.nn.Module:
        """A per-unit step kind's module: the units ``computed`` names run, the others are predicted."""
        return _StepModule(self, full=False, computed=computed)

    def kind_reads(self, computed: tuple[bool, ...]) -> list[tuple[str, StateTensor]]:
        """A step kind's state inputs, in state order, with their input names: a computed unit's
        previous state (``prev.``, what a full step reads), a predicted unit's whole state."""
        reads = []
        for s in self._state_specs.values():
            if not computed[_unit_of(s.name)]:
                reads.append((s.name, s))
            elif self._is_full_input(s.name):
                reads.append((f"{PREVIOUS}{s.name}", s))
        return reads

    def kind_writes(self, computed: tuple[bool, ...]) -> list[StateTensor]:
        """A step kind's state outputs: the computed units' new state, in state order."""
        return [s for s in self._state_specs.values() if computed[_unit_of(s.name)]]

    def conditioning_module(self, example: dict[str, torch.Tensor]) -> torch.nn.Module:
        """``forward(timesteps (steps, batch), *condition_inputs)`` -> every ``c.*`` tensor, ``(steps, batch, ...)``.

        ``example`` gives the dtypes of the step inputs the adapter reads only for their dtype.
        """
        return _ConditioningModule(self, example)

    @property
    def condition_inputs(self) -> tuple[str, ...]:
        """The step inputs the conditioning graph reads besides the timestep (class labels, pooled text ...)."""
        return tuple(n for n in self.adapter.conditioning_inputs if n in self.input_names)

    def _attach(self, call: Callable[[CacheUnit, Callable[..., Any], tuple, dict], Any], ctx: _StepContext) -> None:
        attach_unit_hooks(self.model, self.adapter, call, name=_HOOK, granularity=self.granularity)
        if self.conditioning_paths:
            attach_module_hooks(
                self.model,
                self.conditioning_paths,
                lambda path, original, args, kwargs: self._conditioning(path, original, args, kwargs, ctx),
                name=_HOOK,
            )

    def _conditioning(
        self, path: str, original: Callable[..., Any], args: tuple, kwargs: dict, ctx: _StepContext
    ) -> Any:
        if not ctx.probing:  # the step's rows of the conditioning graph, given as inputs
            layout = self._conditioning_layouts[path]
            return _unflatten([ctx.conditioning[n] for n in _conditioning_names(path, layout)], layout)
        out = original(*args, **kwargs)
        tensors, layout = _flatten(out)
        self._conditioning_layouts[path] = layout
        for name, t in zip(_conditioning_names(path, layout), tensors, strict=True):
            self._conditioning_specs[name] = StateTensor(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
        return out

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
            differences = update_differences(prev, o, ctx.distance_of(u), spec.keep)
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
                preds.append(weighted_sum(diffs, ctx.weights(u)))
            else:
                x = self.adapter.unit_input(self.model, unit, args, kwargs)
                if spec.ratios is not None:
                    ratio = torch.full((x.shape[0],), spec.ratios[u], dtype=torch.float32, device=x.device)
                    if spec.ratio_slopes is not None:
                        ratio = ratio + spec.ratio_slopes[u] * ctx.coeffs_of(u)[spec.keep + 1].float()
                else:
                    ratio = ctx.state_in[f"u{u}.o{j}.s"]
                gram = {
                    (a, b): ctx.state_in[f"u{u}.o{j}.g{a}{b}"]
                    for a in range(1, spec.keep + 1)
                    for b in range(a, spec.keep + 1)
                }
                weights = ctx.weights(u)
                preds.append(gram_relational_forecast(diffs, weights, gram, ratio, x, ctx.state_in[f"u{u}.in"]))
        return _unflatten(preds, layout)


@dataclass
class _StepContext:
    state_in: dict[str, torch.Tensor]
    distance: torch.Tensor | None = None
    coeffs: torch.Tensor | None = None
    state_out: dict[str, torch.Tensor] | None = None
    graphs: StepGraphs | None = None
    probing: bool = False
    conditioning: dict[str, torch.Tensor] | None = None
    unit_coeffs: torch.Tensor | None = None  # a step kind's: one row per unit

    def distance_of(self, unit: int) -> torch.Tensor:
        """Steps since the unit's previous computation: the full step's, or the unit's own (a step kind)."""
        if self.unit_coeffs is not None:
            return self.unit_coeffs[unit, 0]
        assert self.distance is not None
        return self.distance

    def coeffs_of(self, unit: int) -> torch.Tensor:
        """The unit's ``coeffs`` at a cached step: the step's, or the unit's own row (a step kind)."""
        if self.unit_coeffs is not None:
            return self.unit_coeffs[unit]
        assert self.coeffs is not None
        return self.coeffs

    def weights(self, unit: int) -> list[Any]:
        """The unit's ``coeffs`` with ``D_0``'s weight as the constant 1 it always is (no pass to scale it)."""
        assert self.graphs is not None
        return [1.0, *self.coeffs_of(unit).unbind()[1 : self.graphs.spec.keep + 1]]

    def out(self, name: str, tensor: torch.Tensor) -> None:
        assert self.state_out is not None and self.graphs is not None
        self.state_out[name] = tensor
        if self.probing:
            self.graphs._record(name, tensor)


class _StepModule(torch.nn.Module):
    """``forward(*transformer_inputs, distance|coeffs|unit_coeffs, *conditioning, *state)``; see the
    module docstring."""

    def __init__(self, graphs: StepGraphs, *, full: bool, computed: tuple[bool, ...] | None = None) -> None:
        super().__init__()
        self.graphs, self.full, self.computed = graphs, full, computed
        self.transformer = graphs.model

    def forward(self, *tensors: torch.Tensor, _probe: bool = False) -> tuple[torch.Tensor, ...]:
        g = self.graphs
        n = len(g.input_names)
        model_inputs = dict(zip(g.input_names, tensors[:n], strict=True))
        constant = tensors[n]
        c = len(g.conditioning)
        conditioning = dict(zip([s.name for s in g.conditioning], tensors[n + 1 : n + 1 + c], strict=True))
        if self.computed is not None:
            return self._kind(model_inputs, constant, conditioning, tensors[n + 1 + c :])
        names = [s.name for s in (g.full_inputs if self.full else g.state)]
        state_in = dict(zip(names, tensors[n + 1 + c :], strict=True))
        if self.full:
            ctx = _StepContext(state_in, distance=constant, state_out={}, graphs=g, probing=_probe)
            hook = g._full_unit
        else:
            ctx = _StepContext(state_in, coeffs=constant, graphs=g)
            hook = g._cached_unit
        ctx.conditioning = conditioning
        g._attach(lambda unit, original, args, kwargs: hook(unit, original, args, kwargs, ctx), ctx)
        try:
            out = self.transformer(**model_inputs, **g.constants, return_dict=False)[0]
        finally:
            g._detach()
        if not self.full:
            return (out,)
        assert ctx.state_out is not None
        return (out, *(ctx.state_out[s.name] for s in g.state))

    def _kind(
        self,
        model_inputs: dict[str, torch.Tensor],
        unit_coeffs: torch.Tensor,
        conditioning: dict[str, torch.Tensor],
        state: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        """A step kind: the computed units as at a full step, the others as at a cached step."""
        g, computed = self.graphs, self.computed
        assert computed is not None
        state_in = {s.name: t for (_, s), t in zip(g.kind_reads(computed), state, strict=True)}
        ctx = _StepContext(state_in, state_out={}, graphs=g, conditioning=conditioning, unit_coeffs=unit_coeffs)

        def hook(unit: CacheUnit, original: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            run = g._full_unit if computed[unit.index] else g._cached_unit
            return run(unit, original, args, kwargs, ctx)

        g._attach(hook, ctx)
        try:
            out = self.transformer(**model_inputs, **g.constants, return_dict=False)[0]
        finally:
            g._detach()
        assert ctx.state_out is not None
        return (out, *(ctx.state_out[s.name] for s in g.kind_writes(computed)))


class _ConditioningModule(torch.nn.Module):
    """Every step's conditioning in one batched pass (the adapter's ``shared_conditioning``)."""

    def __init__(self, graphs: StepGraphs, example: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.graphs = graphs
        self.transformer = graphs.model
        # inputs the adapter reads only for their dtype: empty tensors, not graph inputs
        self._dtypes = {k: v.dtype for k, v in example.items() if k not in graphs.condition_inputs}

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        g = self.graphs
        timesteps, *conditions = tensors
        steps, batch = timesteps.shape
        device = timesteps.device
        inputs: dict[str, Any] = {k: torch.empty(0, dtype=d, device=device) for k, d in self._dtypes.items()}
        inputs.update(g.constants)  # non-tensor conditions (PixArt's added_cond_kwargs), baked in
        inputs.update(zip(g.condition_inputs, conditions, strict=True))
        out = g.adapter.shared_conditioning(self.transformer, inputs, timesteps.reshape(-1), steps)
        tensors = []
        for path in g.conditioning_paths:
            flat, _ = _flatten(out[path])
            tensors.extend(t.unflatten(0, (steps, batch)) for t in flat)
        return tuple(tensors)


def _unit_of(name: str) -> int:
    """The unit index of a state tensor's name (``u{unit}.…``)."""
    return int(name[1:].split(".", 1)[0])


def _conditioning_names(path: str, layout: _Layout) -> list[str]:
    if layout.single:
        return [f"{CONDITIONING_PREFIX}{path}"]
    return [f"{CONDITIONING_PREFIX}{path}.{i}" for i in range(layout.tensors)]
