"""`export`: bake a profile's fixed pattern and coefficients into an engine bundle.

The transformer is exported twice with the torch.onnx dynamo exporter (opset 18: opset 17 from
this exporter wrote a Split node ONNX Runtime refuses): as the full-step graph and as the
cached-step graph (graphs.py), and the conditioning modules once more as the conditioning graph,
every step's modulation in one pass, that both step graphs read. The batch axis stays dynamic, so
one bundle serves any number of images. For class-conditional pipelines (the embedded model,
diffusers' ``DiTPipeline``) the bundle also records the sampler and, where the pipeline has a VAE, a decoder graph, so
``rfc-run`` generates images from the bundle alone; other families' bundles hold the transformer
step graphs, run step by step through :class:`~rfcache.export.runner.OrtRunner`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.export.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    PROFILE,
    TextAxis,
    encode_config,
    first_line,
    write_bundle,
)
from rfcache.export.graphs import CONDITIONING_PREFIX, MODEL_OUTPUT, PredictorSpec, StepGraphs
from rfcache.models import get_adapter, get_transformer
from rfcache.runtime.api import profile_config
from rfcache.runtime.identity import config_hash, input_resolution
from rfcache.schedules import Profile, load_profile

__all__ = ["BACKENDS", "OPSET", "effective_pattern", "export"]

logger = logging.getLogger(__name__)

BACKENDS = ("onnx", "aoti", "tensorrt")
OPSET = 18
_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_PROBE_BATCH = 3  # odd, so the dynamic batch axis is not confused with other axes of size 2
_CLASS_CONDITIONAL = {"DigitsDiTPipeline": None, "DiTPipeline": 1000}  # pipeline -> null class (None: its own)


def effective_pattern(mask: str, min_full_steps: int) -> str:
    """The pattern the runtime executes: a cached step before the predictor has enough full steps
    to predict from is computed (CacheSession does the same)."""
    out, full = [], 0
    for letter in mask:
        if letter == "P" and full < min_full_steps:
            letter = "C"
        full += letter == "C"
        out.append(letter)
    return "".join(out)


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

    ``backend="aoti"`` writes AOTInductor packages compiled for the model's device instead of ONNX
    graphs (aoti.py); ``backend="tensorrt"`` also builds TensorRT engines from the ONNX graphs
    (needs the ``tensorrt`` extra and a CUDA GPU). Graphs are in the model's dtype; ``fp16``
    exports half-precision graphs (the model must be on CUDA for ONNX Runtime) or builds FP16
    engines. ``guidance_scale`` is the runner's default (the pipeline's own default when not given).
    """
    if backend not in BACKENDS:
        raise RfcacheError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "tensorrt":
        from rfcache.export.tensorrt import require_tensorrt

        require_tensorrt()
    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    model = get_transformer(pipe)
    adapter = get_adapter(model)
    scheduler = getattr(pipe, "scheduler", None)
    config = profile_config(model, adapter, profile, scheduler)
    device = next(model.parameters()).device
    if fp16 and backend == "onnx" and device.type != "cuda":
        raise RfcacheError("fp16 ONNX graphs run on CUDA only; put the pipeline on cuda or use --backend tensorrt")
    spec = PredictorSpec(config.predictor, config.order, config.ratios, config.ratio_slopes)
    pattern = effective_pattern(profile.schedule, config.min_full_steps)
    sampling = _sampling(pipe, profile, guidance_scale)
    if model is pipe:
        inputs, constants = _probe_inputs(model, adapter, sampling), {}
    else:
        inputs, constants = _captured_inputs(pipe, profile, sampling)
    profile.check_sampling(resolution=input_resolution(inputs["hidden_states"]))
    batch = int(inputs["hidden_states"].shape[0])
    axes = {n: _batch_axis(n, t, batch, adapter) for n, t in inputs.items()}
    graphs = StepGraphs(model, adapter, spec, tuple(inputs), granularity=config.granularity, constants=constants)
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    half = fp16 and backend != "tensorrt"  # TensorRT builds FP16 engines from fp32 graphs
    dtype = next(model.parameters()).dtype
    try:
        if half:
            model.half()
            inputs = {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()}
        text, text_dims = _text_axis(graphs, inputs, backend)

        def fill(folder: Path) -> dict[str, Any]:
            nonlocal text, text_dims
            ext = ".pt2" if backend == "aoti" else ".onnx"
            try:
                full = _export_graph(graphs, inputs, axes, text_dims, folder / f"full{ext}", full=True, backend=backend)
            except Exception as exc:  # torch raises many types from export; the text axis then stays fixed
                if not text_dims:
                    raise
                assert text is not None
                text = replace(text, dynamic=False, reason=f"no graph with a dynamic text axis: {first_line(exc)}")
                text_dims = {}
                logger.warning("the text axis stays fixed at %d tokens (%s)", text.tokens, text.reason)
                full = _export_graph(graphs, inputs, axes, {}, folder / f"full{ext}", full=True, backend=backend)
            specs = {
                "full": full,
                "cached": _export_graph(
                    graphs, inputs, axes, text_dims, folder / f"cached{ext}", full=False, backend=backend
                ),
            }
            if graphs.conditioning:
                specs["conditioning"] = _export_conditioning(
                    graphs, inputs, axes, folder / f"conditioning{ext}", backend
                )
            vae = getattr(pipe, "vae", None)
            if sampling is not None and vae is not None:
                specs["decoder"] = _export_decoder(vae, inputs["hidden_states"], folder / f"decoder{ext}", backend)
                sampling["decode"] = "decoder"
            profile.save(folder / PROFILE)
            manifest = _manifest(model, adapter, profile, spec, pattern, graphs, specs, sampling, backend, fp16)
            manifest["state"] = [
                {"name": s.name, "shape": _symbolic(s.shape, True, text_dims.get(s.name)), "dtype": s.dtype}
                for s in graphs.state
            ]
            # which axes of the shapes above are dynamic; the text axis's length at export and why it is fixed
            manifest["axes"] = {"batch": {"dynamic": True}, "text": None if text is None else asdict(text)}
            manifest["setup"] = _setup_record(pipe, profile, inputs)
            manifest["device"] = device.type  # aoti packages run only on the device kind they were compiled for
            if backend == "tensorrt":
                from rfcache.export.tensorrt import build_engines

                manifest["engines"] = build_engines(folder, specs, fp16=fp16)
            return manifest

        path = write_bundle(out, fill, force=force)
    finally:
        if half:
            model.to(dtype)
        model.train(was_training)
    logger.info("exported %s in %.1f s", path, time.perf_counter() - started)
    return path


