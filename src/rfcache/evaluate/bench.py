"""The method-comparison benchmark: every method on the same model, inputs and seeds, at matched cost.

For each target cost (an NFC of the interval schedules, or a FLOP fraction) and each method:

1. match the cost: interval methods take the target's NFC; methods with a continuous knob get it
   bisected (log scale, on ``tune_samples`` inputs that are not evaluated) until their measured
   FLOP fraction is nearest the target's;
2. generate every sample under one FLOP counter (:mod:`rfcache.evaluate.cost`) and compare the
   images with the full-compute images of the same seeds: relative L2 per sample (its mean with a
   95 % bootstrap interval, and the paired per-sample ratio to the ``reference`` method at the same
   cost, with its interval: :mod:`rfcache.stats`), PSNR, SSIM, and for the embedded digits model
   class accuracy and a Fréchet distance to the real digits;
3. time every (method, setting) in one process after a warm-up round, all interleaved, as the
   ratio to full compute.

The FLOP fraction every record reports is measured (transformer FLOPs in the denoising loop, cached
over full), so rfcache's methods and the peers are counted alike; rfcache's analytic module-FLOP
fraction is kept beside it.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.evaluate.cost import Measurement, measure_generation, step_fractions, time_interleaved
from rfcache.evaluate.methods import CALIBRATION_ITEMS, OURS, Applied, BenchContext, MethodSpec, Target, ours_method
from rfcache.evaluate.metrics import psnr, relative_l2, ssim
from rfcache.evaluate.peers import PEERS
from rfcache.evaluate.workload import TUNE_OFFSET, Workload, load_workload
from rfcache.models import get_adapter
from rfcache.runtime import get_session
from rfcache.schedules.masks import interval_for_nfc
from rfcache.stats import mean_interval, paired_ratio

__all__ = [
    "DEFAULT_METHODS",
    "BenchConfig",
    "BenchRecord",
    "BenchResult",
    "pair_with_reference",
    "run_bench",
    "swept_methods",
]

logger = logging.getLogger(__name__)

DEFAULT_METHODS = (
    "fora",
    "taylorseer-m1",
    "taylorseer-m2",
    "rfe-m1",
    "rfe-m2",
    "rcs",
    "rfc",
    "static",
    *PEERS,
)
_TUNE_STEPS = 10
_TUNE_TOLERANCE = 0.004


@dataclass(frozen=True)
class BenchConfig:
    """What to compare, on what, at which costs. ``budgets`` (FLOP fractions) replace ``nfc`` when given."""

    model: str = "toy"
    steps: int = 50
    nfc: tuple[int, ...] = (14, 10, 7)
    budgets: tuple[float, ...] = ()
    methods: tuple[str, ...] = DEFAULT_METHODS
    samples: int = 10
    tune_samples: int = 2
    repeats: int = 3
    calibrate_trials: int = 24
    reference: str = "taylorseer-m2"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    progress: bool = True
    seed: int = 1000  # evaluated sample i uses seed + i, tuning sample i seed + 500 + i
    run: Any = None  # a RunSpec: prompts, size, frames, guidance and other pipeline arguments of the workload


@dataclass
class BenchRecord:
    """One (method, setting): its cost and quality against full compute. ``nfc`` counts steps that
    spent more than half a full step's FLOPs (measured), averaged over samples.

    ``rel_l2`` is the mean of the per-sample ``rel_l2_samples`` with its 95 % bootstrap interval
    ``rel_l2_ci95``; ``ratio`` is the geometric mean of the per-sample ratios to the ``reference``
    method at the same setting, with ``ratio_ci95`` (the method is lower only when it lies below 1).
    """

    method: str
    setting: str
    source: str
    nfc: float
    target_fraction: float
    flops_fraction: float
    rel_l2: float
    psnr: float
    ssim: float
    speedup: float = math.nan
    seconds: float = math.nan
    state_mib: float = 0.0
    analytic_fraction: float | None = None
    class_accuracy: float | None = None
    frechet: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    step_fractions: list[float] = field(default_factory=list)
    skips_work: bool = True
    rel_l2_ci95: list[float | None] = field(default_factory=lambda: [None, None])
    rel_l2_samples: list[float] = field(default_factory=list)
    reference: str | None = None
    ratio: float | None = None
    ratio_ci95: list[float | None] = field(default_factory=lambda: [None, None])

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class BenchResult:
    """All records, the full-compute reference's own figures, and the methods that could not run."""

    model: str
    steps: int
    samples: int
    records: list[BenchRecord]
    reference: dict[str, Any]
    skipped: dict[str, str]


