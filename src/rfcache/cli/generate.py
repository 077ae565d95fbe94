"""``rfc-generate``: sample images or videos from a pipeline (the embedded toy model by default)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import dtype_option, option, torch_dtype
from rfcache.cli._images import cycle_labels, save_output
from rfcache.cli._run import RunFlags, run_spec

__all__ = ["GenerateConfig", "run_generate"]

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  rfc-generate --class 3 --seed 0 --out digit.png
  rfc-generate --num 10 --out grid.png            # one of each digit
  rfc-generate --num 10 --method rfc --tau 0.3    # cached; prints the cache summary
  rfc-generate --num 10 --profile toy-b0.4        # a shipped (or your own) calibrated profile
  rfc-generate --model ./my-flux --profile flux.yaml --prompt "a red fox in snow" --out fox.png
  rfc-generate --model ./my-pixart --prompts prompts.txt --height 512 --width 768 --out grid.png
  rfc-generate --model ./my-wan --profile wan.yaml --prompt "a cat surfing" --out cat.gif   # or .mp4, or .png (a strip)
  rfc-generate --num 10 --profile toy-b0.4 --compile   # the same under torch.compile (two variants)
  rfc-generate --model ./my-dit --class 207 --steps 25 --device cuda --dtype float16
"""


@dataclass(frozen=True)
class GenerateConfig(RunFlags):
    model: str = option("toy", "'toy', 'toy-flux', a local pipeline folder, or a hub id")
    num: int | None = option(None, "number of images or videos; inputs cycle to fill it (default: one per input)")
    out: Path = option(Path("out.png"), "PNG to write (a grid for several); for video also .gif, .mp4 (animated)")
    scale: int | None = option(None, "upscaling of the saved file (default: 4 for images under 64 px, else 1)")
    fps: int = option(8, "frames per second of a .gif or .mp4")
    device: str = option("cpu", "torch device (cpu, cuda, cuda:1, ...)")
    dtype: str = dtype_option()
    profile: str | None = option(None, "profile YAML or shipped name (e.g. toy-b0.4); replaces --method")
    method: str = option("none", "caching method: none, fora, taylorseer, rfe, rcs, rfc")
    interval: int = option(4, "full step every N steps after the warm-up (fora, taylorseer, rfe)")
    order: int = option(2, "Taylor order m (taylorseer, rfe, rcs, rfc)")
    warmup: int = option(2, "full steps at the start")
    tau: float = option(0.3, "RCS threshold on the accumulated input-forecast error (rcs, rfc)")
    max_cached: int | None = option(None, "cap on consecutive cached steps (rcs, rfc)")
    compile: bool = option(False, "torch.compile the transformer: two variants, full and cached step (fixed schedules)")


def run_generate(cfg: GenerateConfig) -> tuple[Path, object | None]:
    """Generate ``cfg.num`` images (or videos) into one file; returns the path and the cache summary, if any."""
    from rfcache.errors import RfcacheError
    from rfcache.pipelines import load_pipeline
    from rfcache.runtime import enable, summary
    from rfcache.schedules import load_profile

    profile = load_profile(cfg.profile) if cfg.profile is not None else None
    spec = run_spec(cfg, profile.sampling if profile is not None else None)
    pipe = load_pipeline(cfg.model, device=cfg.device, dtype=torch_dtype(cfg.dtype))
    inputs = run_inputs(pipe, spec, cfg.num)
    cached = cfg.profile is not None or cfg.method != "none"
    if cfg.compile and not cached:
        raise RfcacheError("--compile needs --profile or a fixed-schedule --method (fora, taylorseer, rfe)")
    if profile is not None:
        enable(pipe, profile, run=spec, compile=cfg.compile)
    elif cfg.method != "none":
        enable(
            pipe,
            method=cfg.method,
            compile=cfg.compile,
            interval=cfg.interval,
            order=cfg.order,
            warmup=cfg.warmup,
            tau=cfg.tau,
            max_cached=cfg.max_cached,
        )
    out = generate_with(pipe, spec, inputs, device=cfg.device, what="rfc-generate")
    save_output(out, cfg.out, scale=cfg.scale, fps=cfg.fps)
    return cfg.out, (summary(pipe) if profile is not None or cfg.method != "none" else None)


def run_inputs(pipe: Any, spec: Any, num: int | None) -> dict[str, list[Any]]:
    """The pipeline's inputs for ``num`` samples: the given prompts or class labels, cycling; class
    labels default to 0, 1, 2, ... and must be among the model's classes."""
    from rfcache.errors import RfcacheError
    from rfcache.runtime.runspec import conditioning

    if num is not None and num < 1:
        raise RfcacheError(f"--num must be at least 1, got {num}")
    if conditioning(pipe) != "class" or spec.prompts:
        return spec.inputs(pipe, num)
    num_classes = int(getattr(pipe.transformer.config, "num_embeds_ada_norm", 0) or 0)
    labels = cycle_labels(spec.class_labels, num_classes, num or max(len(spec.class_labels), 1))
    for label in labels:
        if not 0 <= label < num_classes:
            raise RfcacheError(f"--class {label} is outside the model's classes 0..{num_classes - 1}")
    return {"class_labels": labels}


def generate_with(pipe: Any, spec: Any, inputs: dict[str, Any], *, device: str, what: str) -> Any:
    """One pipeline call: images ``(N, H, W, C)`` or videos ``(N, F, H, W, C)`` in [0, 1]."""
    import numpy as np

    from rfcache.runtime.runspec import pipeline_call

    kwargs = {**inputs, **spec.call_kwargs(pipe), "generator": spec.generator(device), "output_type": "np"}
    out = pipeline_call(pipe, kwargs, what=what)
    return np.asarray(out.frames if hasattr(out, "frames") else out.images, dtype=np.float32)


def report(cfg: GenerateConfig, result: tuple[Path, object | None]) -> str:
    path, cache = result
    return f"wrote {path}" + (f"\n{cache}" if cache is not None else "")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("generate", help="sample images or videos", description=__doc__, epilog=EXAMPLES)
