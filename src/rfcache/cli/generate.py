"""``rfc-generate``: sample images or videos from a pipeline (the embedded toy model by default)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import dtype_option, option, torch_dtype
from rfcache.cli._images import SAMPLE_SUFFIXES, check_sample_suffix, cycle_labels, save_output
from rfcache.cli._parallel import context_parallel_option, is_lead, rank_device, split_pipeline
from rfcache.cli._run import RunFlags, run_spec
from rfcache.outputs import check_file_output

__all__ = ["GenerateConfig", "check_flags", "run_generate"]

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
  torchrun --nproc_per_node 2 $(which rfc-generate) --model ./my-flux --profile flux.yaml \
      --prompt "a red fox" --device cuda --context-parallel ulysses   # one generation split over 2 GPUs
"""


@dataclass(frozen=True)
class GenerateConfig(RunFlags):
    model: str = option("toy", "'toy', 'toy-flux', a local pipeline folder, or a hub id")
    num: int | None = option(
        None, "number of images or videos; inputs cycle to fill it (default: one per input)", at_least=1
    )
    out: Path = option(Path("out.png"), "PNG to write (a grid for several); for video also .gif, .mp4 (animated)")
    scale: int | None = option(
        None, "upscaling of the saved file (default: 4 for images under 64 px, else 1)", at_least=1
    )
    fps: int = option(8, "frames per second of a .gif or .mp4", at_least=1)
    device: str = option("cpu", "torch device (cpu, cuda, cuda:1, ...)")
    dtype: str = dtype_option()
    profile: str | None = option(None, "profile YAML or shipped name (e.g. toy-b0.4); replaces --method")
    method: str = option("none", "caching method: none, fora, taylorseer, rfe, rcs, rfc")
    interval: int = option(4, "full step every N steps after the warm-up (fora, taylorseer, rfe)", at_least=1)
    order: int = option(2, "Taylor order m (taylorseer, rfe, rcs, rfc)", at_least=0)
    warmup: int = option(2, "full steps at the start", at_least=0)
    tau: float = option(0.3, "RCS threshold on the accumulated input-forecast error (rcs, rfc)", at_least=0)
    max_cached: int | None = option(None, "cap on consecutive cached steps (rcs, rfc)", at_least=1)
    compile: bool = option(False, "torch.compile the transformer: two variants, full and cached step (fixed schedules)")
    context_parallel: str | None = context_parallel_option()


def run_generate(cfg: GenerateConfig) -> tuple[Path, object | None]:
    """Generate ``cfg.num`` images (or videos) into one file; returns the path and the cache summary, if any."""
    from rfcache.errors import RfcacheError
    from rfcache.pipelines import load_pipeline
    from rfcache.runtime import enable, summary
    from rfcache.schedules import load_profile

    check_file_output(cfg.out, flag="--out", suffixes=SAMPLE_SUFFIXES, what="sample file")
    cached = cfg.profile is not None or cfg.method != "none"
    if cfg.compile and not cached:
        raise RfcacheError("--compile needs --profile or a fixed-schedule --method (fora, taylorseer, rfe)")
    profile = load_profile(cfg.profile) if cfg.profile is not None else None
    spec = run_spec(cfg, profile.sampling if profile is not None else None)
    device = rank_device(cfg.device)
    pipe = load_pipeline(cfg.model, device=device, dtype=torch_dtype(cfg.dtype))
    check_sample_suffix(pipe, cfg.out)
    if cfg.context_parallel is not None:  # under torchrun (cli/_parallel.py)
        split_pipeline(pipe, cfg.context_parallel, device)
    inputs = run_inputs(pipe, spec, cfg.num)
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
    out = generate_with(pipe, spec, inputs, device=device, what="rfc-generate")
    if is_lead():  # one output, from rank 0
        save_output(out, cfg.out, scale=cfg.scale, fps=cfg.fps)
    return cfg.out, (summary(pipe) if profile is not None or cfg.method != "none" else None)


#: the methods each schedule flag applies to (rfc-generate refuses one given for another method)
_METHOD_FLAGS = {
    "interval": ("fora", "taylorseer", "rfe"),
    "order": ("taylorseer", "rfe", "rcs", "rfc"),
    "warmup": ("fora", "taylorseer", "rfe", "rcs", "rfc"),
    "tau": ("rcs", "rfc"),
    "max_cached": ("rcs", "rfc"),
}


def check_flags(cfg: GenerateConfig, given: set[str]) -> None:
    """Flags that would be ignored: a method's parameters with a profile or another method; ``--fps``
    for a still image."""
    from rfcache.errors import RfcacheError

    for name, methods in _METHOD_FLAGS.items():
        if name not in given:
            continue
        flag = "--" + name.replace("_", "-")
        if cfg.profile is not None:
            raise RfcacheError(f"{flag}: --profile fixes the schedule; give --profile or --method with {flag}")
        if cfg.method not in methods:
            raise RfcacheError(f"{flag} applies to --method {', '.join(methods)}, not {cfg.method}")
    if "method" in given and cfg.profile is not None:
        raise RfcacheError("--method: --profile fixes the method; give one of them")
    check_fps(cfg.out, given)


def check_fps(out: Path, given: set[str]) -> None:
    from rfcache.errors import RfcacheError

    if "fps" in given and out.suffix.lower() not in (".gif", ".mp4"):
        raise RfcacheError(f"--fps applies to a .gif or .mp4 --out, not {out}")


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
