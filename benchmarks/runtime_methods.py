"""Error to full compute of every runtime method at matched NFC, and wall-clock speed-up.

    python benchmarks/runtime_methods.py                 # toy model, 50 DDIM steps, NFC 14/10/7
    python benchmarks/runtime_methods.py --samples 10 --speed-only

Part 1 (embedded toy model): the same seeds and classes for every method; interval methods use
warm-up 2 and the interval that gives the NFC exactly; ``rcs``/``rfc`` get the ``tau`` that hits
the NFC on average over the samples (bisection). Each sample is generated alone (batch = the CFG
pair), so dynamic schedules are decided per sample, as in the paper.
Part 2 (a larger random DiT, hidden 384, 12 layers, 16x16x4 latent, CFG batch 2): wall-clock
full/cached ratio at NFC 14 measured in one process, methods interleaved after a warm-up, next to
the ideal 1/flops_fraction.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel

import rfcache
from rfcache.evaluate import psnr, relative_l2
from rfcache.models.toy import DigitsDiTPipeline, toy_scheduler_config

STEPS = 50
WARMUP = 2
INTERVAL_FOR_NFC = {14: 4, 10: 6, 7: 10}  # NFC = 2 + ceil(48 / N)
METHODS = [
    ("fora", {}),
    ("taylorseer", {"order": 1}),
    ("taylorseer", {"order": 2}),
    ("rfe", {"order": 1}),
    ("rfe", {"order": 2}),
    ("rcs", {"order": 2}),
    ("rfc", {"order": 2}),
]


@dataclass
class Row:
    method: str
    nfc_target: int
    nfc: float
    flops_fraction: float
    rel_l2: float
    psnr: float
    params: str


def _generate(pipe, label: int, seed: int, guidance: float) -> torch.Tensor:
    return pipe(
        class_labels=[label],
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images


def _run(pipe, inputs, method: str, params: dict, guidance: float):
    outs, nfcs, fracs = [], [], []
    rfcache.enable(pipe, method=method, warmup=WARMUP, **params)
    try:
        for label, seed in inputs:
            outs.append(_generate(pipe, label, seed, guidance))
            s = rfcache.summary(pipe)
            nfcs.append(s.num_full_steps)
            fracs.append(s.flops_fraction)
    finally:
        rfcache.disable(pipe)
    return torch.cat(outs), statistics.mean(nfcs), statistics.mean(fracs)


def _tune_tau(pipe, inputs, method: str, params: dict, target: int, guidance: float) -> float:
    lo, hi = 0.0, 4.0
    for _ in range(12):
        mid = (lo + hi) / 2
        _, nfc, _ = _run(pipe, inputs, method, {**params, "tau": mid}, guidance)
        if abs(nfc - target) < 0.25:
            return mid
        lo, hi = (mid, hi) if nfc > target else (lo, mid)
    return (lo + hi) / 2


def quality_table(samples: int, nfcs: list[int], guidance: float) -> list[Row]:
    pipe = rfcache.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    inputs = [(i % 10, 1000 + i) for i in range(samples)]
    reference = torch.cat([_generate(pipe, label, seed, guidance) for label, seed in inputs])
    tune_inputs = inputs[: max(4, samples // 2)]
    rows = []
    for target in nfcs:
        for method, params in METHODS:
            if method in ("rcs", "rfc"):
                params = {**params, "tau": _tune_tau(pipe, tune_inputs, method, params, target, guidance)}
            else:
                params = {**params, "interval": INTERVAL_FOR_NFC[target]}
            out, nfc, frac = _run(pipe, inputs, method, params, guidance)
            label = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            rows.append(Row(method, target, nfc, frac, relative_l2(out, reference), psnr(out, reference), label))
    return rows


def speed_table(repeats: int) -> list[tuple[str, float, float, float, float]]:
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=4, num_layers=12, sample_size=16
    ).eval()
    pipe = DigitsDiTPipeline(transformer=transformer, scheduler=DDIMScheduler(**toy_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    settings = [
        ("full", None),
        ("fora", {"interval": 4}),
        ("taylorseer", {"interval": 4}),
        ("rfe", {"interval": 4}),
        ("rfc", {"tau": 0.125}),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in settings}
    fractions: dict[str, float] = {"full": 1.0}
    step_ratio: dict[str, float] = {"full": 1.0}
    for rep in range(repeats + 1):  # the first round is the warm-up
        for name, params in settings:
            if params is not None:
                rfcache.enable(pipe, method=name, warmup=WARMUP, **params)
            start = time.perf_counter()
            _generate(pipe, 3, 0, 2.0)
            elapsed = time.perf_counter() - start
            if params is not None:
                s = rfcache.summary(pipe)
                fractions[name] = s.flops_fraction
                step_ratio[name] = s.full_flops / s.total_flops
                rfcache.disable(pipe)
            if rep:
                times[name].append(elapsed)
    full = statistics.median(times["full"])
    return [
        (name, statistics.median(t), full / statistics.median(t), 1 / fractions[name], step_ratio[name])
        for name, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--nfc", default="14,10,7")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if not args.speed_only:
        rows = quality_table(args.samples, [int(x) for x in args.nfc.split(",")], args.guidance)
        print(f"\nToy DiT, {STEPS} DDIM steps, {args.samples} samples, guidance {args.guidance}: error to full compute")
        print(f"{'NFC':>4} {'method':<14} {'NFC got':>7} {'FLOP frac':>9} {'rel-L2':>8} {'PSNR dB':>8}  params")
        for r in rows:
            name = r.method + (f" m={r.params.split('order=')[1][0]}" if "order=" in r.params else "")
            print(
                f"{r.nfc_target:>4} {name:<14} {r.nfc:>7.2f} {r.flops_fraction:>9.3f} {r.rel_l2:>8.4f} {r.psnr:>8.2f}"
                f"  {r.params}"
            )
    print(f"\nDiT hidden 384 x 12 layers, 16x16x4 latent, CFG batch 2, {STEPS} steps, NFC 14 (wall clock, CPU)")
    print(f"{'method':<12} {'seconds':>8} {'speed-up':>9} {'1/flops_fraction':>17} {'full/total FLOPs':>17}")
    for name, seconds, speedup, ideal, whole in speed_table(args.repeats):
        print(f"{name:<12} {seconds:>8.2f} {speedup:>8.2f}x {ideal:>16.2f}x {whole:>16.2f}x")


if __name__ == "__main__":
    main()
