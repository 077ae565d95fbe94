"""``rfc-run``: generate images from an engine bundle, without the model's Python code."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import option
from rfcache.cli._images import cycle_labels, save_grid

__all__ = ["RunConfig", "run_bundle"]

EXAMPLES = """examples:
  rfc-run --bundle bundle/ --class 3 --seed 0 --out three.png
  rfc-run --bundle bundle/ --num 10 --out digits.png --json     # one of each digit, JSON summary last
  rfc-run --bundle bundle/ --device cuda                         # needs onnxruntime-gpu
"""


@dataclass(frozen=True)
class RunConfig:
    bundle: Path | None = option(None, "bundle folder written by rfc-export; required")
    class_labels: tuple[int, ...] = option(
        (), "class label(s), comma-separated; default: 0,1,2,... cycling", flag="--class"
    )
    num: int = option(1, "number of images; class labels cycle to fill it")
    seed: int = option(0, "seed of the initial noise")
    guidance: float | None = option(None, "guidance scale (the bundle's default if unset)")
    out: Path = option(Path("out.png"), "PNG to write (a grid when --num > 1)")
    scale: int = option(4, "nearest-neighbour upscaling of the saved image")
    device: str = option("cpu", "cpu or cuda (ONNX Runtime execution provider; an aoti bundle's compile device)")
    threads: int = option(0, "ONNX Runtime intra-op threads (0: its default)")
    json: bool = option(False, "print one JSON object as the last line")


def run_bundle(cfg: RunConfig) -> dict[str, Any]:
    from rfcache.errors import RfcacheError
    from rfcache.export import load_bundle
    from rfcache.export.runner import open_runner

    if cfg.bundle is None:
        raise RfcacheError("--bundle is required")
    if cfg.num < 1:
        raise RfcacheError(f"--num must be at least 1, got {cfg.num}")
    bundle = load_bundle(cfg.bundle)
    runner = open_runner(bundle, device=cfg.device, threads=cfg.threads or None)
    num_classes = int(bundle.sampling.get("num_classes", 0))
    labels = cycle_labels(cfg.class_labels, num_classes, cfg.num)
    result = runner.generate(labels, seed=cfg.seed, guidance_scale=cfg.guidance)
    save_grid(result.images, cfg.out, scale=cfg.scale)
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