@dataclass
class _Run:
    spec: MethodSpec
    target: Target
    knob: float | None


def _resolve(names: tuple[str, ...]) -> list[MethodSpec]:
    specs = []
    for name in names:
        if name == "full":
            continue
        if name in PEERS:
            specs.append(PEERS[name])
        elif name in OURS or name.startswith("profile:"):
            specs.append(ours_method(name))
        else:
            known = ", ".join(["full", *DEFAULT_METHODS, "profile:NAME"])
            raise RfcacheError(f"--methods: unknown method {name!r}; expected some of {known}")
    return specs


def swept_methods(names: tuple[str, ...]) -> list[str]:
    """The methods among ``names`` with a continuous knob the benchmark sweeps on ``tune_samples`` inputs
    to match each target's cost (the others take the target's NFC, or run at their profile's cost)."""
    return [spec.name for spec in _resolve(names) if spec.knob is not None]


def _check_profiles(specs: list[MethodSpec], work: Workload) -> None:
    """A ``profile:NAME`` method made for another model, scheduler or step count is refused before
    any work (one line), not skipped after the reference runs."""
    from rfcache.models import get_adapter
    from rfcache.runtime.api import profile_config
    from rfcache.schedules import load_profile

    for spec in specs:
        if not spec.name.startswith("profile:"):
            continue
        profile = load_profile(spec.name.removeprefix("profile:"))
        try:
            profile_config(
                work.transformer, get_adapter(work.transformer), profile, getattr(work.pipe, "scheduler", None)
            )
            profile.check_sampling(num_steps=work.steps)
        except RfcacheError as exc:
            raise RfcacheError(f"--methods {spec.name}: {exc}") from None


