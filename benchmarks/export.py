"""Engine bundle speed: ONNX Runtime bundle vs PyTorch, full and cached, in one process.

    python benchmarks/export.py                  # DiT hidden 384 x 12 layers, 50 DDIM steps, budget 0.4
    python benchmarks/export.py --repeats 5 --threads 2

The model is a random-weight DiT of the moderate size (hidden 384, 12 layers, 16x16x4 latent,
64 tokens, CFG batch 2) in the embedded model's class-conditional pipeline. Speed does not depend
on the weights, only on the pattern; the profile is the uniform-interval RFE (m=1) schedule with
the most full steps whose measured FLOP fraction (predictor cost included) is within the budget.

Four ways to run the same generation, interleaved after a warm-up, median of ``--repeats``:
PyTorch full compute, PyTorch with the profile (rfcache.enable), the ONNX Runtime full-compute
graph (a bundle of the all-compute schedule) and the ONNX Runtime bundle of the profile. Also
reports export time and bundle size, and the max abs difference between the bundle's images and
the PyTorch runtime's with the same profile.

The per-unit rows: the same interval with each block's full steps shifted by its index (_per_unit.py:
every unit computes as often as under the step mask, equal FLOPs, almost every step a different
mix), run by PyTorch and as a per-unit bundle (one graph per step kind), side by side with the rest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import rfcache
from _per_unit import kinds_of, staggered_profile  # benchmarks/ is the script's folder
from rfcache.export import OrtRunner, export, load_bundle
from rfcache.models.toy import random_dit_pipeline
from rfcache.runtime.identity import model_identity
from rfcache.schedules import Budget, MethodSpec, Profile, Provenance, SamplingSetup
from rfcache.schedules.masks import interval_for_nfc, interval_mask

STEPS = 50
LABELS = [3]


def _profile(pipe, schedule: str, achieved: float, budget: float, predictor: str = "relational") -> Profile:
    adapter = rfcache.get_adapter(pipe)
    size = pipe.transformer.config.sample_size
    return Profile(
        name=f"moderate-dit-b{budget}",
        model=model_identity(pipe.transformer, adapter),
        sampling=SamplingSetup("DDIMScheduler", STEPS, "cfg", (4, size, size)),
        method=MethodSpec(predictor, 1, "interval"),
        schedule=schedule,
        budget=Budget(budget, achieved),
        provenance=Provenance("benchmark: uniform interval, not calibrated", 0, 0, "now"),
    )


def _torch(pipe, seed: int = 0) -> np.ndarray:
    return pipe(class_labels=LABELS, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed)).images


def profile_within(pipe, budget: float) -> tuple[Profile, Profile]:
    """The uniform RFE m=1 schedule with the most full steps whose measured FLOP fraction fits, and
    its per-unit counterpart at the same FLOPs (each block's full steps shifted)."""
    for nfc in range(int(budget * STEPS), 2, -1):
        interval, warmup, _ = interval_for_nfc(STEPS, nfc)
        schedule = "".join("C" if c else "P" for c in interval_mask(STEPS, interval, warmup))
        probe = _profile(pipe, schedule, 1.0, budget)
        rfcache.enable(pipe, probe)
        _torch(pipe)
        fraction = rfcache.summary(pipe).flops_fraction
        rfcache.disable(pipe)
        if fraction <= budget:
            profile = _profile(pipe, schedule, fraction, budget)
            per_unit = staggered_profile(pipe, profile, interval=interval, warmup=warmup)
            rfcache.enable(pipe, per_unit)
            _torch(pipe)
            measured = rfcache.summary(pipe).flops_fraction
            rfcache.disable(pipe)
            return profile, replace(per_unit, budget=Budget(budget, measured))
    raise SystemExit(f"no uniform schedule fits budget {budget}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ORT threads")
    parser.add_argument("--size", type=int, default=16, help="latent size: 16 (64 tokens) or 32 (DiT-S/2, 256 px)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _load = os.getloadavg()

    pipe = random_dit_pipeline(args.size)
    profile, per_unit = profile_within(pipe, args.budget)
    full_profile = _profile(pipe, "C" * STEPS, 1.0, 1.0)
    # the same pattern with no predictor arithmetic: what a cached step costs beyond the skeleton
    reuse_profile = _profile(pipe, profile.schedule, profile.budget.achieved, args.budget, predictor="reuse")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = export(pipe, profile, Path(tmp) / "bundle")
        export_seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        files = {f: (path / f).stat().st_size for f in load_bundle(path).manifest["files"]}
        ort_cached = OrtRunner(load_bundle(path), threads=args.threads)
        ort_full = OrtRunner(load_bundle(export(pipe, full_profile, Path(tmp) / "full")), threads=args.threads)
        ort_reuse = OrtRunner(load_bundle(export(pipe, reuse_profile, Path(tmp) / "reuse")), threads=args.threads)
        started = time.perf_counter()
        unit_path = export(pipe, per_unit, Path(tmp) / "per-unit")
        unit_export_seconds = time.perf_counter() - started
        unit_size = sum(f.stat().st_size for f in unit_path.rglob("*") if f.is_file())
        ort_unit = OrtRunner(load_bundle(unit_path), threads=args.threads)

        def torch_full() -> np.ndarray:
            return _torch(pipe)

        def torch_cached(which: Profile = profile) -> np.ndarray:
            rfcache.enable(pipe, which)
            try:
                return _torch(pipe)
            finally:
                rfcache.disable(pipe)

        runs = {
            "pytorch full": torch_full,
            "pytorch cached": torch_cached,
            "ort full graph": lambda: ort_full.generate(LABELS, seed=0).images,
            "ort bundle": lambda: ort_cached.generate(LABELS, seed=0).images,
            "ort bundle, reuse": lambda: ort_reuse.generate(LABELS, seed=0).images,
            "pytorch per-unit": lambda: torch_cached(per_unit),
            "ort per-unit bundle": lambda: ort_unit.generate(LABELS, seed=0).images,
        }
        outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs compared below
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)

    median = {name: statistics.median(ts) for name, ts in times.items()}
    fraction = profile.budget.achieved
    tokens = (args.size // 2) ** 2
    print(
        f"DiT hidden 384 x 12 layers, {args.size}x{args.size}x4 latent ({tokens} tokens), CFG batch 2, "
        f"{STEPS} DDIM steps"
    )
    print(f"CPU, {args.threads} threads; median of {args.repeats}, runs interleaved after a warm-up")
    print(f"profile: RFE m=1 uniform, NFC {profile.nfc}, FLOP fraction {fraction:.3f} (budget {args.budget})")
    print(f"pattern: {profile.schedule}\n")
    print(
        f"per-unit profile: the same interval, each block's full steps shifted by its index, NFC {profile.nfc} per "
        f"unit, FLOP fraction {per_unit.budget.achieved:.3f}, {kinds_of(per_unit)} step kinds"
    )
    print(f"loadavg before: {' '.join(f'{v:.1f}' for v in _load)}; after: {_loadavg()}\n")
    print(f"{'run':<20} {'seconds':>8} {'vs pytorch full':>16}")
    for name, seconds in median.items():
        print(f"{name:<20} {seconds:>8.3f} {median['pytorch full'] / seconds:>15.2f}x")
    print()
    print(f"ort bundle vs pytorch full      {median['pytorch full'] / median['ort bundle']:.2f}x  (goal >= 4)")
    ideal = 1 / fraction
    got = median["ort full graph"] / median["ort bundle"]
    print(f"ort bundle vs ort full graph    {got:.2f}x  (goal >= {0.95 * ideal:.2f} = 0.95 x 1/flops_fraction)")
    print(f"pytorch cached vs pytorch full  {median['pytorch full'] / median['pytorch cached']:.2f}x")
    nfc, cached = profile.nfc, STEPS - profile.nfc
    full_step = median["ort full graph"] / STEPS
    for name in ("ort bundle", "ort bundle, reuse"):
        per_cached = (median[name] - nfc * full_step) / cached
        print(f"{name + ':':<19} a cached step costs {per_cached / full_step:.2f} of a full step (estimated)")
    diff = float(np.abs(outputs["ort bundle"] - outputs["pytorch cached"]).max())
    print(f"bundle vs pytorch cached        max abs difference {diff:.2e} (images in [0, 1])")
    unit_diff = float(np.abs(outputs["ort per-unit bundle"] - outputs["pytorch per-unit"]).max())
    print(f"per-unit bundle vs pytorch      max abs difference {unit_diff:.2e} (images in [0, 1])")
    mask_speedup, unit_speedup = got, median["ort full graph"] / median["ort per-unit bundle"]
    print(
        f"per-unit vs step mask, bundle   {unit_speedup:.2f}x vs {mask_speedup:.2f}x against the ort full graph "
        f"({unit_speedup / mask_speedup:.3f} of it; target >= 0.90)"
    )
    torch_mask, torch_unit = (median["pytorch full"] / median[n] for n in ("pytorch cached", "pytorch per-unit"))
    print(
        f"per-unit vs step mask, pytorch  {torch_unit:.2f}x vs {torch_mask:.2f}x against pytorch full "
        f"({torch_unit / torch_mask:.3f} of it; target >= 0.90)"
    )
    print(f"export                          {export_seconds:.1f} s, bundle {size / 1e6:.1f} MB")
    for name, nbytes in sorted(files.items()):
        print(f"  {name:<22} {nbytes / 1e6:>7.2f} MB")
    print(f"per-unit export                 {unit_export_seconds:.1f} s, bundle {unit_size / 1e6:.1f} MB")


def _loadavg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
