"""`export`: bake a profile's fixed pattern and coefficients into an engine bundle.

The transformer is exported as the full-step graph and as the cached-step graph (graphs.py), and
its conditioning modules once more as the conditioning graph, every step's modulation in one pass,
that both step graphs read. The backend (``backends/``: ONNX graphs for ONNX Runtime, AOTInductor
packages, or TensorRT engines built from the ONNX graphs) writes each graph in its format. The
batch axis stays dynamic, so one bundle serves any number of images; the text axis too where the
model and the backend allow it. The example inputs are the transformer's real arguments in a call
of the pipeline (capture.py). For class-conditional pipelines (the embedded model, diffusers'
``DiTPipeline``) the bundle also records the sampler and, where the pipeline has a VAE, a decoder
graph, so ``rfc-run`` generates images from the bundle alone; other families' bundles hold the
transformer's step graphs, run inside their pipeline (``load_bundle(path).into(pipe)``).

A per-unit profile (each unit its own row) exports one step graph per distinct step kind (the set
of units computed at a step, :func:`rfcache.schedules.masks.step_kinds`) instead of the full and
cached graphs; the manifest's ``schedule.kinds`` and ``schedule.step_kinds`` say which kind each
step runs (bundle format version 4).

A two-expert pipeline (Wan 2.2) exports each expert with its part of the profile into a sub-folder
of one bundle (bundle.py), its pattern over the whole trajectory (its own steps are the ones it runs).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rfcache._version import __version__
from rfcache.errors import RfcacheError
from rfcache.export.backends import Backend, get_backend
from rfcache.export.backends.onnx import OPSET
from rfcache.export.bundle import EngineFolder, write_bundle
from rfcache.export.capture import (
    batch_axis,
    captured_inputs,
    only_expert,
    probe_inputs,
    sampling_record,
    setup_record,
)
from rfcache.export.graphs import PredictorSpec, StepGraphs
from rfcache.export.manifest import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    COEFFS,
    CONDITIONING_PREFIX,
    DECODER_INPUT,
    DECODER_OUTPUT,
    DISTANCE,
    MODEL_OUTPUT,
    PER_UNIT_VERSION,
    PREVIOUS,
    PROFILE,
    UNIT_COEFFS,
    TextAxis,
    first_line,
    kind_graph,
)
from rfcache.models import get_adapter, get_transformer
from rfcache.runtime.api import profile_config
from rfcache.runtime.config import CacheConfig
from rfcache.runtime.experts import check_profile_experts, expert_models
from rfcache.runtime.identity import config_hash, input_resolution
from rfcache.runtime.parallel import SINGLE_DEVICE_BUNDLES, refuse_context_parallel
from rfcache.schedules import Profile, load_profile
from rfcache.schedules.masks import effective_pattern, step_kinds

__all__ = ["export"]

logger = logging.getLogger(__name__)

_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class _Options:
    backend: Backend
    fp16: bool
    guidance_scale: float | None


@dataclass
class _Plan:
    """One transformer's export, prepared: what it predicts, its executed pattern and example inputs."""

    graphs: StepGraphs
    spec: PredictorSpec
    pattern: str
    sampling: dict[str, Any] | None
    inputs: dict[str, torch.Tensor]
    axes: dict[str, bool]  # which inputs' first axis is the batch
    rows: list[str] | None = None  # a per-unit profile's rows, in the graphs' unit order

    @property
    def kinds(self) -> list[str] | None:
        """A per-unit profile's step kinds (C/P per unit), in order of first use; None for a step mask."""
        return None if self.rows is None else step_kinds(self.rows)

    @property
    def step_kinds(self) -> list[int] | None:
        """Each step's kind, an index into :attr:`kinds`."""
        if self.rows is None or self.kinds is None:
            return None
        index = {k: i for i, k in enumerate(self.kinds)}
        return [index["".join(r[step] for r in self.rows)] for step in range(len(self.pattern))]