class _Bench:
    def __init__(self, cfg: BenchConfig, workload: Workload) -> None:
        self.cfg, self.work = cfg, workload
        self.ctx = BenchContext(
            steps=cfg.steps,
            calibrate=lambda: self.work.generate(TUNE_OFFSET),
            calibrate_trials=cfg.calibrate_trials,
            call=dict(workload.base_kwargs),
            prompts=list(workload.calibration_prompts or workload.prompts) or None,
            calls_per_step=lambda: max(1, len(self.full_run(self.tune_idx[0]).call_flops) // cfg.steps),
        )
        self.eval_idx = list(range(cfg.samples))
        self.tune_idx = [TUNE_OFFSET + i for i in range(cfg.tune_samples)]
        self.full: dict[int, Measurement] = {}

    # -- measuring --------------------------------------------------------------------------------

    def measure(self, index: int, applied: Applied | None = None) -> Measurement:
        if applied is not None:
            applied.reset()
        return measure_generation(
            self.work.transformer,
            lambda: self.work.generate(index),
            state_roots=applied.state_roots if applied is not None else None,
        )

    def full_run(self, index: int) -> Measurement:
        if index not in self.full:
            self.full[index] = self.measure(index)
        return self.full[index]

    def fraction(self, measurements: dict[int, Measurement]) -> float:
        return sum(m.flops for m in measurements.values()) / sum(self.full_run(i).flops for i in measurements)

    def run(self, spec: MethodSpec, target: Target, knob: float | None, indices: list[int]) -> tuple:
        applied = spec.apply(self.work.pipe, target, knob, self.ctx)
        try:
            measured, analytic = {}, []
            for i in indices:
                measured[i] = self.measure(i, applied)
                if spec.source == "rfcache":
                    analytic.append(get_session(self.work.pipe).summary().flops_fraction)
        finally:
            applied.remove()
        return applied, measured, (statistics.mean(analytic) if analytic else None)

    # -- matching the cost ------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        # any interval method measures the target's fraction (the counter sees the same matmuls); RFE m=2 has
        # the costliest predictor, so its analytic fraction is a budget under which a calibrated profile can
        # afford the target's NFC whatever predictor its search picks
        probe = ours_method("rfe-m2")
        i = self.tune_idx[0]
        if not self.cfg.budgets:
            out = []
            for nfc in self.cfg.nfc:
                _, _, got = interval_for_nfc(self.cfg.steps, nfc, warmup=get_adapter(self.work.pipe).taylorseer_warmup)
                target = Target(f"NFC {got}", got, 1.0, 1.0)
                _, measured, analytic = self.run(probe, target, None, [i])
                out.append(Target(f"NFC {got}", got, self.fraction(measured), analytic or 1.0))
            return out
        # FLOP fractions: the interval NFC whose measured fraction is nearest below, from one probe
        mid = max(self.cfg.steps // 2, 1)
        _, measured, _ = self.run(probe, Target("probe", mid, 1.0, 1.0), None, [i])
        full_step = self.full_run(i).flops / self.cfg.steps
        cached_step = (measured[i].flops - mid * full_step) / (self.cfg.steps - mid)
        out = []
        for budget in self.cfg.budgets:
            nfc = (budget * self.cfg.steps * full_step - self.cfg.steps * cached_step) / (full_step - cached_step)
            nfc = max(1, min(self.cfg.steps, math.floor(nfc + 1e-9)))
            out.append(Target(f"budget {budget:g}", nfc, budget, budget))
        return out

    def tune(self, spec: MethodSpec, target: Target) -> float:
        """Bisect the knob (log scale, higher = cheaper) to the target's measured FLOP fraction."""
        lo, hi = (math.log(v) for v in spec.knob_range)
        best: tuple[float, float] | None = None
        for _ in range(_TUNE_STEPS):
            knob = math.exp((lo + hi) / 2)
            _, measured, _ = self.run(spec, target, knob, self.tune_idx)
            got = self.fraction(measured)
            if best is None or abs(got - target.fraction) < abs(best[1] - target.fraction):
                best = (knob, got)
            if abs(got - target.fraction) <= _TUNE_TOLERANCE:
                break
            lo, hi = (math.log(knob), hi) if got > target.fraction else (lo, math.log(knob))
        assert best is not None
        logger.info("%s at %s: %s=%.4g gives fraction %.3f", spec.name, target.label, spec.knob, *best)
        return best[0]

    # -- evaluating -------------------------------------------------------------------------------

    def evaluate(self, spec: MethodSpec, target: Target, knob: float | None) -> BenchRecord:
        applied, measured, analytic = self.run(spec, target, knob, self.eval_idx)
        out = torch.cat([measured[i].images for i in self.eval_idx])
        ref = torch.cat([self.full_run(i).images for i in self.eval_idx])
        patterns = [step_fractions(measured[i], self.full_run(i)) for i in self.eval_idx]
        params = dict(applied.params)
        if spec.knob is not None:
            params[spec.knob] = float(f"{knob:.4g}")
        fraction = self.fraction(measured)
        per_sample = [relative_l2(measured[i].images, self.full_run(i).images) for i in self.eval_idx]
        error = mean_interval(per_sample)
        record = BenchRecord(
            method=spec.name,
            setting=target.label,
            source=spec.source,
            nfc=statistics.mean(sum(f > 0.5 for f in p) for p in patterns),
            target_fraction=target.fraction,
            flops_fraction=fraction,
            rel_l2=error.value,
            psnr=psnr(out, ref),
            ssim=ssim(out, ref),
            state_mib=max(m.state_bytes for m in measured.values()) / 2**20,
            analytic_fraction=analytic,
            params=params,
            step_fractions=[round(f, 4) for f in patterns[0]],
            skips_work=fraction < 0.99,
            rel_l2_ci95=error.ci95,
            rel_l2_samples=per_sample,
        )
        if not record.skips_work:
            logger.warning("%s at %s spent %.3f of full FLOPs: it did not skip work", spec.name, target.label, fraction)
        record.class_accuracy, record.frechet = self.digits_scores(out)
        return record

    def digits_scores(self, images: torch.Tensor) -> tuple[float | None, float | None]:
        """Class accuracy and Fréchet distance to the real digits (embedded model only)."""
        if not self.work.is_digits:
            return None, None
        from rfcache.evaluate.digits import class_agreement, digits_frechet_distance

        labels = [self.work.label(i) for i in self.eval_idx]
        frechet = digits_frechet_distance(images) if len(images) > 1 else None  # needs a covariance
        return class_agreement(images, labels), frechet

    def timings(self, runs: list[_Run], failures: dict[str, str]) -> dict[int, float]:
        """Seconds of one generation of sample 0 per run (and key -1 for full compute), interleaved.

        A run that fails here gets ``nan`` and its error goes to ``failures`` under its index."""

        def applier(run: _Run) -> Callable[[], Any]:
            def apply() -> Callable[[], None]:
                applied = run.spec.apply(self.work.pipe, run.target, run.knob, self.ctx)
                applied.reset()
                return applied.remove

            return apply

        generate = lambda: self.work.generate(self.eval_idx[0])  # noqa: E731
        entries = [("-1", lambda: None, generate)]
        entries += [(str(k), applier(run), generate) for k, run in enumerate(runs)]
        with torch.no_grad():
            seconds = time_interleaved(entries, repeats=self.cfg.repeats, failures=failures)
        return {int(k): v for k, v in seconds.items()}


def run_bench(cfg: BenchConfig, *, workload: Workload | None = None) -> BenchResult:
    """Compare ``cfg.methods`` with full compute on ``cfg.model`` at every target cost."""
    if cfg.steps < 2 or cfg.samples < 1 or cfg.tune_samples < 1 or cfg.repeats < 0:
        raise RfcacheError("--steps must be >= 2, --samples and --tune-samples >= 1, --repeats >= 0")
    if any(not 0 < b <= 1 for b in cfg.budgets):
        raise RfcacheError(f"--budget values must be in (0, 1], got {','.join(map(str, cfg.budgets))}")
    if not cfg.budgets and any(not 1 <= n <= cfg.steps for n in cfg.nfc):
        raise RfcacheError(f"--nfc values must be in 1..{cfg.steps}, got {','.join(map(str, cfg.nfc))}")
    calibration = sum(CALIBRATION_ITEMS)
    if cfg.seed < calibration:
        raise RfcacheError(
            f"--seed {cfg.seed}: the evaluated samples' seeds would overlap the seeds 0..{calibration - 1} "
            f"calibration uses; give --seed {calibration} or more"
        )
    specs = _resolve(cfg.methods)
    skipped: dict[str, str] = {}
    for spec in list(specs):
        reason = spec.check()
        if reason is not None:
            skipped[spec.name] = reason
            specs.remove(spec)
            logger.warning("skipping %s: %s", spec.name, reason)
    work = workload or load_workload(cfg.model, steps=cfg.steps, device=cfg.device, dtype=cfg.dtype, run=cfg.run)
    work.seed = cfg.seed
    _check_profiles(specs, work)
    bench = _Bench(cfg, work)
    from tqdm.auto import tqdm

    with torch.no_grad():
        for i in tqdm(bench.eval_idx, desc="full compute", disable=not cfg.progress, leave=False):
            bench.full_run(i)
        targets = bench.targets()
        shipped = [spec for spec in specs if spec.name.startswith("profile:")]  # each runs once, at its own cost
        jobs = [(spec, t) for t in targets for spec in specs if spec not in shipped]
        jobs += [(spec, Target(spec.name.removeprefix("profile:"), 0, math.nan, math.nan)) for spec in shipped]
        records: list[BenchRecord] = []
        runs: list[_Run] = []
        bar = tqdm(jobs, desc="methods", disable=not cfg.progress)
        for spec, target in bar:
            bar.set_postfix_str(f"{spec.name} @ {target.label}")
            if spec.name in skipped:  # failed at an earlier target
                continue
            try:
                knob = bench.tune(spec, target) if spec.knob is not None else None
                records.append(bench.evaluate(spec, target, knob))
                runs.append(_Run(spec, target, knob))
            except Exception as exc:  # reported in the table and the log, so one failure does not void a long run
                logger.exception("%s failed at %s", spec.name, target.label)
                skipped[spec.name] = f"failed at {target.label}: {type(exc).__name__}: {exc}"
                logger.warning("skipping %s: %s", spec.name, skipped[spec.name])
        pair_with_reference(records, cfg.reference)
        accuracy, frechet = bench.digits_scores(torch.cat([bench.full_run(i).images for i in bench.eval_idx]))
        reference: dict[str, Any] = {"flops": bench.full_run(0).flops, "class_accuracy": accuracy, "frechet": frechet}
        if cfg.repeats > 0:
            failures: dict[str, str] = {}
            seconds = bench.timings(runs, failures)
            reference["seconds"] = seconds[-1]
            for k, record in enumerate(records):
                record.seconds = seconds[k]
                record.speedup = seconds[-1] / seconds[k]
                if str(k) in failures:
                    skipped[f"{record.method} timing"] = f"failed at {record.setting}: {failures[str(k)]}"
                    logger.warning("timing %s at %s failed: %s", record.method, record.setting, failures[str(k)])
    return BenchResult(work.name, cfg.steps, cfg.samples, records, reference, skipped)


def pair_with_reference(records: list[BenchRecord], reference: str) -> None:
    """Set each record's paired per-sample ratio to the ``reference`` method's record at its setting."""
    base = {r.setting: r for r in records if r.method == reference}
    for record in records:
        ref = base.get(record.setting)
        if ref is None or len(ref.rel_l2_samples) != len(record.rel_l2_samples) or not record.rel_l2_samples:
            continue
        ratio = paired_ratio(record.rel_l2_samples, ref.rel_l2_samples)
        record.reference, record.ratio, record.ratio_ci95 = reference, ratio.value, ratio.ci95
