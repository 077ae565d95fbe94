"""Per-unit rows searched by real runs alone, with no step-kind limit: do their gains carry to new inputs?

    python benchmarks/local_moves.py --nfc 10 --moves 150 --seed 0

On the embedded model, 50 DDIM steps, guidance 2: the budget is RFE m=2's analytic FLOP fraction at
the NFC (as ``calibration.py --per-unit``), ``rfcache.calibrate`` (200 trials, 4 confirmed) gives the
best step mask, then :func:`rfcache.calibrate.perunit.local_moves` runs ``--moves`` proposals from it
on ``rfc-calibrate``'s calibration inputs (classes 0-7, seeds 0-7), without the step-kind limit the
product's ``--local-moves`` keeps. Prints the calibration error before and after, then both
schedules on ``--samples`` test inputs (class ``i % 10``, seeds 9000 + i) with the paired ratio.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

import rfcache
from calibration import _fraction, _generate  # benchmarks/ is the script's folder
from rfcache.calibrate import calibrate
from rfcache.calibrate.perunit import local_moves
from rfcache.calibrate.search import Candidate
from rfcache.evaluate import relative_l2
from rfcache.runtime.runspec import RunSpec
from rfcache.schedules.masks import interval_for_nfc, min_full_steps, rows_intersection, step_kinds
from rfcache.stats import mean_interval, paired_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nfc", type=int, default=10)
    parser.add_argument("--moves", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0, help="the proposals' random seed")
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pipe = rfcache.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    interval, warmup, nfc = interval_for_nfc(50, args.nfc, warmup=rfcache.get_adapter(pipe).taylorseer_warmup)
    budget = _fraction(pipe, lambda: _generate(pipe, 0, 0), interval, warmup)
    result = calibrate(pipe, run=RunSpec(steps=50, guidance=2.0), budget=budget, confirm=4, progress=False)
    step = result.profile if not result.profile.per_unit else result.alternative
    assert step is not None
    paths = [u.path for u in rfcache.get_adapter(pipe.transformer).units(pipe.transformer)]
    call = {"class_labels": list(range(8)), "num_inference_steps": 50, "guidance_scale": 2.0, "output_type": "pt"}

    def seeds() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(i) for i in range(8)]

    reference = pipe(**call, generator=seeds()).images

    def profile_of(rows: tuple[str, ...]) -> rfcache.Profile:
        if len(set(rows)) == 1:
            return dataclasses.replace(step, schedule=rows[0])
        return dataclasses.replace(
            step, schedule=rows_intersection(rows), unit_schedules=dict(zip(paths, rows, strict=True))
        )

    def real_error(params, pattern, *, rows):
        rfcache.enable(pipe, profile_of(rows))
        try:
            return relative_l2(pipe(**call, generator=seeds()).images, reference)
        finally:
            rfcache.disable(pipe)

    start_rows = (step.schedule,) * len(paths)
    params = {"predictor": step.method.predictor, "order": step.method.order}  # (real_error runs the profile's)
    start = Candidate(
        params, step.schedule, step.budget.achieved, real_error(params, step.schedule, rows=start_rows), -1
    )
    minimum = min_full_steps(step.method.predictor)
    moved = local_moves(
        start, len(paths), real_error, moves=args.moves, min_full=minimum, max_step_kinds=10**6, seed=args.seed
    )
    rows = moved.rows if moved is not None else start_rows
    print(
        f"NFC {nfc}, budget {budget:.4f}: step mask {step.method.predictor} m={step.method.order}; "
        f"calibration rel-L2 {start.error:.4f} -> {moved.error if moved else start.error:.4f}, "
        f"{len(step_kinds(rows))} step kinds"
    )
    inputs = [(i % 10, 9000 + i) for i in range(args.samples)]
    references = [_generate(pipe, label, seed) for label, seed in inputs]
    errors = {}
    for name, r in (("step mask", start_rows), ("local per-unit", rows)):
        rfcache.enable(pipe, profile_of(r))
        try:
            errors[name] = [
                relative_l2(_generate(pipe, *item), ref) for item, ref in zip(inputs, references, strict=True)
            ]
        finally:
            rfcache.disable(pipe)
        print(f"  {name:<15} test rel-L2 {mean_interval(errors[name]).format('.4f')}")
    ratio = paired_ratio(errors["local per-unit"], errors["step mask"])
    print(f"  local per-unit / step mask on test: {ratio.format('.3f')} {ratio.verdict()}")


if __name__ == "__main__":
    main()