def export(
    pipe: Any,
    profile: Profile | str | Path,
    out: str | Path,
    *,
    backend: str = "onnx",
    fp16: bool = False,
    guidance_scale: float | None = None,
    force: bool = False,
) -> Path:
    """Export ``pipe``'s transformer with ``profile`` into the bundle folder ``out``; returns its path.

    For a pipeline, the graphs' example inputs are the transformer's real arguments, captured from
    a call of the pipeline at the setup the profile records (size, frames, guidance, call
    arguments): text length, attention masks and id tensors are what the pipeline passes. A bare
    transformer is exported from its adapter's example inputs. The bundle records the setup.
    A two-expert pipeline (Wan 2.2) gets one bundle holding each expert's.

    ``backend="aoti"`` writes AOTInductor packages compiled for the model's device instead of ONNX
    graphs; ``backend="tensorrt"`` also builds TensorRT engines from the ONNX graphs (needs the
    ``tensorrt`` extra and a CUDA GPU). Graphs are in the model's dtype; ``fp16`` exports
    half-precision graphs (the model must be on CUDA for ONNX Runtime) or builds FP16 engines.
    ``guidance_scale`` is the runner's default (the pipeline's own default when not given).

    Example:
        >>> pipe = rfcache.load_pipeline("toy")
        >>> rfcache.export(pipe, "toy-b0.4", "bundle/")
        PosixPath('bundle')
    """
    options = _Options(get_backend(backend), fp16, guidance_scale)
    options.backend.require()
    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    if profile.experts is not None or len(expert_models(pipe)) > 1:  # a two-expert pipeline (Wan 2.2)
        if profile.per_unit:
            raise RfcacheError(
                f"profile {profile.name!r}: per-unit profiles of two-expert pipelines run eager and compiled; "
                "their export is not supported yet"
            )
        return _export_experts(pipe, profile, out, options, force=force)
    return _export_engine(pipe, profile, out, options, force=force)


def _plan(pipe: Any, profile: Profile, options: _Options) -> _Plan:
    """The transformer's cache configuration from ``profile``, and its inputs in a real call."""
    model = get_transformer(pipe)
    adapter = get_adapter(model)
    config = profile_config(model, adapter, profile, getattr(pipe, "scheduler", None))
    refuse_context_parallel(model, "exporting a bundle", f"{SINGLE_DEVICE_BUNDLES}; export in one process")
    weights = next(model.parameters())  # an fp16 model gives an fp16 bundle as --fp16 does
    options.backend.check_export(fp16=options.fp16 or weights.dtype == torch.float16, device=weights.device)
    spec = PredictorSpec(config.predictor, config.order, config.ratios, config.ratio_slopes)
    pattern = effective_pattern(profile.schedule, config.min_full_steps)
    sampling = sampling_record(pipe, profile, options.guidance_scale)
    if model is pipe:
        inputs, constants = probe_inputs(model, adapter, sampling), {}
    else:
        inputs, constants = captured_inputs(pipe, profile, sampling)
    profile.check_sampling(resolution=input_resolution(inputs["hidden_states"]))
    batch = int(inputs["hidden_states"].shape[0])
    axes = {n: batch_axis(n, t, batch, adapter) for n, t in inputs.items()}
    graphs = StepGraphs(model, adapter, spec, tuple(inputs), granularity=config.granularity, constants=constants)
    rows = None
    if config.unit_masks is not None:  # in the graphs' unit order, as profile_config gives them
        rows = ["".join("C" if c else "P" for c in row) for row in config.unit_masks]
    return _Plan(graphs, spec, pattern, sampling, inputs, axes, rows)


def _export_engine(pipe: Any, profile: Profile, out: str | Path, options: _Options, *, force: bool) -> Path:
    """One transformer's bundle: its graphs written by the backend, in eval mode (and half precision)."""
    plan = _plan(pipe, profile, options)
    model = plan.graphs.model
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    half = options.fp16 and options.backend.half_graphs  # TensorRT builds FP16 engines from fp32 graphs
    dtype = next(model.parameters()).dtype
    try:
        if half:
            model.half()
            plan.inputs = {k: v.half() if v.is_floating_point() else v for k, v in plan.inputs.items()}
        text = _text_axis(plan.graphs, plan.inputs, options.backend)
        path = write_bundle(out, lambda folder: _fill(folder, pipe, profile, plan, options, text), force=force)
    finally:
        if half:
            model.to(dtype)
        model.train(was_training)
    logger.info("exported %s in %.1f s", path, time.perf_counter() - started)
    return path


