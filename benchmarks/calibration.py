"""Shipped (calibrated, static) profiles against TaylorSeer and dynamic RFC at the same cost.

    python benchmarks/calibration.py --samples 10

For each shipped toy profile, on held-out inputs (classes 0-9, seeds not used in calibration),
one sample at a time (batch = the CFG pair), error to full compute (relative L2, PSNR) of:
the profile's static schedule; TaylorSeer m=2 with its own interval schedule at the profile's
NFC; and dynamic RFC (RFE + RCS, m=2, decided per sample at run time) with ``tau`` bisected so
its mean FLOP fraction matches the profile's.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import rfcache
from rfcache.evaluate import psnr, relative_l2
from rfcache.runtime.policies import interval_for_nfc

PROFILES = ["toy-b0.25", "toy-b0.4", "toy-b0.6"]


def _generate(pipe, label: int, seed: int) -> torch.Tensor:
    return pipe(
        class_labels=[label], guidance_scale=2.0, generator=torch.Generator().manual_seed(seed), output_type="pt"
    ).images


def _run(pipe, inputs, enable_args: tuple, enable_kwargs: dict) -> tuple[torch.Tensor, float, float]:
    outs, fracs, nfcs = [], [], []
    rfcache.enable(pipe, *enable_args, **enable_kwargs)
    try:
        for label, seed in inputs:
            outs.append(_generate(pipe, label, seed))
            s = rfcache.summary(pipe)
            fracs.append(s.flops_fraction)
            nfcs.append(s.num_full_steps)
    finally:
        rfcache.disable(pipe)
    return torch.cat(outs), statistics.mean(fracs), statistics.mean(nfcs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pipe = rfcache.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    inputs = [(i % 10, 5000 + i) for i in range(args.samples)]
    reference = torch.cat([_generate(pipe, label, seed) for label, seed in inputs])
    print(f"\nToy DiT, 50 DDIM steps, {args.samples} held-out samples one at a time, guidance 2")
    print(f"{'profile':<11} {'method':<24} {'NFC':>6} {'FLOP frac':>9} {'rel-L2':>8} {'PSNR dB':>8} {'vs TS':>6}")
    for name in PROFILES:
        profile = rfcache.load_profile(name)
        rows = []
        out, frac, nfc = _run(pipe, inputs, (profile,), {})
        rows.append(("static profile", nfc, frac, out))
        interval, warmup, _ = interval_for_nfc(50, profile.nfc)
        out, frac_ts, nfc_ts = _run(
            pipe, inputs, (), {"method": "taylorseer", "order": 2, "interval": interval, "warmup": warmup}
        )
        rows.append(("TaylorSeer m=2 interval", nfc_ts, frac_ts, out))
        lo, hi = 0.0, 4.0
        best = None
        for _ in range(10):
            tau = (lo + hi) / 2
            out, f, n = _run(pipe, inputs, (), {"method": "rfc", "order": 2, "warmup": 2, "tau": tau})
            if f <= profile.budget.achieved and (best is None or f > best[1]):
                best = (tau, f, n, out)
            lo, hi = (tau, hi) if f > profile.budget.achieved else (lo, tau)
        if best is not None:
            rows.append((f"dynamic RFC tau={best[0]:.3g}", best[2], best[1], best[3]))
        ts_err = relative_l2(rows[1][3], reference)
        for method, n, f, o in rows:
            err = relative_l2(o, reference)
            print(
                f"{name:<11} {method:<24} {n:>6.2f} {f:>9.3f} {err:>8.4f} {psnr(o, reference):>8.2f} "
                f"{err / ts_err:>5.2f}x"
            )


if __name__ == "__main__":
    main()
