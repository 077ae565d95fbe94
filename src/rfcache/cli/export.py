"""``rfc-export``: bake a calibrated profile into an engine bundle (ONNX Runtime, AOTInductor or TensorRT)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import dtype_option, option, torch_dtype
from rfcache.outputs import check_folder_output

__all__ = ["ExportConfig", "run_export"]

EXAMPLES = """examples:
  rfc-export --profile toy-b0.4 --out bundle/            # embedded model, ONNX Runtime bundle
  rfc-run --bundle bundle/ --class 3 --seed 0 --out three.png
  rfc-export --model ./my-dit --profile my-dit.yaml --out dit-bundle/ --device cuda
  rfc-export --profile toy-b0.4 --out aoti/ --backend aoti      # AOTInductor .pt2 packages for this device
  rfc-export --profile toy-b0.4 --out trt/ --backend tensorrt --fp16 --device cuda   # needs [tensorrt]
"""


@dataclass(frozen=True)
class ExportConfig:
    profile: str | None = option(None, "profile YAML or shipped name (e.g. toy-b0.4); required")
    out: Path | None = option(None, "bundle folder to write; required")
    model: str = option("toy", "'toy', 'toy-flux', a local pipeline folder, or a hub id")
    backend: str = option(
        "onnx", "onnx (ONNX Runtime, CPU or CUDA), aoti (AOTInductor packages for --device) or tensorrt (NVIDIA GPUs)"
    )
    fp16: bool = option(False, "half-precision graphs (CUDA) or FP16 TensorRT engines")
    device: str = option("cpu", "torch device the model is exported from (cpu, cuda, ...); aoti compiles for it")
    dtype: str = dtype_option("the pipeline is loaded and its graphs exported in (--fp16 halves them instead)")
    guidance: float | None = option(
        None,
        "default guidance scale of a class-conditional bundle's sampler (the pipeline's own if unset)",
        at_least=0,
    )
    force: bool = option(False, "replace an existing bundle folder (only a bundle, or an empty folder)")
    json: bool = option(False, "print one JSON object as the last line")


def _check_precision(cfg: ExportConfig, dtype: Any) -> None:
    """The backend's refusal of a bundle precision it cannot run where it is exported, naming the flag."""
    import torch

    from rfcache.errors import RfcacheError
    from rfcache.export.backends import get_backend

    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        return  # not a device: the pipeline loader says so
    try:
        get_backend(cfg.backend).check_export(fp16=cfg.fp16 or dtype == torch.float16, device=device)
    except RfcacheError as exc:
        raise RfcacheError(f"{'--fp16' if cfg.fp16 else '--dtype float16'}: {exc}") from exc


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    from rfcache.errors import RfcacheError
    from rfcache.export import export, load_bundle
    from rfcache.pipelines import load_pipeline
    from rfcache.runtime.runspec import conditioning
    from rfcache.schedules import load_profile

    if cfg.profile is None or cfg.out is None:
        raise RfcacheError("--profile and --out are required")
    check_folder_output(cfg.out, flag="--out", force=cfg.force)  # before the minutes an export takes
    dtype = torch_dtype(cfg.dtype)
    _check_precision(cfg, dtype)  # export()'s own rule, before the pipeline is loaded
    started = time.perf_counter()
    profile = load_profile(cfg.profile)
    pipe = load_pipeline(cfg.model, device=cfg.device, dtype=dtype)
    if cfg.guidance is not None and conditioning(pipe) != "class":
        scale = profile.sampling.guidance_scale
        if cfg.guidance != scale:
            fixed = f"{scale:g}" if scale else "the pipeline's default"
            raise RfcacheError(
                f"--guidance {cfg.guidance:g}: a {type(pipe).__name__} bundle runs at the guidance its profile "
                f"was calibrated with ({fixed}); drop --guidance or calibrate at that scale"
            )
    path = export(
        pipe, profile, cfg.out, backend=cfg.backend, fp16=cfg.fp16, guidance_scale=cfg.guidance, force=cfg.force
    )
    bundle = load_bundle(path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "bundle": str(path),
        "backend": bundle.backend,
        "pattern": bundle.pattern,
        "nfc": bundle.manifest["schedule"]["nfc"],
        "flops_fraction": bundle.manifest["schedule"]["flops_fraction"],
        "graphs": bundle.graph_names,  # each expert's as component/graph
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 2),
        "json": cfg.json,
    }


def report(cfg: ExportConfig, r: dict[str, Any]) -> str:
    lines = [
        f"wrote {r['bundle']}",
        f"graphs            {', '.join(r['graphs'])} ({r['backend']}, {r['bytes'] / 1e6:.1f} MB)",
        f"pattern           {r['pattern']}  (NFC {r['nfc']}, {r['flops_fraction']:.3f} of module FLOPs)",
        f"time              {r['seconds']:.1f} s",
    ]
    if r.pop("json"):
        lines.append(json.dumps(r))
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("export", help="export a profile as an engine bundle", description=__doc__, epilog=EXAMPLES)