def _fill(
    folder: Path,
    pipe: Any,
    profile: Profile,
    plan: _Plan,
    options: _Options,
    text: tuple[TextAxis | None, dict[str, tuple[int, int]]],
) -> dict[str, Any]:
    """Write one transformer's graphs and profile into ``folder``; returns its manifest."""
    graphs, model = plan.graphs, plan.graphs.model
    specs, (axis, text_dims) = _write_graphs(folder, pipe, plan, options.backend, text)
    profile.save(folder / PROFILE)
    args = (profile, plan.spec, plan.pattern, graphs, specs, plan.sampling, options.backend.name, options.fp16)
    manifest = _manifest(model, graphs.adapter, *args)
    if plan.rows is not None:  # which graph each step runs
        manifest["format_version"] = PER_UNIT_VERSION
        units = [u.path for u in graphs.units]
        manifest["schedule"].update(units=units, kinds=plan.kinds, step_kinds=plan.step_kinds)
    manifest["state"] = [
        {"name": s.name, "shape": _symbolic(s.shape, True, text_dims.get(s.name)), "dtype": s.dtype}
        for s in graphs.state
    ]
    # which axes of the shapes above are dynamic; the text axis's length at export and why it is fixed
    manifest["axes"] = {"batch": {"dynamic": True}, "text": None if axis is None else asdict(axis)}
    manifest["setup"] = setup_record(pipe, profile, plan.inputs)
    manifest["device"] = next(model.parameters()).device.type  # aoti packages run only on that device kind
    manifest.update(options.backend.finish(folder, specs, fp16=options.fp16))
    return manifest


def _write_graphs(
    folder: Path,
    pipe: Any,
    plan: _Plan,
    backend: Backend,
    text: tuple[TextAxis | None, dict[str, tuple[int, int]]],
) -> tuple[dict[str, Any], tuple[TextAxis | None, dict[str, tuple[int, int]]]]:
    """The full, cached (conditioning, decoder) graphs' manifest entries, and the text axis they have."""
    graphs, inputs, axes, ext = plan.graphs, plan.inputs, plan.axes, backend.extension
    axis, text_dims = text
    steps: list[tuple[str, bool | tuple[bool, ...]]] = [("full", True), ("cached", False)]
    if plan.kinds is not None:  # a per-unit profile: one graph per step kind, the first every unit computed
        steps = [(kind_graph(i), tuple(c == "C" for c in k)) for i, k in enumerate(plan.kinds)]
    (first, step), *rest = steps
    try:
        specs = {first: _export_graph(graphs, inputs, axes, text_dims, folder / f"{first}{ext}", step, backend)}
    except Exception as exc:  # torch raises many types from export; the text axis then stays fixed
        if not text_dims:
            raise
        assert axis is not None
        axis = replace(axis, dynamic=False, reason=f"no graph with a dynamic text axis: {first_line(exc)}")
        text_dims = {}
        logger.warning("the text axis stays fixed at %d tokens (%s)", axis.tokens, axis.reason)
        specs = {first: _export_graph(graphs, inputs, axes, {}, folder / f"{first}{ext}", step, backend)}
    for name, step in rest:
        specs[name] = _export_graph(graphs, inputs, axes, text_dims, folder / f"{name}{ext}", step, backend)
    if graphs.conditioning:
        specs["conditioning"] = _export_conditioning(graphs, inputs, axes, folder / f"conditioning{ext}", backend)
    vae = getattr(pipe, "vae", None)
    if plan.sampling is not None and vae is not None:
        specs["decoder"] = _export_decoder(vae, inputs["hidden_states"], folder / f"decoder{ext}", backend)
        plan.sampling["decode"] = "decoder"
    return specs, (axis, text_dims)