def _sampling(pipe: Any, profile: Profile, guidance_scale: float | None) -> dict[str, Any] | None:
    """The sampler a runner replays, for class-conditional pipelines; None for other pipelines."""
    name = type(pipe).__name__
    if name not in _CLASS_CONDITIONAL:
        return None
    import inspect

    model = pipe.transformer
    cfg = model.config
    null = _CLASS_CONDITIONAL[name]
    if guidance_scale is None:
        guidance_scale = float(inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default)
    if (profile.sampling.guidance == "cfg") != (guidance_scale > 1):
        raise RfcacheError(
            f"profile {profile.name!r} was calibrated with guidance {profile.sampling.guidance!r}; "
            f"guidance_scale {guidance_scale} does not match"
        )
    scheduler = pipe.scheduler
    vae = getattr(pipe, "vae", None)
    return {
        "recipe": "class-conditional",
        "pipeline": name,
        "null_class": int(null if null is not None else pipe.null_class),
        "num_classes": int(cfg.num_embeds_ada_norm),
        "in_channels": int(cfg.in_channels),
        "out_channels": int(cfg.out_channels or cfg.in_channels),
        "sample_size": int(cfg.sample_size),
        "guidance_scale": float(guidance_scale),
        "num_steps": profile.sampling.num_steps,
        "scheduler": {
            "class": type(scheduler).__name__,
            "config": encode_config({k: v for k, v in scheduler.config.items() if not k.startswith("_")}),
        },
        "decode": "pixels",
        "vae_scaling_factor": float(vae.config.scaling_factor) if vae is not None else None,
    }


