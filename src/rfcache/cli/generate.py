"""``rfc-generate``: sample images from a pipeline (the embedded toy model by default)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from rfcache.cli._args import option
from rfcache.cli._images import cycle_labels, save_grid

__all__ = ["GenerateConfig", "run_generate"]

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  rfc-generate --class 3 --seed 0 --out digit.png
  rfc-generate --num 10 --out grid.png            # one of each digit
  rfc-generate --num 10 --method rfc --tau 0.3    # cached; prints the cache summary
  rfc-generate --num 10 --profile toy-b0.4        # a shipped (or your own) calibrated profile
  rfc-generate --num 10 --profile toy-b0.4 --compile   # the same under torch.compile (two variants)
  rfc-generate --model ./my-dit --class 207 --steps 25 --device cuda --dtype float16
"""


@dataclass(frozen=True)
class GenerateConfig:
    model: str = option("toy", "'toy', a local pipeline folder, or a hub id")
    class_labels: tuple[int, ...] = option(
        (), "class label(s), comma-separated; default: 0,1,2,... cycling", flag="--class"
    )
    num: int = option(1, "number of images; class labels cycle to fill it")
    seed: int = option(0, "seed of the initial noise")
    steps: int = option(50, "number of inference steps")
    guidance: float = option(2.0, "classifier-free guidance scale (1 disables guidance)")
    out: Path = option(Path("out.png"), "PNG to write (a grid when --num > 1)")
    scale: int = option(4, "nearest-neighbour upscaling of the saved image")
    device: str = option("cpu", "torch device (cpu, cuda, cuda:1, ...)")
    dtype: str = option("float32", "float32, float16 or bfloat16")
    profile: str | None = option(None, "profile YAML or shipped name (e.g. toy-b0.4); replaces --method")
    method: str = option("none", "caching method: none, fora, taylorseer, rfe, rcs, rfc")
    interval: int = option(4, "full step every N steps after the warm-up (fora, taylorseer, rfe)")
    order: int = option(2, "Taylor order m (taylorseer, rfe, rcs, rfc)")
    warmup: int = option(2, "full steps at the start")
    tau: float = option(0.3, "RCS threshold on the accumulated input-forecast error (rcs, rfc)")
    max_cached: int | None = option(None, "cap on consecutive cached steps (rcs, rfc)")
    compile: bool = option(False, "torch.compile the transformer: two variants, full and cached step (fixed schedules)")


def run_generate(cfg: GenerateConfig) -> tuple[Path, object | None]:
    """Generate ``cfg.num`` images as one PNG grid; returns the path and the cache summary, if any."""
    import numpy as np
    import torch

    from rfcache.errors import RfcacheError
    from rfcache.pipelines import load_pipeline
    from rfcache.runtime import enable, summary

    if cfg.num < 1:
        raise RfcacheError(f"--num must be at least 1, got {cfg.num}")
    if cfg.steps < 1:
        raise RfcacheError(f"--steps must be at least 1, got {cfg.steps}")
    dtype = _dtype(cfg.dtype)
    pipe = load_pipeline(cfg.model, device=cfg.device, dtype=dtype)
    num_classes = int(pipe.transformer.config.num_embeds_ada_norm or 0)
    labels = cycle_labels(cfg.class_labels, num_classes, cfg.num)
    for label in labels:
        if not 0 <= label < num_classes:
            raise RfcacheError(f"--class {label} is outside the model's classes 0..{num_classes - 1}")
    cached = cfg.profile is not None or cfg.method != "none"
    if cfg.compile and not cached:
        raise RfcacheError("--compile needs --profile or a fixed-schedule --method (fora, taylorseer, rfe)")
    if cfg.profile is not None:
        enable(pipe, cfg.profile, compile=cfg.compile)
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
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    images = pipe(
        class_labels=labels,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance,
        generator=generator,
        output_type="np",
    ).images  # (N, H, W, C) in [0, 1]
    save_grid(np.asarray(images), cfg.out, scale=cfg.scale)
    return cfg.out, (summary(pipe) if cached else None)


def _dtype(name: str):
    import torch

    from rfcache.errors import RfcacheError

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise RfcacheError(f"--dtype must be one of {', '.join(dtypes)}, got {name!r}")
    return dtypes[name]


def report(cfg: GenerateConfig, result: tuple[Path, object | None]) -> str:
    path, cache = result
    return f"wrote {path}" + (f"\n{cache}" if cache is not None else "")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("generate", help="sample images", description=__doc__, epilog=EXAMPLES)