def _export_experts(pipe: Any, profile: Profile, out: str | Path, options: _Options, *, force: bool) -> Path:
    """Each expert of a two-expert ``pipe`` with its part of ``profile``, one sub-folder each, in one bundle."""
    if isinstance(pipe, torch.nn.Module):
        raise RfcacheError(f"profile {profile.name!r} is for a two-expert pipeline; export it from the pipeline")
    check_profile_experts(profile, pipe)
    assert profile.experts is not None
    experts = profile.experts
    min_full = CacheConfig(method="static", predictor=profile.method.predictor, mask=profile.mask).min_full_steps

    def fill(folder: Path) -> dict[str, Any]:
        entries, patterns, manifests = [], [], []
        for i, ((component, model), expert) in enumerate(zip(expert_models(pipe), experts, strict=True)):
            first, stop = expert.steps
            own = profile.for_expert(i)
            # the expert's session starts with no history: its first steps are full whatever the mask says
            own = dataclasses.replace(
                own, schedule=own.schedule[:first] + effective_pattern(own.schedule[first:], min_full)
            )
            with only_expert(pipe, component, model):
                _export_engine(pipe, own, folder / component, options, force=False)
            sub = EngineFolder.load(folder / component)
            manifests.append(sub.manifest)
            patterns.append(sub.pattern[first:stop])
            entries.append({"component": component, "steps": [first, stop], "bundle": component})
        profile.save(folder / PROFILE)
        return _experts_manifest(profile, manifests[0], "".join(patterns), entries)

    return write_bundle(out, fill, force=force)


def _experts_manifest(
    profile: Profile, first: dict[str, Any], pattern: str, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    """A two-expert bundle's manifest: the first expert's versions and model, the whole pattern, the experts."""
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": first["versions"],
        "backend": first["backend"],
        "precision": first["precision"],
        "model": first["model"],
        "schedule": {
            "mask": profile.schedule,
            "pattern": pattern,
            "nfc": pattern.count("C"),
            "flops_fraction": profile.budget.achieved,
        },
        "sampling": {"recipe": "transformer-only"},
        "setup": {**first.get("setup", {}), "boundary_step": profile.sampling.boundary_step},
        "experts": entries,
    }


def _step_io(
    graphs: StepGraphs, step: bool | tuple[bool, ...], like: torch.Tensor
) -> tuple[torch.nn.Module, tuple[str, torch.Tensor], list[tuple[str, Any]], list[str]]:
    """A step graph's module, its constant input (name, example), state inputs (input name, spec) and
    output names: the full step (``step`` True), the cached step (False) or a step kind (which units
    compute)."""
    dtype, device = next(graphs.model.parameters()).dtype, like.device
    if step is True:
        constant = (DISTANCE, torch.ones((), dtype=dtype, device=device))
        reads = [(f"{PREVIOUS}{s.name}", s) for s in graphs.full_inputs]
        return graphs.full_module(), constant, reads, [MODEL_OUTPUT, *(s.name for s in graphs.state)]
    if step is False:
        constant = (COEFFS, torch.ones(graphs.spec.num_coeffs, dtype=dtype, device=device))
        return graphs.cached_module(), constant, [(s.name, s) for s in graphs.state], [MODEL_OUTPUT]
    constant = (UNIT_COEFFS, torch.ones(len(graphs.units), graphs.spec.num_coeffs, dtype=dtype, device=device))
    outputs = [MODEL_OUTPUT, *(s.name for s in graphs.kind_writes(step))]
    return graphs.kind_module(step), constant, graphs.kind_reads(step), outputs


