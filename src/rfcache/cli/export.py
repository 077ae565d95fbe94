"""``rfc-export``: bake a calibrated profile into an engine bundle (ONNX Runtime, AOTInductor or TensorRT)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import dtype_option, option, torch_dtype

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
        None, "default guidance scale of the bundle's sampler (the pipeline's own if unset)"
    )
    force: bool = option(False, "replace an existing bundle folder")
    json: bool = option(False, "print one JSON object as the last line")


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    from rfcache.errors import RfcacheError
    from rfcache.export import export, load_bundle
    from rfcache.pipelines import load_pipeline

    if cfg.profile is None or cfg.out is None:
        raise RfcacheError("--profile and --out are required")
    started = time.perf_counter()
    pipe = load_pipeline(cfg.model, device=cfg.device, dtype=torch_dtype(cfg.dtype))
    path = export(
        pipe, cfg.profile, cfg.out, backend=cfg.backend, fp16=cfg.fp16, guidance_scale=cfg.guidance, force=cfg.force
    )
    bundle = load_bundle(path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "bundle": str(path),
        "backend": bundle.backend,
        "pattern": bundle.pattern,
        "nfc": bundle.manifest["schedule"]["nfc"],
        "flops_fraction": bundle.manifest["schedule"]["flops_fraction"],
        "graphs": _graph_names(bundle),
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 2),
        "json": cfg.json,
    }


def _graph_names(bundle: Any) -> list[str]:
    """The bundle's graphs; each expert's as ``component/graph`` in a two-expert bundle."""
    if "experts" not in bundle.manifest:
        return sorted(bundle.graphs)
    from rfcache.export.experts import expert_bundles

    return [f"{component}/{name}" for component, _, sub in expert_bundles(bundle) for name in sorted(sub.graphs)]


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