def _captured_inputs(
    pipe: Any, profile: Profile, sampling: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The transformer's arguments in a real call of ``pipe`` at the profile's setup: tensors (the
    graph inputs) and the rest (constants of the graph, such as ``added_cond_kwargs``)."""
    from rfcache.runtime.runspec import captured_call, conditioning, pipeline_call, run_from_setup, run_setup

    if conditioning(pipe) == "class":
        inputs: dict[str, Any] = {"class_labels": [0, 1, 2]}
        run = run_from_setup(profile.sampling)
        if sampling is not None:
            run = replace(run, guidance=sampling["guidance_scale"])
    else:  # three prompts of different lengths: the batch axis is 3 (6 with batched CFG)
        inputs = {"prompt": ["a photo", "a red fox in the snow", "an old lighthouse on a cliff at dusk"]}
        run = run_from_setup(profile.sampling)
    profile.check_setup(run_setup(pipe, run))
    kwargs = {**inputs, **run.call_kwargs(pipe), "generator": run.generator(), "output_type": "latent"}
    with captured_call(pipe) as call:
        pipeline_call(pipe, kwargs, what="rfc-export (capturing the transformer's inputs)")
    tensors = {k: v for k, v in call["kwargs"].items() if isinstance(v, torch.Tensor)}
    constants = {k: v for k, v in call["kwargs"].items() if not isinstance(v, torch.Tensor) and k != "return_dict"}
    return tensors, constants


def _setup_record(pipe: Any, profile: Profile, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the bundle was exported for: the pipeline, the run's setup and the transformer's input shapes."""
    from rfcache.schedules.profile import _to_plain

    return {
        "pipeline": type(pipe).__name__,
        **_to_plain(profile.sampling),
        "transformer_inputs": {n: list(t.shape) for n, t in inputs.items()},
    }


def _probe_inputs(model: torch.nn.Module, adapter: Any, sampling: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    param = next(model.parameters())
    inputs = adapter.example_inputs(
        model, batch=_PROBE_BATCH, generator=torch.Generator().manual_seed(0), device=param.device, dtype=param.dtype
    )
    device = param.device
    if sampling is not None:  # class labels the pipeline really passes, the null class included
        inputs["class_labels"] = torch.tensor([0, 1, sampling["null_class"]], device=device)
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def _export_graph(
    graphs: StepGraphs,
    inputs: dict[str, torch.Tensor],
    axes: dict[str, bool],
    text_dims: dict[str, tuple[int, int]],
    path: Path,
    *,
    full: bool,
    backend: str,
) -> dict[str, Any]:
    names = list(graphs.input_names)
    model_args = [inputs[n] for n in names]
    dtype = next(graphs.model.parameters()).dtype
    device = model_args[0].device
    if full:
        module, state = graphs.full_module(), graphs.full_inputs
        constant = ("distance", torch.ones((), dtype=dtype, device=device))
        in_names = [*names, "distance", *(c.name for c in graphs.conditioning), *(f"prev.{s.name}" for s in state)]
        outputs = [MODEL_OUTPUT, *(s.name for s in graphs.state)]
    else:
        module, state = graphs.cached_module(), graphs.state
        constant = ("coeffs", torch.ones(graphs.spec.num_coeffs, dtype=dtype, device=device))
        in_names = [*names, "coeffs", *(c.name for c in graphs.conditioning), *(s.name for s in state)]
        outputs = [MODEL_OUTPUT]
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
    _save_graph(module, args, (tuple(dynamic),), path, backend, input_names=in_names, output_names=outputs)
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
    graphs: StepGraphs, inputs: dict[str, torch.Tensor], axes: dict[str, bool], path: Path, backend: str
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
    _save_graph(module, (timesteps, *conditions), (dynamic,), path, backend, input_names=in_names, output_names=names)

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


def _export_decoder(vae: torch.nn.Module, latents: torch.Tensor, path: Path, backend: str) -> dict[str, Any]:
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
    _save_graph(Decode().eval(), (z,), ({0: _BATCH},), path, backend, input_names=["latents"], output_names=["image"])
    return {"file": path.name, "inputs": [_spec("latents", z, True)], "outputs": [_spec("image", image, True)]}


def _save_graph(
    module: torch.nn.Module, args: tuple, dynamic: Any, path: Path, backend: str, **names: list[str]
) -> None:
    """Write ``module`` at ``args`` as ``path``: an ONNX graph, or an AOTInductor package for ``aoti``."""
    if backend == "aoti":
        from rfcache.export.aoti import save_package

        save_package(module, args, dynamic, path)
        return
    program = _onnx_export(module, args, dynamic_shapes=dynamic, **names)
    program.save(str(path), external_data=True)
    _drop_noop_squeezes(path)


def _onnx_export(module: torch.nn.Module, args: tuple, **kwargs: Any) -> Any:
    """torch.onnx's dynamo exporter at our opset, its progress chatter sent to the debug log."""
    import contextlib
    import io
    import warnings

    chatter = io.StringIO()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision missing"
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # torch.export first, with ordinary guards: the ONNX exporter's own capture reasons
            # "size-obliviously" and then cannot see that an attention mask repeated per head
            # (PixArt's cross-attention) still has the batch's size
            try:
                module = torch.export.export(module, args, dynamic_shapes=kwargs["dynamic_shapes"], strict=False)
                args, kwargs = (), {k: v for k, v in kwargs.items() if k != "dynamic_shapes"}
            except Exception as exc:  # the ONNX exporter's own capture strategies get their turn
                logger.debug("torch.export failed (%s); the ONNX exporter captures the graph itself", exc)
            program = torch.onnx.export(
                module, args, opset_version=OPSET, dynamo=True, external_data=True, verbose=False, **kwargs
            )
    finally:
        registration.setLevel(level)
    logger.debug("%s", chatter.getvalue())
    return program


def _drop_noop_squeezes(path: Path) -> None:
    """Turn ``Squeeze`` nodes on an axis whose size is known and not 1 into ``Identity``.

    ``aten.squeeze(x, d)`` is a no-op when ``x.shape[d] != 1`` (PixArt calls ``squeeze(1)`` on its
    token axis), but the exporter writes an ONNX ``Squeeze``, which ONNX Runtime then refuses.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if not i.external_data}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    changed = False
    for node in model.graph.node:
        if node.op_type != "Squeeze" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape = shapes.get(node.input[0])
        axes = [int(a) for a in constants[node.input[1]].reshape(-1)]
        if shape and all(shape[a] is not None and shape[a] != 1 for a in axes):
            node.op_type = "Identity"
            del node.input[1:]
            changed = True
    if changed:
        onnx.save(model, str(path))


def _batch_axis(name: str, t: torch.Tensor, batch: int, adapter: Any) -> bool:
    """Whether input ``name``'s first axis is the batch (ids shared by the batch, such as Flux's, are not)."""
    return bool(t.ndim) and t.shape[0] == batch and name not in adapter.unbatched_inputs


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
    graphs: StepGraphs, inputs: dict[str, torch.Tensor], backend: str
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

    if backend == "tensorrt":
        return fixed("TensorRT engines are built for the exported text length")
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

    import rfcache

    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "rfcache": rfcache.__version__,
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
