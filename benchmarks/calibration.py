"""Shipped (calibrated, static) profiles against TaylorSeer and dynamic RFC at the same cost,
and how well the calibration's error model ranks schedules.

    python benchmarks/calibration.py --samples 10 --rank 24

For each shipped toy profile, on held-out inputs (classes 0-9, seeds not used in calibration),
one sample at a time (batch = the CFG pair), error to full compute (relative L2, PSNR) of:
the profile's static schedule; TaylorSeer m=2 with its own interval schedule at the profile's
NFC; and dynamic RFC (RFE + RCS, m=2, decided per sample at run time) with ``tau`` bisected so
its mean FLOP fraction matches the profile's.

``--rank N``: on the calibration inputs ``rfc-calibrate`` uses (classes 0-7, seed 0), the error
model is fitted as in calibration, then ``N`` distinct candidates drawn at random from the search
space within budget 0.4 are scored by the model and run for real; prints the Spearman rank
correlation between estimated and measured error (and the fit's own R² and spread).
"""

from __future__ import annotations

import argparse
import statistics

import torch

import rfcache
from rfcache.evaluate import psnr, relative_l2
from rfcache.schedules.masks import interval_for_nfc

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


def compare_profiles(pipe, samples: int, profiles: list[str]) -> None:
    inputs = [(i % 10, 5000 + i) for i in range(samples)]
    reference = torch.cat([_generate(pipe, label, seed) for label, seed in inputs])
    print(f"\nToy DiT, 50 DDIM steps, {samples} held-out samples one at a time, guidance 2")
    print(f"{'profile':<11} {'method':<24} {'NFC':>6} {'FLOP frac':>9} {'rel-L2':>8} {'PSNR dB':>8} {'vs TS':>6}")
    for name in profiles:
        profile = rfcache.load_profile(name)
        name = profile.name
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


def rank_check(pipe, count: int, *, budget: float = 0.4, steps: int = 50) -> None:
    """Spearman of estimated vs real error over ``count`` random feasible candidates."""
    import optuna
    from scipy.stats import spearmanr

    from rfcache.calibrate import fit_ratios, record_trace
    from rfcache.calibrate.scoring import Scorer, fit_scorer, run_key
    from rfcache.calibrate.search import error_model_runs, max_nfc, search_schedules

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    call = {"class_labels": list(range(8)), "num_inference_steps": steps, "guidance_scale": 2.0, "output_type": "pt"}
    trace, out = record_trace(pipe, {**call, "generator": torch.Generator().manual_seed(0)})
    reference = out.images

    def real_error(params: dict, pattern: str) -> float:
        extra = {"ratios": ratios} if params["predictor"] == "relational" and params.get("calibrated") else {}
        mask = tuple(c == "C" for c in pattern)
        rfcache.enable(pipe, method="static", mask=mask, predictor=params["predictor"], order=params["order"], **extra)
        try:
            return relative_l2(pipe(**call, generator=torch.Generator().manual_seed(0)).images, reference)
        finally:
            rfcache.disable(pipe)

    ratios = fit_ratios(trace).ratios
    scorer = Scorer(trace, ratios=ratios, max_nfc=max_nfc(budget, steps))
    fit_scorer(scorer, error_model_runs(steps, budget), real_error)
    model = scorer.model
    _, candidates = search_schedules(
        scorer.estimate,
        budget=budget,
        num_steps=steps,
        trials=20 * count,
        storage=None,
        study_name="rank-check",
        sampler=optuna.samplers.RandomSampler(seed=1),
        progress=False,
    )
    rows, seen = [], set()
    for cand in candidates[:: max(1, len(candidates) // (3 * count))]:  # spread over the estimate range
        key = run_key(cand.params, cand.pattern)
        if key in seen or len(rows) >= count:
            continue
        seen.add(key)
        rows.append((cand.error, real_error(cand.params, cand.pattern), cand))
    rho = spearmanr([r[0] for r in rows], [r[1] for r in rows])[0]
    top = sorted(rows, key=lambda r: r[0])[: max(3, count // 3)]
    rho_top = spearmanr([r[0] for r in top], [r[1] for r in top])[0]
    print(f"\nError model on the toy (budget {budget}, {steps} steps, calibration inputs 0-7, seed 0)")
    print(f"fit: R² {model.r2:.3f} of log errors, median deviation {100 * model.spread:.0f}% over {model.runs} runs")
    print(f"sensitivity knots (first, middle, last step): {', '.join(f'{k:.4f}' for k in model.knots)}")
    print(f"{len(rows)} random candidates within budget: Spearman {rho:.3f}; best third by estimate: {rho_top:.3f}")
    print(f"{'family':<9} {'predictor':<10} {'m':>1} {'NFC':>3} {'estimate':>9} {'real':>8}")
    for est, real, cand in sorted(rows, key=lambda r: r[1]):
        p, nfc = cand.params, cand.pattern.count("C")
        print(f"{p['family']:<9} {p['predictor']:<10} {p['order']:>1} {nfc:>3} {est:>9.4f} {real:>8.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10, help="held-out samples for the profile comparison (0: skip)")
    parser.add_argument("--rank", type=int, default=0, help="random candidates for the error model's rank check")
    parser.add_argument("--profiles", nargs="+", default=PROFILES, help="profile names or files to compare")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pipe = rfcache.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    if args.samples:
        compare_profiles(pipe, args.samples, args.profiles)
    if args.rank:
        rank_check(pipe, args.rank)


if __name__ == "__main__":
    main()
