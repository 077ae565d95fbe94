"""``rfc-run``: generate from an engine bundle: class-conditional bundles alone, without the model's
Python code; text-to-image and video bundles inside the pipeline they were exported from (``--model``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import dtype_option, option, torch_dtype
from rfcache.cli._images import SAMPLE_SUFFIXES, check_sample_suffix, cycle_labels, save_grid, save_output
from rfcache.cli._run import RunFlags, run_spec
from rfcache.outputs import check_file_output

__all__ = ["RunConfig", "check_flags", "run_bundle"]

EXAMPLES = """examples:
  rfc-run --bundle bundle/ --class 3 --seed 0 --out three.png
  rfc-run --bundle bundle/ --num 10 --out digits.png --json     # one of each digit, JSON summary last
  rfc-run --bundle bundle/ --device cuda                         # needs onnxruntime-gpu
  rfc-run --bundle flux-bundle/ --model ./my-flux --prompt "a red fox in snow" --seed 0 --out fox.png
  rfc-run --bundle wan-bundle/ --model ./my-wan --prompts prompts.txt --out clip.gif
"""


@dataclass(frozen=True)
class RunConfig(RunFlags):
    bundle: Path | None = option(None, "bundle folder written by rfc-export; required")
    model: str | None = option(
        None, "toy-flux, a pipeline folder or hub id whose transformer the bundle replaces (text and video bundles)"
    )
    num: int | None = option(
        None, "number of images or videos; inputs cycle to fill it (default: one per input)", at_least=1
    )
    out: Path = option(Path("out.png"), "PNG to write (a grid for several); for video also .gif, .mp4 (animated)")
    scale: int | None = option(
        None, "upscaling of the saved file (default: 4 for images under 64 px, else 1)", at_least=1
    )
    fps: int = option(8, "frames per second of a .gif or .mp4", at_least=1)
    device: str = option("cpu", "cpu or cuda (ONNX Runtime execution provider; an aoti bundle's compile device)")
    threads: int = option(0, "ONNX Runtime intra-op threads (0: its default)", at_least=0)
    dtype: str = dtype_option("the --model pipeline (text encoders, VAE) is loaded in; the engine keeps its own")
    json: bool = option(False, "print one JSON object as the last line")


def run_bundle(cfg: RunConfig) -> dict[str, Any]:
    from rfcache.errors import RfcacheError
    from rfcache.export import load_bundle, open_runner

    if cfg.bundle is None:
        raise RfcacheError("--bundle is required")
    dtype = torch_dtype(cfg.dtype)
    if cfg.num is not None and cfg.num < 1:
        raise RfcacheError(f"--num must be at least 1, got {cfg.num}")
    check_file_output(cfg.out, flag="--out", suffixes=SAMPLE_SUFFIXES, what="sample file")
    bundle = load_bundle(cfg.bundle)
    if cfg.model is not None:
        result = _run_in_pipeline(cfg, bundle, dtype)
    elif bundle.sampling.get("recipe") != "class-conditional":
        pipeline = bundle.setup.get("pipeline", "pipeline")
        raise RfcacheError(f"{cfg.bundle}: this bundle runs inside its {pipeline}: give --model DIR (or a hub id)")
    else:
        if cfg.prompt or cfg.prompts:
            raise RfcacheError(f"{cfg.bundle}: a class-conditional bundle takes --class N, not --prompt")
        _check_fixed(cfg, bundle)
        num_classes = int(bundle.sampling.get("num_classes", 0))
        labels = cycle_labels(cfg.class_labels, num_classes, cfg.num or max(len(cfg.class_labels), 1))
        for label in labels:
            if not 0 <= label < num_classes:
                raise RfcacheError(f"--class {label} is outside the bundle's classes 0..{num_classes - 1}")
        runner = open_runner(bundle, device=cfg.device, threads=cfg.threads or None)
        result = runner.generate(labels, seed=cfg.seed, guidance_scale=cfg.guidance)
        save_grid(result.images, cfg.out, scale=cfg.scale if cfg.scale is not None else 4)
    return {
        "out": str(cfg.out),
        "backend": bundle.backend,
        "device": cfg.device,
        "seconds": round(result.seconds, 4),
        "pattern": result.pattern,
        "nfc": result.pattern.count("C"),
        "flops_fraction": bundle.manifest["schedule"]["flops_fraction"],
        "nonfinite_fallbacks": result.nonfinite_fallbacks,
        "json": cfg.json,
    }


def check_flags(cfg: RunConfig, given: set[str]) -> None:
    """Flags rfc-run would not use: ``--dtype`` without ``--model``, ``--fps`` for a still image."""
    from rfcache.cli.generate import check_fps
    from rfcache.errors import RfcacheError

    if "dtype" in given and cfg.model is None:
        raise RfcacheError("--dtype applies to the --model pipeline; a bundle alone runs in its exported dtype")
    check_fps(cfg.out, given)


def _check_fixed(cfg: RunConfig, bundle: Any) -> None:
    """A class-conditional bundle runs alone at the setup it was exported for: a flag that would change
    it (steps, size, frames, pipeline arguments) is refused, not ignored."""
    from rfcache.errors import RfcacheError

    where = f"{cfg.bundle} replays its {bundle.sampling.get('num_steps')}-step schedule alone"
    if cfg.steps is not None and cfg.steps != bundle.sampling.get("num_steps"):
        raise RfcacheError(f"--steps {cfg.steps}: {where}; drop --steps or export another bundle")
    for flag, value in (("--height", cfg.height), ("--width", cfg.width), ("--num-frames", cfg.num_frames)):
        if value is not None:
            raise RfcacheError(f"{flag} {value}: {where} at the size it was exported for; drop {flag}")
    for flag, value in (("--call-args", cfg.call_args), ("--negative-prompt", cfg.negative_prompt)):
        if value is not None:
            raise RfcacheError(f"{flag}: {where}, without its pipeline; it takes no pipeline arguments")
    if cfg.out.suffix.lower() != ".png":
        raise RfcacheError(f"--out {cfg.out}: images are written as .png")


def _run_in_pipeline(cfg: RunConfig, bundle: Any, dtype: Any) -> Any:
    """The pipeline from ``--model`` with the bundle as its transformer, at the bundle's setup."""
    import time

    from rfcache.cli.generate import generate_with, run_inputs
    from rfcache.export.runner import GenerationResult
    from rfcache.pipelines import load_pipeline
    from rfcache.runtime.experts import expert_models
    from rfcache.runtime.runspec import run_setup

    pipe = load_pipeline(cfg.model, device=cfg.device, dtype=dtype)
    check_sample_suffix(pipe, cfg.out)
    spec = run_spec(cfg, bundle.profile.sampling)
    bundle.into(pipe, device=cfg.device, threads=cfg.threads or None)
    bundle.profile.check_setup(run_setup(pipe, spec))
    inputs = run_inputs(pipe, spec, cfg.num)
    started = time.perf_counter()
    out = generate_with(pipe, spec, inputs, device=cfg.device, what="rfc-run")
    seconds = time.perf_counter() - started
    save_output(out, cfg.out, scale=cfg.scale, fps=cfg.fps)
    engines = [model for _, model in expert_models(pipe)]  # two on a two-expert pipeline, in step order
    executed = "".join(engine.executed for engine in engines)
    return GenerationResult(out, executed, seconds, sum(engine.fallbacks for engine in engines))


def report(cfg: RunConfig, r: dict[str, Any]) -> str:
    lines = [
        f"wrote {r['out']}",
        f"pattern           {r['pattern']}  (NFC {r['nfc']}, {r['flops_fraction']:.3f} of module FLOPs)",
        f"time              {r['seconds']:.2f} s ({r['backend']} on {r['device']})",
    ]
    if r["nonfinite_fallbacks"]:
        lines.append(f"non-finite        {r['nonfinite_fallbacks']} cached steps rerun in full")
    if r.pop("json"):
        lines.append(json.dumps(r))
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("run", help="generate images from an engine bundle", description=__doc__, epilog=EXAMPLES)
