"""Capturing what the transformer is called with: the pipeline's real call at the profile's setup.

The step graphs' example inputs are the transformer's real arguments in a call of the pipeline at
the setup the profile records (size, frames, guidance, call arguments): text length, attention
masks and id tensors are what the pipeline passes (:func:`captured_inputs`). A bare transformer is
probed with its adapter's example inputs (:func:`probe_inputs`). For class-conditional pipelines
(the embedded model, diffusers' ``DiTPipeline``) the sampler a runner replays is recorded too
(:func:`sampling_record`); :func:`setup_record` is what the bundle was exported for.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.export.manifest import encode_config
from rfcache.runtime.runspec import captured_call, conditioning, pipeline_call, run_from_setup, run_setup
from rfcache.schedules import Profile, to_plain

__all__ = ["batch_axis", "captured_inputs", "only_expert", "probe_inputs", "sampling_record", "setup_record"]

_PROBE_BATCH = 3  # odd, so the dynamic batch axis is not confused with other axes of size 2
_CLASS_CONDITIONAL = {"DigitsDiTPipeline": None, "DiTPipeline": 1000}  # pipeline -> null class (None: its own)


def sampling_record(pipe: Any, profile: Profile, guidance_scale: float | None) -> dict[str, Any] | None:
    """The sampler a runner replays, for class-conditional pipelines; None for other pipelines."""
    name = type(pipe).__name__
    if name not in _CLASS_CONDITIONAL:
        return None
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


def captured_inputs(
    pipe: Any, profile: Profile, sampling: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The transformer's arguments in a real call of ``pipe`` at the profile's setup: tensors (the
    graph inputs) and the rest (constants of the graph, such as ``added_cond_kwargs``)."""
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


def setup_record(pipe: Any, profile: Profile, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the bundle was exported for: the pipeline, the run's setup and the transformer's input shapes."""
    return {
        "pipeline": type(pipe).__name__,
        **to_plain(profile.sampling),
        "transformer_inputs": {n: list(t.shape) for n, t in inputs.items()},
    }


def probe_inputs(model: torch.nn.Module, adapter: Any, sampling: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    param = next(model.parameters())
    inputs = adapter.example_inputs(
        model, batch=_PROBE_BATCH, generator=torch.Generator().manual_seed(0), device=param.device, dtype=param.dtype
    )
    device = param.device
    if sampling is not None:  # class labels the pipeline really passes, the null class included
        inputs["class_labels"] = torch.tensor([0, 1, sampling["null_class"]], device=device)
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def batch_axis(name: str, t: torch.Tensor, batch: int, adapter: Any) -> bool:
    """Whether input ``name``'s first axis is the batch (ids shared by the batch, such as Flux's, are not)."""
    return bool(t.ndim) and t.shape[0] == batch and name not in adapter.unbatched_inputs


@contextlib.contextmanager
def only_expert(pipe: Any, component: str, model: torch.nn.Module) -> Iterator[None]:
    """Within the block ``pipe`` is a one-transformer pipeline running ``model`` at every step, so the
    export captures ``model``'s real arguments (both experts take the same ones)."""
    saved = {name: getattr(pipe, name) for name in ("transformer", "transformer_2")}
    ratio = pipe.config.boundary_ratio
    try:
        pipe.transformer, pipe.transformer_2 = model, None
        pipe.register_to_config(boundary_ratio=None)
        yield
    finally:
        pipe.transformer, pipe.transformer_2 = saved["transformer"], saved["transformer_2"]
        pipe.register_to_config(boundary_ratio=ratio)
