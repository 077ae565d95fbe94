"""Shipped (calibrated, static) profiles against TaylorSeer, dynamic RFC and diffusers' TaylorSeer hook
at the same cost, on test inputs no choice saw, and how well the calibration's error model ranks schedules.

    python benchmarks/calibration.py --samples 12 --rank 24
    python benchmarks/calibration.py --samples 12 --ratio-forms 0.4

For each shipped toy profile, on test inputs (classes ``i % 10``, seeds 5000 + i: disjoint from
every seed in the profile's ``provenance.inputs``, which is checked), one sample at a time (batch
= the CFG pair), error to full compute (relative L2 per sample) of: the profile's static schedule;
TaylorSeer m=2 with its interval schedule at the profile's NFC, placed as TaylorSeer's code places
it (warm-up 2, then a full step every N); diffusers' TaylorSeer hook (m=2) at the same NFC; and
dynamic RFC (RFE + RCS, m=2, decided per sample at run time) with ``tau`` bisected on separate
tuning inputs (seeds 6000 + i) so its mean FLOP fraction matches the profile's. Each error is the
mean over samples with its 95 % bootstrap interval; each comparison is the paired per-sample
ratio with its interval ("lower"/"higher" only where the interval excludes 1).

``--rank N``: on the calibration inputs ``rfc-calibrate`` uses (classes 0-7, seeds 0-7), the error
model is fitted as in calibration, then ``N`` distinct candidates drawn at random from the search
space within budget 0.4 are scored by the model and run for real; prints the Spearman rank
correlation between estimated and measured error over these candidates, none of which the model
was fitted on (and, labelled in-sample, the fit's own R² and spread).

``--ratio-steps``: on the same calibration inputs, whether the relation ratio ``s`` varies with the
step (docs/method.md): per unit, R² of ``||ΔO|| ≈ s ||ΔI||`` with ``s`` constant and linear in the step,
and the linear fit's relative change of ``s`` over the trajectory.

``--ratio-forms BUDGET``: calibrates the embedded model at ``BUDGET`` (as ``rfc-calibrate`` does,
``--trials`` trials) and says which relation ratio the search picked (run-time, constant or
step-linear, chosen by the error model's estimate and the real confirmation runs); then, on the
``--samples`` test inputs above, runs the picked schedule with each of the three ratios and prints
each one's error with its interval and the paired per-sample ratios between them.

``--per-unit NFC,...`` (issue 18's targets): at each NFC, the budget is the analytic FLOP fraction of
RFE m=2's interval schedule with that NFC (what ``rfc-bench`` gives its calibrated profile); one
calibration with both families (``--trials`` trials, ``--confirm`` confirmed, seeds 0-19 as
``rfc-calibrate``) gives the best profile and the other family's best (``CalibrationResult.alternative``,
what a step-mask-only calibration writes: its search, confirmation and selection are the same). On
``--samples`` test inputs (classes ``i % 10``, seeds ``--seed`` + i, none used by the calibration,
checked), guidance 2, one at a time: rel-L2 to full compute of the toy's output (its final latent,
``x / 2 + 0.5``, clamped to [0, 1]) for the best profile, the step-mask and the per-unit profile and
TaylorSeer m=2 at that NFC (``interval_for_nfc``); paired per-sample ratios with 95 % intervals.
``--save DIR`` writes the profiles there. ``--paired A B ...``: the profiles on the same
``--samples`` test inputs (seeds ``--seed`` + i, of ``--model``), each one's error and its paired
ratio to ``A``'s. ``--model toy-flux``: the same on the trained Flux model (50 steps, its default
guidance, test prompts from templates 5-9 as ``rfc-bench``; calibration on templates 0-4, seeds
0-19).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rfcache
from rfcache.evaluate import relative_l2
from rfcache.evaluate.methods import BenchContext, Target
from rfcache.evaluate.peers import PEERS
from rfcache.schedules.masks import interval_for_nfc
from rfcache.stats import mean_interval, paired_ratio

PROFILES = ["toy-b0.25", "toy-b0.4", "toy-b0.6"]
TEST_SEED, TUNE_SEED = 5000, 6000


def _generate(pipe, label: int, seed: int) -> torch.Tensor:
    return pipe(
        class_labels=[label], guidance_scale=2.0, generator=torch.Generator().manual_seed(seed), output_type="pt"
    ).images


def _run(pipe, inputs, apply, *, ours: bool = True, generate=None) -> tuple[list[torch.Tensor], float, float]:
    """Per-sample outputs, mean FLOP fraction and mean NFC (rfcache's counters: ``ours`` only) under ``apply()``.

    ``apply()`` returns ``(remove, reset)``; ``reset`` runs before every sample (a peer's hook state).
    ``generate(item)`` makes one sample (default: ``inputs`` are ``(label, seed)`` pairs of the toy).
    """
    generate = generate or (lambda item: _generate(pipe, *item))
    outs, fracs, nfcs = [], [], []
    remove, reset = apply()
    try:
        for item in inputs:
            reset()
            outs.append(generate(item))
            if ours:
                s = rfcache.summary(pipe)
                fracs.append(s.flops_fraction)
                nfcs.append(s.num_full_steps)
    finally:
        remove()
    return outs, (statistics.mean(fracs) if fracs else float("nan")), (statistics.mean(nfcs) if nfcs else float("nan"))


def _ours(pipe, *args, **kwargs):
    def apply():
        rfcache.enable(pipe, *args, **kwargs)
        return (lambda: rfcache.disable(pipe)), (lambda: None)  # the session resets itself per generation

    return apply


def _diffusers_taylorseer(pipe, nfc: int):
    def apply():
        applied = PEERS["diffusers-taylorseer-m2"].apply(pipe, Target(f"NFC {nfc}", nfc, 1.0, 1.0), None, ctx)
        return applied.remove, applied.reset

    ctx = BenchContext(steps=50)
    return apply


def _dynamic_rfc_tau(pipe, tune_inputs, fraction: float) -> float:
    """``tau`` whose mean FLOP fraction on the tuning inputs is the largest not above ``fraction``."""
    lo, hi, best = 0.0, 4.0, (4.0, 0.0)
    for _ in range(10):
        tau = (lo + hi) / 2
        _, f, _ = _run(pipe, tune_inputs, _ours(pipe, method="rfc", order=2, warmup=2, tau=tau))
        if f <= fraction and f > best[1]:
            best = (tau, f)
        lo, hi = (tau, hi) if f > fraction else (lo, tau)
    return best[0]


def compare_profiles(pipe, samples: int, profiles: list[str], tune: int = 2) -> None:
    inputs = [(i % 10, TEST_SEED + i) for i in range(samples)]
    tune_inputs = [(i % 10, TUNE_SEED + i) for i in range(tune)]
    reference = [_generate(pipe, label, seed) for label, seed in inputs]
    print(f"\nToy DiT, 50 DDIM steps, guidance 2, {samples} test samples one at a time (seeds {TEST_SEED}..)")
    print("rel-L2: mean per sample [95% bootstrap CI]; vs TS / vs RFC: paired per-sample ratio [95% CI]")
    header = f"{'profile':<10} {'method':<28} {'NFC':>5} {'FLOP frac':>9} {'rel-L2 [95% CI]':<27}"
    print(f"{header} {'vs TS [95% CI]':<25} {'vs RFC [95% CI]':<25}")
    for name in profiles:
        profile = rfcache.load_profile(name)
        _check_unseen(profile, {seed for _, seed in inputs + tune_inputs})
        interval, warmup, _ = interval_for_nfc(50, profile.nfc, warmup=rfcache.get_adapter(pipe).taylorseer_warmup)
        tau = _dynamic_rfc_tau(pipe, tune_inputs, profile.budget.achieved)
        rows = {}
        for label, apply in [
            ("static profile", _ours(pipe, profile)),
            (
                f"TaylorSeer m=2 N={interval} w={warmup}",
                _ours(pipe, method="taylorseer", order=2, interval=interval, warmup=warmup),
            ),
            (f"dynamic RFC tau={tau:.3g}", _ours(pipe, method="rfc", order=2, warmup=2, tau=tau)),
            ("diffusers TaylorSeer m=2", _diffusers_taylorseer(pipe, profile.nfc)),
        ]:
            outs, frac, nfc = _run(pipe, inputs, apply, ours=not label.startswith("diffusers"))
            rows[label] = ([relative_l2(o, r) for o, r in zip(outs, reference, strict=True)], frac, nfc)
        ts, rfc = list(rows.values())[1][0], list(rows.values())[2][0]
        for label, (errors, frac, nfc) in rows.items():
            vs_ts, vs_rfc = paired_ratio(errors, ts), paired_ratio(errors, rfc)
            cells = [
                f"{vs.value:.2f}x [{vs.low:.2f}, {vs.high:.2f}] {'' if vs.verdict() == 'tie' else vs.verdict()}"
                for vs in (vs_ts, vs_rfc)
            ]
            frac_text = "-" if frac != frac else f"{frac:.3f}"
            nfc_text = f"{profile.nfc}" if nfc != nfc else f"{nfc:.2f}"
            error = mean_interval(errors).format(".4f")
            print(
                f"{profile.name:<10} {label:<28} {nfc_text:>5} {frac_text:>9} {error:<27} {cells[0]:<25} {cells[1]:<25}"
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
    seeds = lambda: [torch.Generator().manual_seed(i) for i in range(8)]  # noqa: E731  (rfc-calibrate's seeds 0-7)
    trace, out = record_trace(pipe, {**call, "generator": seeds()})
    reference = out.images

    def real_error(params: dict, pattern: str) -> float:
        extra = {"ratios": ratios} if params["predictor"] == "relational" and params.get("calibrated") else {}
        mask = tuple(c == "C" for c in pattern)
        rfcache.enable(pipe, method="static", mask=mask, predictor=params["predictor"], order=params["order"], **extra)
        try:
            return relative_l2(pipe(**call, generator=seeds()).images, reference)
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
    print(f"\nError model on the toy (budget {budget}, {steps} steps, calibration inputs 0-7, seeds 0-7)")
    fit = f"R² {model.r2:.3f} of log errors, median deviation {100 * model.spread:.0f}%"
    print(f"in-sample fit: {fit} over its {model.runs} runs")
    print(f"sensitivity knots (first, middle, last step): {', '.join(f'{k:.4f}' for k in model.knots)}")
    print(
        f"out of sample, {len(rows)} random candidates within budget (none in the fit): Spearman {rho:.3f}; "
        f"best third by estimate: {rho_top:.3f}"
    )
    print(f"{'family':<9} {'predictor':<10} {'m':>1} {'NFC':>3} {'estimate':>9} {'real':>8}")
    for est, real, cand in sorted(rows, key=lambda r: r[1]):
        p, nfc = cand.params, cand.pattern.count("C")
        print(f"{p['family']:<9} {p['predictor']:<10} {p['order']:>1} {nfc:>3} {est:>9.4f} {real:>8.4f}")


def ratio_steps(pipe, *, steps: int = 50) -> None:
    """Constant vs step-linear relation ratio per unit, on rfc-calibrate's calibration inputs."""
    import numpy as np

    from rfcache.calibrate import fit_ratio_steps, record_trace

    call = {"class_labels": list(range(8)), "num_inference_steps": steps, "guidance_scale": 2.0, "output_type": "pt"}
    trace, _ = record_trace(pipe, {**call, "generator": [torch.Generator().manual_seed(i) for i in range(8)]})
    fit = fit_ratio_steps(trace)
    print(f"\nRelation ratio s per unit ({len(trace.units)} units, {steps} steps, calibration inputs 0-7, seeds 0-7)")
    print(f"{'unit':<28} {'R² const':>8} {'R² linear':>9} {'s change':>8}")
    for unit, c, lin, ch in zip(trace.units, fit.r2_constant, fit.r2_linear, fit.relative_change, strict=True):
        print(f"{unit:<28} {c:>8.3f} {lin:>9.3f} {ch:>+8.2f}")
    gain = np.array(fit.r2_linear) - np.array(fit.r2_constant)
    print(f"median R² gain of a step-linear s: {np.median(gain):.3f} (max {gain.max():.3f})")


def ratio_forms(pipe, samples: int, budget: float, trials: int) -> None:
    """Which ratio form the search picks at ``budget``, and what each form does on the picked schedule."""
    from dataclasses import replace

    from rfcache.calibrate.scoring import ratio_choice

    result = rfcache.calibrate(pipe, budget=budget, trials=trials, progress=False, name=f"toy-b{budget}")
    profile, step_fit = result.profile, result.step_fit
    assert step_fit is not None
    method = profile.method
    picked = ratio_choice({"predictor": method.predictor, **method.params, "ratio_form": profile.ratio_form})
    print(
        f"\nBudget {budget}, {trials} trials: the search picked {profile.method.predictor} m={profile.method.order}, "
        f"{profile.method.schedule_family} schedule (NFC {profile.nfc}), ratio: {picked}"
    )
    print("confirmed candidates (real runs on the calibration inputs): ratio, estimate, measured rel-L2")
    for cand in result.confirmed:
        estimate = f"{cand.estimate:.4f}" if cand.estimate is not None else "-"
        print(f"  {ratio_choice(cand.params):<12} {cand.params['predictor']:<10} {estimate:>8} {cand.error:.4f}")
    print(
        f"step-linear fit: R² median {statistics.median(step_fit.r2_linear):.3f} "
        f"(constant {statistics.median(step_fit.r2_constant):.3f})"
    )
    # RFE (m >= 1) on the picked schedule, whatever predictor won, so the ratio is the only difference
    rfe = replace(method, predictor="relational", order=max(method.order, 1))
    calibrated = replace(rfe, params={**method.params, "calibrated": 1.0})
    runtime = replace(rfe, params={**method.params, "calibrated": 0.0})
    forms = {  # label: (method, ratios, ratio_form, ratio_slopes)
        "runtime": (runtime, result.fit.ratios, "constant", ()),
        "constant": (calibrated, result.fit.ratios, "constant", ()),
        "step-linear": (calibrated, step_fit.intercepts, "step-linear", step_fit.slopes),
    }
    variants = {
        label: replace(profile, method=m, ratios=r, ratio_form=form, ratio_slopes=slopes)
        for label, (m, r, form, slopes) in forms.items()
    }
    inputs = [(i % 10, TEST_SEED + i) for i in range(samples)]
    _check_unseen(profile, {seed for _, seed in inputs})
    reference = [_generate(pipe, label, seed) for label, seed in inputs]
    errors = {}
    for label, variant in variants.items():
        outs, _, _ = _run(pipe, inputs, _ours(pipe, variant))
        errors[label] = [relative_l2(o, r) for o, r in zip(outs, reference, strict=True)]
    print(f"RFE m={rfe.order} on the picked schedule, each ratio, {samples} test samples (seeds {TEST_SEED}..):")
    for label, errs in errors.items():
        vs_c, vs_r = paired_ratio(errs, errors["constant"]), paired_ratio(errs, errors["runtime"])
        print(
            f"  {label:<12} {mean_interval(errs).format('.4f'):<27} vs constant {vs_c.format('.3f')} "
            f"{vs_c.verdict()}   vs runtime {vs_r.format('.3f')} {vs_r.verdict()}"
        )


def compare_families(
    pipe,
    samples: int,
    nfcs: list[int],
    *,
    trials: int,
    confirm: int,
    seed: int,
    save: str | None,
    model: str = "toy",
    local_moves: int = 0,
    max_step_kinds: int | None = None,
) -> None:
    """Best (both families) and step-mask vs per-unit profiles against TaylorSeer m=2 at each NFC."""
    from pathlib import Path

    from rfcache.calibrate import calibrate
    from rfcache.evaluate.workload import TUNE_OFFSET

    pipe, generate, run, what = _test_inputs(pipe, model, seed)
    reference = [generate(i) for i in range(samples)]
    warmup = rfcache.get_adapter(pipe).taylorseer_warmup
    print(f"\n{what}, {samples} test samples one at a time (seeds {seed}..)")
    for nfc in nfcs:
        interval, w, got = interval_for_nfc(50, nfc, warmup=warmup)
        budget = _fraction(pipe, lambda: generate(TUNE_OFFSET), interval, w)
        start = time.perf_counter()
        result = calibrate(
            pipe,
            run=run,
            budget=budget,
            trials=trials,
            confirm=confirm,
            progress=False,
            local_moves=local_moves,
            max_step_kinds=max_step_kinds,
        )
        seconds = time.perf_counter() - start
        best, other = result.profile, result.alternative
        _check_unseen(best, {seed + i for i in range(samples)})
        step = best if not best.per_unit else other
        unit = best if best.per_unit else other
        if save:
            for name, p in (("best", best), ("step", step), ("unit", unit)):
                if p is not None:
                    p.save(Path(save) / f"{model}-nfc{got}-{name}.yaml")
        rows = {"TaylorSeer m=2": _ours(pipe, method="taylorseer", order=2, interval=interval, warmup=w)}
        rows |= {"step-mask profile": _ours(pipe, step)}
        if unit is not None:
            rows |= {"per-unit profile": _ours(pipe, unit)}
        errors = {}
        print(
            f"NFC {got} (TaylorSeer N={interval} w={w}), budget {budget:.4f}: best is {best.method.schedule_family} "
            f"(per-unit: {unit.method.schedule_family if unit else '-'}; calibration {seconds:.0f} s)"
        )
        print(f"  selection rel-L2: {_selection_line(best)}")
        for label, apply in rows.items():
            outs, frac, _ = _run(pipe, range(samples), apply, generate=generate)
            errors[label] = [relative_l2(o, r) for o, r in zip(outs, reference, strict=True)]
            print(f"  {label:<20} FLOP frac {frac:.3f}  rel-L2 {mean_interval(errors[label]).format('.4f')}")
        errors["best profile"] = errors["per-unit profile" if best.per_unit else "step-mask profile"]
        for a, b in (
            ("best profile", "TaylorSeer m=2"),
            ("step-mask profile", "TaylorSeer m=2"),
            ("per-unit profile", "step-mask profile"),
        ):
            if a in errors:
                r = paired_ratio(errors[a], errors[b])
                print(f"  {a} / {b}: {r.format('.3f')} {r.verdict()}")


def _check_unseen(profile, seeds: set[int]) -> None:
    """Refuse test ``seeds`` that ``profile``'s calibration used (any of its input sets)."""
    used = {item.seed for items in profile.provenance.inputs.values() for item in items}
    assert not used & seeds, f"{profile.name}: test seeds were used in calibration"


def _test_inputs(pipe, model: str, seed: int):
    """``(pipe, generate(i), calibration RunSpec, description)`` of a trained model's test sample ``i``
    (seed ``seed + i``): the toy's class ``i % 10`` at guidance 2; toy-flux's prompts from templates 5-9
    (as ``rfc-bench``), its calibration on templates 0-4."""
    from rfcache.evaluate.workload import load_workload
    from rfcache.runtime.runspec import RunSpec

    if model == "toy":
        generate = lambda i: _generate(pipe, i % 10, seed + i)  # noqa: E731
        return pipe, generate, RunSpec(steps=50, guidance=2.0), "Toy DiT, 50 DDIM steps, guidance 2"
    work = load_workload(model, steps=50)
    work.seed = seed
    run = RunSpec(steps=50, prompts=tuple(work.calibration_prompts))
    return work.pipe, work.generate, run, f"{model}, 50 steps, its default guidance"


def compare_paired(pipe, samples: int, profiles: list[str], *, seed: int, model: str) -> None:
    """Each profile's error on the same test inputs, and its paired ratio to the first profile's."""
    pipe, generate, _, what = _test_inputs(pipe, model, seed)
    loaded = [rfcache.load_profile(p) for p in profiles]
    for profile in loaded:
        _check_unseen(profile, {seed + i for i in range(samples)})
    reference = [generate(i) for i in range(samples)]
    print(f"\n{what}, {samples} test samples one at a time (seeds {seed}..); ratios paired, to the first profile")
    errors = []
    for path, profile in zip(profiles, loaded, strict=True):
        outs, frac, nfc = _run(pipe, range(samples), _ours(pipe, profile), generate=generate)
        errors.append([relative_l2(o, r) for o, r in zip(outs, reference, strict=True)])
        ratio = paired_ratio(errors[-1], errors[0])
        family = profile.method.schedule_family
        print(
            f"  {path:<34} {family:<12} NFC {nfc:5.2f} FLOP frac {frac:.3f}  rel-L2 "
            f"{mean_interval(errors[-1]).format('.4f'):<27} / first {ratio.format('.3f')} {ratio.verdict()}"
        )


def _fraction(pipe, generate, interval: int, warmup: int) -> float:
    """The analytic FLOP fraction of RFE m=2's interval schedule (one generation, ``generate()``)."""
    rfcache.enable(pipe, method="rfe", order=2, interval=interval, warmup=warmup)
    try:
        generate()
        return rfcache.summary(pipe).flops_fraction
    finally:
        rfcache.disable(pipe)


def _selection_line(profile) -> str:
    d = profile.diagnostics
    unit = d.get("selection_rel_l2_per_unit")
    return f"step mask {d['selection_rel_l2_step_mask']:.4f}" + (f", per-unit {unit:.4f}" if unit is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12, help="test samples for the profile comparison (0: skip)")
    parser.add_argument("--rank", type=int, default=0, help="random candidates for the error model's rank check")
    parser.add_argument("--profiles", nargs="+", default=PROFILES, help="profile names or files to compare")
    parser.add_argument("--ratio-steps", action="store_true", help="whether the relation ratio varies with the step")
    parser.add_argument("--ratio-forms", type=float, default=0.0, help="budget: which ratio form calibration picks")
    parser.add_argument("--trials", type=int, default=200, help="Optuna trials for --ratio-forms and --per-unit")
    parser.add_argument("--confirm", type=int, default=4, help="confirmed candidates for --per-unit")
    parser.add_argument("--per-unit", default="", help="NFCs: best, step-mask and per-unit profiles vs TaylorSeer")
    parser.add_argument("--seed", type=int, default=9000, help="first test seed for --per-unit, --paired")
    parser.add_argument("--save", default=None, help="folder for --per-unit's profiles")
    parser.add_argument(
        "--model", default="toy", choices=["toy", "toy-flux"], help="trained model: --per-unit, --paired"
    )
    parser.add_argument("--local-moves", type=int, default=0, help="--per-unit: rfc-calibrate's --local-moves")
    parser.add_argument("--max-step-kinds", type=int, default=None, help="--per-unit: rfc-calibrate's flag")
    parser.add_argument("--paired", nargs="+", default=None, help="profiles: errors and paired ratios to the first")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pipe = rfcache.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    if args.per_unit:
        nfcs = [int(n) for n in args.per_unit.split(",")]
        compare_families(
            pipe,
            args.samples,
            nfcs,
            trials=args.trials,
            confirm=args.confirm,
            seed=args.seed,
            save=args.save,
            model=args.model,
            local_moves=args.local_moves,
            max_step_kinds=args.max_step_kinds,
        )
    elif args.paired:
        compare_paired(pipe, args.samples, args.paired, seed=args.seed, model=args.model)
    elif args.ratio_forms:
        ratio_forms(pipe, args.samples, args.ratio_forms, args.trials)
    elif args.samples:
        compare_profiles(pipe, args.samples, args.profiles)
    if args.rank:
        rank_check(pipe, args.rank)
    if args.ratio_steps:
        ratio_steps(pipe)


if __name__ == "__main__":
    main()