def _export_graph(
    graphs: StepGraphs,
    inputs: dict[str, torch.Tensor],
    axes: dict[str, bool],
    text_dims: dict[str, tuple[int, int]],
    path: Path,
    step: bool | tuple[bool, ...],
    backend: Backend,
) -> dict[str, Any]:
    """One step graph (``step``: full, cached, or a step kind) written by ``backend``; its manifest entry."""
    names = list(graphs.input_names)
    model_args = [inputs[n] for n in names]
    module, constant, reads, outputs = _step_io(graphs, step, model_args[0])
    device = model_args[0].device
    state = [s for _, s in reads]
    in_names = [*names, constant[0], *(c.name for c in graphs.conditioning), *(n for n, _ in reads)]
    state_args = [
        torch.randn(s.shape, dtype=getattr(torch, s.dtype), device=device) for s in (*graphs.conditioning, *state)
    ]
    args = (*model_args, constant[1], *state_args)
    batched = [axes[n] for n in names] + [False] + [True for _ in state_args]
    state_names = [s.name for s in (*graphs.conditioning, *state)]
    texts = [text_dims.get(n) for n in [*names, constant[0], *state_names]]
    dynamic = [_dynamic(b, t) for b, t in zip(batched, texts, strict=True)]
    with torch.no_grad():
        reference = module(*args)
    backend.save_graph(module, args, (tuple(dynamic),), path, input_names=in_names, output_names=outputs)
    return {
        "file": path.name,
        "inputs": [_spec(n, a, b, t) for n, a, b, t in zip(in_names, args, batched, texts, strict=True)],
        "outputs": [_spec(n, r, True) for n, r in zip(outputs, reference, strict=True)],  # all batched, no text axis
    }


_BATCH = torch.export.Dim("batch", min=1, max=4096)
_TEXT = torch.export.Dim("text", min=2, max=8192)


def _dynamic(batched: bool, text: tuple[int, int] | None) -> dict[int, Any] | None:
    """An input's dynamic axes for ``torch.export``: the batch (axis 0) and the text axis (``text + offset``)."""
    dims: dict[int, Any] = {0: _BATCH} if batched else {}
    if text is not None:
        axis, offset = text
        dims[axis] = _TEXT + offset if offset else _TEXT
    return dims or None


_PROBE_STEPS = 5  # steps in the conditioning graph's example; the axis is dynamic


def _export_conditioning(
    graphs: StepGraphs, inputs: dict[str, torch.Tensor], axes: dict[str, bool], path: Path, backend: Backend
) -> dict[str, Any]:
    """The conditioning graph: (every step's timestep, the condition inputs) -> every step's ``c.*``."""
    timestep = graphs.adapter.timestep_arg
    t = inputs[timestep]
    timesteps = t.expand(_PROBE_STEPS, *t.shape).contiguous()  # (steps, batch)
    conditions = [inputs[n] for n in graphs.condition_inputs]
    module = graphs.conditioning_module(inputs)
    steps = torch.export.Dim("steps", min=1, max=10_000)
    dynamic = ({0: steps, 1: _BATCH}, *({0: _BATCH} if axes[n] else None for n in graphs.condition_inputs))
    with torch.no_grad():
        outputs = module(timesteps, *conditions)
    names = [c.name for c in graphs.conditioning]
    in_names = [timestep, *graphs.condition_inputs]
    backend.save_graph(module, (timesteps, *conditions), (dynamic,), path, input_names=in_names, output_names=names)

    def stepped(name: str, tensor: torch.Tensor) -> dict[str, Any]:
        spec = _spec(name, tensor[0], True)
        return {**spec, "shape": ["steps", *spec["shape"]]}

    return {
        "file": path.name,
        "inputs": [
            stepped(timestep, timesteps),
            *(_spec(n, c, axes[n]) for n, c in zip(graphs.condition_inputs, conditions, strict=True)),
        ],
        "outputs": [stepped(n, o) for n, o in zip(names, outputs, strict=True)],
    }


def _export_decoder(vae: torch.nn.Module, latents: torch.Tensor, path: Path, backend: Backend) -> dict[str, Any]:
    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(z / self.vae.config.scaling_factor).sample

    channels = vae.config.latent_channels
    z = torch.randn(latents.shape[0], channels, *latents.shape[2:], device=latents.device, dtype=latents.dtype)
    with torch.no_grad():
        image = Decode()(z)
    names = {"input_names": [DECODER_INPUT], "output_names": [DECODER_OUTPUT]}
    backend.save_graph(Decode().eval(), (z,), ({0: _BATCH},), path, **names)
    return {
        "file": path.name,
        "inputs": [_spec(DECODER_INPUT, z, True)],
        "outputs": [_spec(DECODER_OUTPUT, image, True)],
    }


def _spec(name: str, t: torch.Tensor, batched: bool, text: tuple[int, int] | None = None) -> dict[str, Any]:
    return {"name": name, "shape": _symbolic(t.shape, batched, text), "dtype": str(t.dtype).removeprefix("torch.")}


