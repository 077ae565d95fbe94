"""rfcache's runtime methods at matched cost, and wall-clock speed-up on a larger random DiT.

    python benchmarks/runtime_methods.py                 # toy model, 50 DDIM steps, NFC 14/10/7
    python benchmarks/runtime_methods.py --samples 10 --speed-only

A thin front to :func:`rfcache.evaluate.bench.run_bench` (the engine of ``rfc-bench``) with
rfcache's own methods only; ``rfc-bench`` adds calibrated profiles and other libraries' methods.
Part 1 (embedded toy model): the same seeds and classes for every method; interval methods take
the interval schedule of each NFC, ``rcs``/``rfc`` get the ``tau`` whose measured FLOP fraction
matches it. Each sample is generated alone (batch = the CFG pair), so dynamic schedules are
decided per sample, as in the paper.
Part 2 (a random DiT, hidden 384, 12 layers, 16x16x4 latent, CFG batch 2): wall-clock
full/cached ratio at NFC 14, measured in one process with methods interleaved after a warm-up,
next to the ideal 1/FLOP fraction.
"""

from __future__ import annotations

import argparse

import torch

from rfcache.evaluate.bench import BenchConfig, run_bench
from rfcache.evaluate.tables import format_table
from rfcache.evaluate.workload import Workload
from rfcache.models.toy import random_dit_pipeline

STEPS = 50
METHODS = ("fora", "taylorseer-m1", "taylorseer-m2", "rfe-m1", "rfe-m2", "rcs", "rfc")


def speed_workload() -> Workload:
    """A DiT-S-sized random model in the toy pipeline: big enough for compute to dominate hook overhead."""
    pipe = random_dit_pipeline()
    return Workload("random DiT 384x12", pipe, STEPS, {"guidance_scale": 2.0}, "class", num_classes=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--nfc", default="14,10,7")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if not args.speed_only:
        nfc = tuple(int(x) for x in args.nfc.split(","))
        result = run_bench(BenchConfig(nfc=nfc, methods=METHODS, samples=args.samples, repeats=0))
        print(f"\nToy DiT, {STEPS} DDIM steps, {args.samples} samples, guidance 2: error to full compute")
        print(format_table(result))
    speed = speed_workload()
    cfg = BenchConfig(nfc=(14,), methods=("fora", "taylorseer-m2", "rfe-m2", "rfc"), samples=1, repeats=args.repeats)
    result = run_bench(cfg, workload=speed)
    print(f"\n{speed.name}, 16x16x4 latent, CFG batch 2, {STEPS} steps, NFC 14 (wall clock, CPU)")
    print(f"{'method':<14} {'seconds':>8} {'speed-up':>9} {'1/FLOP frac':>12}")
    print(f"{'full':<14} {result.reference['seconds']:>8.2f} {1:>8.2f}x {1:>11.2f}x")
    for r in result.records:
        print(f"{r.method:<14} {r.seconds:>8.2f} {r.speedup:>8.2f}x {1 / r.flops_fraction:>11.2f}x")


if __name__ == "__main__":
    main()