def _symbolic(shape: Any, batched: bool, text: tuple[int, int] | None = None) -> list[int | str]:
    """A shape as the manifest writes it: ``"batch"`` for the batch axis, ``"text"`` (``"text+K"``:
    text and ``K`` image tokens) for the text axis."""
    out: list[int | str] = [int(d) for d in shape]
    if batched and out:
        out[0] = "batch"
    if text is not None:
        axis, offset = text
        out[axis] = f"text+{offset}" if offset else "text"
    return out


def _text_axis(
    graphs: StepGraphs, inputs: dict[str, torch.Tensor], backend: Backend
) -> tuple[TextAxis | None, dict[str, tuple[int, int]]]:
    """Probe the step at the text length of ``inputs`` and one token longer: the text axis, and where
    it lies (axis, offset from the text length) in each input and state tensor that has it.

    Leaves ``graphs`` probed at ``inputs``. The axis stays fixed, with the reason, where another
    length does not run or a tensor's size does not follow it one to one.
    """
    where = {n: a for n, a in graphs.adapter.text_inputs.items() if n in inputs}
    if not where:
        graphs.probe(inputs)
        return None, {}
    tokens = int(inputs[next(iter(where))].shape[next(iter(where.values()))])

    def fixed(reason: str) -> tuple[TextAxis, dict[str, tuple[int, int]]]:
        graphs.probe(inputs)
        return TextAxis(tokens, where, False, reason), {}

    if backend.fixed_text is not None:
        return fixed(backend.fixed_text)
    longer = {n: torch.cat([t, t.narrow(where[n], 0, 1)], where[n]) if n in where else t for n, t in inputs.items()}
    try:
        graphs.probe(longer)
    except Exception as exc:  # any failure of the model's own code at another length
        return fixed(f"the transformer does not run at {tokens + 1} text tokens: {first_line(exc)}")
    shapes = {s.name: s.shape for s in (*graphs.state, *graphs.conditioning)}
    graphs.probe(inputs)
    dims = {n: (a, 0) for n, a in where.items()}
    for s in (*graphs.state, *graphs.conditioning):
        changed = [i for i, (a, b) in enumerate(zip(s.shape, shapes[s.name], strict=True)) if a != b]
        if not changed:
            continue
        axis = changed[0]
        offset = s.shape[axis] - tokens
        if len(changed) > 1 or shapes[s.name][axis] != s.shape[axis] + 1 or offset < 0:
            return fixed(f"{s.name}'s shape {list(s.shape)} does not follow the text length one to one")
        if s.name.startswith(CONDITIONING_PREFIX):  # pooled text only: checked, never expected
            return fixed(f"the conditioning output {s.name} depends on the text length")
        dims[s.name] = (axis, offset)
    return TextAxis(tokens, where, True), dims


def _manifest(
    model: torch.nn.Module,
    adapter: Any,
    profile: Profile,
    spec: PredictorSpec,
    pattern: str,
    graphs: StepGraphs,
    specs: dict[str, Any],
    sampling: dict[str, Any] | None,
    backend: str,
    fp16: bool,
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "rfcache": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": OPSET,
        },
        "backend": backend,
        "precision": "fp16" if fp16 else _PRECISION.get(next(model.parameters()).dtype, "fp32"),
        "model": {
            "family": adapter.family,
            "class_name": type(model).__name__,
            "config_hash": config_hash(model.config),
            "num_units": len(graphs.units),
        },
        "predictor": {
            "kind": spec.predictor,
            "order": spec.order,
            "calibrated_ratios": spec.ratios is not None,
            # how the cached graph's coeffs end: a step-linear ratio adds the step's position
            "ratio_form": "step-linear" if spec.ratio_slopes is not None else "constant",
        },
        "schedule": {
            "mask": profile.schedule,
            "pattern": pattern,
            "nfc": pattern.count("C"),
            "flops_fraction": profile.budget.achieved,
        },
        "graphs": specs,
        "sampling": sampling if sampling is not None else {"recipe": "transformer-only"},
    }
