"""`calibrate`: record, fit, search, confirm, select, freeze into a `Profile`, report on test inputs.

Three disjoint input sets (:mod:`rfcache.calibrate.inputs`): *calibration* inputs for recording,
fits, search and the confirmation runs; *selection* inputs to choose among the confirmed
candidates; *test* inputs, reported only (the profile's and TaylorSeer's error, per sample, with
intervals), never used for any choice.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfcache.calibrate.errormodel import ErrorModel
from rfcache.calibrate.floor import check_budget_floor
from rfcache.calibrate.inputs import InputSets, split_inputs
from rfcache.calibrate.perunit import check_max_step_kinds, depth_moves, local_moves, unit_candidates, unit_layout
from rfcache.calibrate.scoring import Scorer, confirm_candidates, fit_scorer, ratio_choice, run_candidates, run_key
from rfcache.calibrate.search import (
    Candidate,
    check_budget,
    completed_trials,
    error_model_runs,
    max_nfc,
    search_schedules,
)
from rfcache.calibrate.trace import (
    RatioFit,
    RatioStepFit,
    Trace,
    fit_ratio_steps,
    fit_ratios,
    record_trace,
    step_unit_costs,
)
from rfcache.errors import RfcacheError
from rfcache.models import get_adapter, get_transformer
from rfcache.runtime import disable, enable, summary
from rfcache.runtime.experts import boundary_step, check_both_experts_run, expert_models
from rfcache.runtime.identity import model_identity
from rfcache.runtime.runspec import RunSpec, captured_call, conditioning, pipeline_call, run_setup
from rfcache.schedules import Budget, Expert, InputItem, MethodSpec, Profile, Provenance, SamplingSetup
from rfcache.schedules.masks import interval_for_nfc, min_full_steps
from rfcache.stats import Interval, mean_interval, paired_ratio

__all__ = ["CalibrationResult", "calibrate", "default_prompts", "input_sets", "load_shards", "record_shard"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationResult:
    """The frozen profile and the figures the closing table reports.

    ``test`` and ``taylorseer``: mean per-sample rel-L2 on the test inputs with 95 % bootstrap
    intervals; ``ratio``: the paired per-sample ratio profile / TaylorSeer with its interval.
    ``alternative``: the other family's best profile on the selection inputs (the step mask's where
    a per-unit profile won, and the reverse; None without per-unit candidates), not tested: what a
    calibration restricted to that family would have written.
    """

    profile: Profile
    test: Interval
    taylorseer: Interval
    ratio: Interval
    seconds: float
    candidates: tuple[Candidate, ...]
    fit: RatioFit
    error_model: ErrorModel
    confirmed: tuple[Candidate, ...]
    inputs: InputSets
    step_fit: RatioStepFit | None = None
    unit_confirmed: tuple[Candidate, ...] = ()
    alternative: Profile | None = None

    @property
    def test_rel_l2(self) -> float:
        return self.test.value

    @property
    def taylorseer_rel_l2(self) -> float:
        return self.taylorseer.value


def default_prompts() -> list[str]:
    """Calibration prompts for text-conditioned models when no prompt file is given."""
    return [
        "a photo of a cat on a sofa",
        "a red sports car on a mountain road",
        "a bowl of fruit on a wooden table, studio light",
        "an astronaut riding a horse, digital art",
        "a snowy forest at dawn",
        "a portrait of an old man, oil painting",
        "a city skyline at night with neon lights",
        "a lighthouse on a cliff during a storm",
        "a plate of pasta with basil",
        "a watercolor painting of a sailboat",
        "a close-up of a hummingbird",
        "a cozy library with tall shelves",
    ]


# the run description's fields under the keyword names calibrate() and record_shard() took before ``run=``
_RUN_KEYWORDS = {
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "prompts": "prompts",
    "negative_prompt": "negative_prompt",
    "height": "height",
    "width": "width",
    "num_frames": "num_frames",
    "call_args": "call_args",
    "seed": "seed",
}


def calibrate(
    pipe: Any,
    *,
    run: RunSpec | None = None,
    budget: float = 0.4,
    samples: int = 8,
    selection: int = 4,
    test: int = 8,
    allow_overlap: bool = False,
    trials: int = 200,
    confirm: int = 4,
    storage: str | None = None,
    study_name: str | None = None,
    name: str = "profile",
    progress: bool = True,
    trace: Trace | None = None,
    record_batch: int | None = None,
    report: Callable[[str], None] | None = None,
    per_unit: bool = True,
    max_step_kinds: int | None = None,
    local_moves: int = 0,
    **run_keywords: Any,
) -> CalibrationResult:
    """Calibrate a static cache schedule for ``pipe`` that spends at most ``budget`` of the module FLOPs.

    Example:
        >>> pipe = rfcache.load_pipeline("toy")
        >>> result = rfcache.calibrate(pipe, run=RunSpec(steps=50), budget=0.4)
        >>> result.profile.save("toy.yaml")

    ``run`` describes the pipeline call (:class:`~rfcache.runtime.runspec.RunSpec`: prompts, size,
    frames, steps, guidance, seed, other pipeline keywords), as the CLI's flags do and as
    ``enable(run=)`` takes it; the profile records it. The keywords it replaces
    (``num_inference_steps``, ``guidance_scale``, ``prompts``, ``negative_prompt``, ``height``,
    ``width``, ``num_frames``, ``call_args``, ``seed``) are still accepted instead of ``run``.
    ``trace`` (merged shards from :func:`record_shard`) replaces the in-process recording.
    ``record_batch`` records at most that many inputs per pipeline call (bounds memory). ``report``
    receives the estimated recording time, measured from a first timed transformer step, before
    recording starts.

    The stages: the inputs (:func:`input_sets`), the recording of full-compute trajectories, the
    fits (relation ratios per unit, the error model from a few real runs of the seed schedules),
    the search, the confirmation and selection, the freezing. The search scores candidates with the
    error model (:mod:`rfcache.calibrate.errormodel`); the ``confirm`` best distinct candidates are
    then run for real on the ``samples`` calibration inputs, the best three of those on the
    ``selection`` inputs, and the best of those is frozen. Its error and TaylorSeer's (m=2, the
    interval schedule nearest its NFC) are then measured on the ``test`` inputs, which no choice
    saw. Every input has its own seed (``seed``, ``seed + 1``, ...); prompts never repeat across
    the sets unless ``allow_overlap``.

    ``per_unit`` also searches per-unit schedules (:mod:`rfcache.calibrate.perunit`, kept where they win),
    ``max_step_kinds`` bounds their kinds, ``local_moves`` adds real-run moves (``unit-local``)."""
    run = _run_description(run, run_keywords)
    _check_settings(run, budget, (samples, selection, test, trials), (confirm, local_moves), per_unit, max_step_kinds)
    start = time.perf_counter()
    job = _inputs(pipe, run, (samples, selection, test), allow_overlap=allow_overlap, progress=progress)
    resolution = _first_step(job, report, budget)
    fitted = _fitting(job, _recording(job, trace, record_batch), budget)
    measured = fit_scorer(
        fitted.scorer, error_model_runs(run.steps, budget, expert_starts=fitted.starts), fitted.real_error
    )
    study, candidates = _search(job, fitted, budget, trials=trials, storage=storage, study_name=study_name)
    confirmed, diagnostics = confirm_candidates(fitted.scorer, candidates, measured, fitted.real_error, count=confirm)
    units = _unit_search(
        fitted, confirmed, measured, budget, enabled=per_unit, count=confirm, kinds=max_step_kinds, local=local_moves
    )
    frozen = [
        _freeze(job, fitted, cand, budget, name=name, trials=completed_trials(study), resolution=resolution)
        for cand in [*confirmed[:3], *units[:2]]  # the best few of each family, chosen on the selection inputs
    ]
    profile, alternative = _select(job, frozen, diagnostics, budget)
    profile, (test_err, ts_err, ratio) = _report_on_test(job, profile)
    assert fitted.scorer.model is not None
    seconds, model, fit = time.perf_counter() - start, fitted.scorer.model, fitted.fits[0]
    return CalibrationResult(
        profile, test_err, ts_err, ratio, seconds, tuple(candidates), fit[0], model, tuple(confirmed), job.sets, fit[1],
        tuple(units), alternative,
    )  # fmt: skip


def _check_settings(
    run: RunSpec,
    budget: float,
    sizes: tuple[int, ...],
    counts: tuple[int, int],
    per_unit: bool,
    max_step_kinds: int | None,
) -> None:
    """Refuse settings that cannot calibrate, before any work: input set sizes and trials (>= 1), confirm
    and local moves (>= 0), steps (>= 2), the budget, the kind limit, local moves without per-unit."""
    check_budget(budget)
    check_max_step_kinds(max_step_kinds)
    if min(sizes) < 1 or min(counts) < 0 or run.steps < 2:
        raise RfcacheError(
            "samples, selection, test and trials must be >= 1, confirm and local_moves >= 0 and steps >= 2"
        )
    if counts[1] and not per_unit:
        raise RfcacheError("local_moves makes per-unit candidates: it needs per_unit=True")


def _run_description(run: RunSpec | None, keywords: dict[str, Any]) -> RunSpec:
    """``run``, or the run the keywords it replaces describe (never both)."""
    unknown = sorted(set(keywords) - set(_RUN_KEYWORDS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    if run is not None:
        if keywords:
            raise RfcacheError(f"give either run= or {', '.join(sorted(keywords))}, not both")
        return run
    fields = {_RUN_KEYWORDS[k]: v for k, v in keywords.items() if v is not None}
    fields["prompts"] = tuple(fields.get("prompts") or ())
    fields["call_args"] = dict(fields.get("call_args") or {})
    return RunSpec(**fields)


@dataclass
class _Job:
    """One calibration's pipeline, run description and inputs: the runs every stage makes."""

    pipe: Any
    run: RunSpec
    sets: InputSets
    common: dict[str, Any]  # the pipeline call's arguments besides the inputs and their noise
    progress: bool

    @property
    def model(self) -> torch.nn.Module:
        return get_transformer(self.pipe)

    def call(self, items: tuple[InputItem, ...]) -> dict[str, Any]:
        """The pipeline call's arguments for ``items``, each with its own noise."""
        return {**_call(items), **self.common, "generator": _generators(items)}

    def images(self, items: tuple[InputItem, ...]) -> torch.Tensor:
        """The pipeline's output for ``items`` as it is configured now (full compute, or cached)."""
        return _images(pipeline_call(self.pipe, self.call(items), what="calibration"))

    def cached(self, items: tuple[InputItem, ...], *args: Any, **cache: Any) -> tuple[torch.Tensor, Any]:
        """The output for ``items`` with the cache enabled as ``enable(pipe, *args, **cache)``, and its summary."""
        enable(self.pipe, *args, **cache)
        try:
            return self.images(items), summary(self.pipe)
        finally:
            disable(self.pipe)


def _inputs(pipe: Any, run: RunSpec, sizes: tuple[int, int, int], *, allow_overlap: bool, progress: bool) -> _Job:
    """Stage 1, the inputs: the calibration, selection and test sets and the common call arguments."""
    check_both_experts_run(pipe, run.steps)
    get_adapter(get_transformer(pipe))  # an unsupported model fails before anything runs
    common = {**run.call_kwargs(pipe), "output_type": "np"}
    prompts = list(run.prompts) or None
    sets = input_sets(pipe, prompts, sizes, seed=run.seed, allow_overlap=allow_overlap)
    return _Job(pipe, run, sets, common, progress)


def _first_step(job: _Job, report: Callable[[str], None] | None, budget: float) -> Any:
    """One timed transformer step on one input: checks the run and the budget (against the smallest
    feasible one, from the units' costs in this step) before anything is recorded or stored, and
    estimates the recording time; returns the input resolution the transformer saw."""
    items = job.sets.calibration
    call: dict[str, Any] = {}

    def one_step() -> None:
        with captured_call(job.pipe) as captured:
            pipeline_call(job.pipe, job.call(items[:1]), what="calibration")
        call.update(captured)

    costs = step_unit_costs(job.pipe, one_step)
    steps = job.run.steps
    second = boundary_step(job.pipe, steps)
    check_budget_floor(budget, costs, steps, expert_starts=() if second is None else (second,))
    line = (
        f"estimated recording time {call['seconds'] * steps * len(items):.0f} s ({call['seconds'] * 1e3:.0f} ms "
        f"per step and input x {steps} steps x {len(items)} inputs); the search and confirmation runs add about "
        "as much again"
    )
    logger.info("%s", line)
    if report is not None:
        report(line)
    return call["resolution"]


def _recording(job: _Job, trace: Trace | None, record_batch: int | None) -> tuple[Trace, torch.Tensor]:
    """Stage 2, the recording: the full-compute trace of the calibration inputs, and their output."""
    items = job.sets.calibration
    if trace is None and (record_batch is None or record_batch >= len(items)):
        with _progress(job.pipe, job.progress, "recording"):
            trace, reference_out = _record(job.pipe, job.call(items))
        return trace, _images(reference_out)
    # recorded in groups or elsewhere (shards); the search needs this machine's full-compute output
    if trace is None:
        assert record_batch is not None
        if record_batch < 1:
            raise RfcacheError(f"record_batch must be >= 1, got {record_batch}")
        groups = []
        for g in range(0, len(items), record_batch):
            group = items[g : g + record_batch]
            with _progress(job.pipe, job.progress, f"recording {g + 1}-{g + len(group)} of {len(items)}"):
                groups.append(_record(job.pipe, job.call(group))[0])
        trace = Trace.merge(groups)
    return trace, job.images(items)


@dataclass
class _Fitted:
    """What the fits give the later stages: per expert ratio fits, the error model's scorer, and
    real runs of candidate schedules against the full-compute output."""

    job: _Job
    trace: Trace
    reference: torch.Tensor
    components: list[str]
    spans: list[tuple[int, int]]
    fits: list[tuple[RatioFit, RatioStepFit]]
    scorer: Scorer

    @property
    def starts(self) -> tuple[int, ...]:
        """Where each expert after the first starts."""
        return tuple(first for first, _ in self.spans[1:])

    def real_error(self, params: dict[str, Any], pattern: str, rows: tuple[str, ...] | None = None) -> float:
        """A real run of the static ``pattern`` (per-unit: its ``rows``, one per unit) with the candidate's
        predictor on the calibration inputs."""
        cache: dict[str, Any] = {"predictor": params["predictor"], "order": int(params["order"])}
        per_expert = [_calibrated_ratios(params, f, sf) for f, sf in self.fits]
        if per_expert[0][0]:
            ratios = [r for r, _ in per_expert]
            slopes = [sl or None for _, sl in per_expert]
            if len(per_expert) == 1:
                cache.update(ratios=ratios[0], ratio_slopes=slopes[0])
            else:  # given per expert
                cache.update(
                    ratios=dict(zip(self.components, ratios, strict=True)),
                    ratio_slopes=dict(zip(self.components, slopes, strict=True)),
                )
        mask = tuple(c == "C" for c in pattern)
        if rows is not None:
            cache["unit_masks"] = tuple(tuple(c == "C" for c in row) for row in rows)
        out, _ = self.job.cached(self.job.sets.calibration, method="static", mask=mask, **cache)
        return _rel_l2(out, self.reference)


def _fitting(job: _Job, recorded: tuple[Trace, torch.Tensor], budget: float) -> _Fitted:
    """Stage 3, the fits: each expert's relation ratios from its own steps (one transformer: the whole
    trace), and the error model's forecast errors replayed on the trace."""
    trace, reference = recorded
    components = [component for component, _ in expert_models(job.pipe)]
    spans = trace.expert_spans()
    if len(spans) != len(components):
        raise RfcacheError(f"the trace has {len(spans)} expert(s), {type(job.pipe).__name__} has {len(components)}")
    fits = [(fit_ratios(view), fit_ratio_steps(view)) for view in _expert_views(trace)]
    for component, (f, _) in zip(components, fits, strict=True):
        if f.poor():
            where = f" of {component}" if len(fits) > 1 else ""
            logger.warning(
                "relation ratio fits poorly (R² < 0.5) for %d of %d units%s", len(f.poor()), len(f.ratios), where
            )
    steps = job.run.steps
    scorer = Scorer(
        trace,
        ratios=_per_step(spans, [np.asarray(f.ratios) for f, _ in fits], steps),
        step_ratios=_per_step(spans, [sf.table(steps) for _, sf in fits], steps),
        max_nfc=max_nfc(budget, steps),
    )
    return _Fitted(job, trace, reference, components, spans, fits, scorer)


def _search(
    job: _Job, fitted: _Fitted, budget: float, *, trials: int, storage: str | None, study_name: str | None
) -> tuple[Any, list[Candidate]]:
    """Stage 4, the search: Optuna over the schedule families, scored by the error model; the feasible
    candidates, best first. The study is named for the model, steps and budget and checked against them."""
    identity = model_identity(job.model, get_adapter(job.model))
    steps = job.run.steps
    study_identity = {
        "config_hash": identity.config_hash,
        "steps": str(steps),
        "budget": repr(budget),
        "inputs": _hash(job.sets.calibration, repr(sorted(job.common.items()))),
        "objective": "error-model estimate v2",  # v2: interval schedules placed as TaylorSeer places them,
    }
    study, candidates = search_schedules(
        fitted.scorer.estimate,
        budget=budget,
        num_steps=steps,
        trials=trials,
        storage=storage,
        study_name=study_name or f"rfcache-{identity.config_hash}-s{steps}-b{budget}",
        seed=job.run.seed,
        identity=study_identity,
        progress=job.progress,
        expert_starts=fitted.starts,
    )
    if not candidates:
        raise RfcacheError(f"no schedule within budget {budget} was found in {completed_trials(study)} trials")
    return study, candidates


def _unit_search(
    fitted: _Fitted,
    confirmed: list[Candidate],
    measured: dict[tuple, float],
    budget: float,
    *,
    enabled: bool = True,
    count: int,
    kinds: int | None,
    local: int = 0,
) -> list[Candidate]:
    """Stage 4b, the per-unit family: its candidates for the predictor settings of the two best confirmed
    step masks, the ``count`` best by estimate run for real on the calibration inputs, then the depth moves
    from the best of those, and ``local`` real-run moves from the best confirmed step mask (``unit-local``);
    all run, best measured first (none where not ``enabled``, or on a two-expert pipeline)."""
    if not enabled:
        return []
    if len(fitted.spans) > 1:
        logger.info("per-unit schedules are not searched on two-expert pipelines yet: step masks only")
        return []
    layout = unit_layout(fitted.job.model, fitted.trace)
    settings: list[dict[str, Any]] = []
    for cand in confirmed:
        setting = {k: cand.params[k] for k in ("predictor", "order", "calibrated", "ratio_form") if k in cand.params}
        if setting not in settings and len(settings) < 2:
            settings.append(setting)
    pool = unit_candidates(fitted.scorer, layout, settings, budget, max_step_kinds=kinds)
    ran, _ = run_candidates(pool, measured, fitted.real_error, count=count)
    if ran:
        moves = depth_moves(fitted.scorer, layout, ran[0], budget, max_step_kinds=kinds)
        ran += run_candidates(moves, measured, fitted.real_error, count=len(moves))[0]
    if local and confirmed:
        start = confirmed[0]
        minimum = min_full_steps(start.params["predictor"])
        moved = local_moves(
            start,
            len(layout.paths),
            fitted.real_error,
            moves=local,
            min_full=minimum,
            max_step_kinds=kinds,
            seed=fitted.job.run.seed,
        )
        ran += [moved] if moved is not None else []
    unique = {run_key(c.params, c.pattern, c.rows): c for c in ran}
    return sorted(unique.values(), key=lambda c: c.error)


def _freeze(
    job: _Job, fitted: _Fitted, cand: Candidate, budget: float, *, name: str, trials: int, resolution: Any
) -> Profile:
    """Stage 6, the freezing: a candidate's pattern and coefficients as a profile, with the setup it
    was calibrated for (each expert's entry for a two-expert pipeline)."""
    sampling = run_setup(job.pipe, job.run, resolution)
    one = replace(sampling, boundary_step=None)  # the first expert's profile, then each expert's entry
    identity = model_identity(job.model, get_adapter(job.model))
    profile = _profile(name, identity, one, cand, fitted.fits, budget, job.run.seed, trials, job.sets)
    if cand.rows is not None:
        profile = replace(profile, **_unit_fields(cand, unit_layout(job.model, fitted.trace), fitted.trace))
    profile = _with_experts(profile, job.pipe, sampling, fitted.spans, cand.params, fitted.fits)
    dtype = str(next(job.model.parameters()).dtype).removeprefix("torch.")  # what the user calibrated in (--dtype)
    return replace(profile, provenance=replace(profile.provenance, dtype=dtype))


def _unit_fields(cand: Candidate, layout: Any, trace: Trace) -> dict[str, Any]:
    """A per-unit candidate's ``unit_schedules`` (one row per unit path; per kind group for ``unit-kind``),
    ``unit_groups`` and ``unit_costs`` (each unit's analytic FLOPs per call, from the trace)."""
    assert cand.rows is not None and trace.unit_costs is not None
    costs = {path: float(trace.unit_costs[u, 0]) for u, path in enumerate(layout.paths)}
    if cand.params.get("family") != "unit-kind":
        return {"unit_schedules": dict(zip(layout.paths, cand.rows, strict=True)), "unit_costs": costs}
    groups: dict[str, tuple[str, ...]] = {}
    schedules: dict[str, str] = {}
    for kind, path, row in zip(layout.kinds, layout.paths, cand.rows, strict=True):
        groups[kind] = (*groups.get(kind, ()), path)
        schedules[kind] = row
    return {"unit_schedules": schedules, "unit_groups": groups, "unit_costs": costs}


def _select(
    job: _Job, frozen: list[Profile], diagnostics: dict[str, float], budget: float
) -> tuple[Profile, Profile | None]:
    """Stage 5, the selection among the confirmed candidates of both families: the frozen profile with
    the lowest error on the selection inputs (a tie keeps the step mask, frozen first), its achieved
    budget measured there; each family's best selection error is recorded in the diagnostics. Also
    the other family's best, the same way (None where only one family was frozen)."""
    selection_reference = job.images(job.sets.selection)
    scored: list[tuple[float, Profile, float]] = []
    for profile in frozen:
        out, s = job.cached(job.sets.selection, profile)
        scored.append((_rel_l2(out, selection_reference), profile, s.flops_fraction))
    compare = {"selection_rel_l2_step_mask": min(e for e, p, _ in scored if not p.per_unit)}
    if any(p.per_unit for _, p, _ in scored):
        compare["selection_rel_l2_per_unit"] = min(e for e, p, _ in scored if p.per_unit)
    best = min(scored, key=lambda t: t[0])
    if "selection_rel_l2_per_unit" in compare:
        compare["per_unit_won"] = float(best[1].per_unit)
    other = [t for t in scored if t[1].per_unit != best[1].per_unit]

    def frozen_as(err: float, profile: Profile, achieved: float) -> Profile:
        return replace(
            profile,
            budget=Budget(budget, achieved),
            quality={**profile.quality, "selection_rel_l2": err},
            diagnostics={**profile.diagnostics, **diagnostics, **compare},
        )

    return frozen_as(*best), (frozen_as(*min(other, key=lambda t: t[0])) if other else None)


def _report_on_test(job: _Job, profile: Profile) -> tuple[Profile, tuple[Interval, Interval, Interval]]:
    """Reported only, never used for a choice: the profile's and TaylorSeer's error on the test inputs
    (TaylorSeer m=2 at the interval schedule nearest the profile's NFC), and their paired ratio."""
    test_reference = job.images(job.sets.test)
    out, _ = job.cached(job.sets.test, profile)
    test_errors = _rel_l2_per_sample(out, test_reference)
    adapter = get_adapter(job.model)
    # the interval schedule of the profile's full steps (per-unit: of its computed share of the FLOPs)
    nfc = max(1, round(profile.computed_fraction() * job.run.steps))
    ts_interval, ts_warmup, ts_nfc = interval_for_nfc(job.run.steps, nfc, warmup=adapter.taylorseer_warmup)
    out, _ = job.cached(job.sets.test, method="taylorseer", order=2, interval=ts_interval, warmup=ts_warmup)
    ts_errors = _rel_l2_per_sample(out, test_reference)
    test_err, ts_err, ratio = mean_interval(test_errors), mean_interval(ts_errors), paired_ratio(test_errors, ts_errors)
    reported = {
        **_interval_fields("test_rel_l2", test_err),
        **_interval_fields("taylorseer_rel_l2", ts_err),
        "taylorseer_nfc": float(ts_nfc),
        "taylorseer_warmup": float(ts_warmup),
        **_interval_fields("ratio_to_taylorseer", ratio),
    }
    return replace(profile, quality={**profile.quality, **reported}), (test_err, ts_err, ratio)


def input_sets(
    pipe: Any,
    prompts: list[str] | None,
    sizes: tuple[int, int, int],
    *,
    seed: int,
    allow_overlap: bool = False,
) -> InputSets:
    """The calibration, selection and test inputs for ``pipe``: class labels for a class-conditional
    model (``0, 1, ...`` cycling), else ``prompts``. Without prompts, a pipeline's own
    ``calibration_prompt_pools`` (a pair: calibration and selection prompts, test prompts), else
    :func:`default_prompts`."""
    if conditioning(pipe) == "class":
        if prompts:
            raise RfcacheError(f"{type(pipe).__name__} is class-conditional: it takes no prompts")
        num_classes = int(getattr(get_transformer(pipe).config, "num_embeds_ada_norm", None) or 1)
        return split_inputs(sizes=sizes, seed=seed, labels=range(num_classes))
    pools = getattr(pipe, "calibration_prompt_pools", None)
    if not prompts and pools:
        choice, test = pools
        return split_inputs(sizes=sizes, seed=seed, prompts=choice, test_prompts=test, allow_overlap=allow_overlap)
    return split_inputs(sizes=sizes, seed=seed, prompts=prompts or default_prompts(), allow_overlap=allow_overlap)


def record_shard(
    pipe: Any,
    *,
    shard: int,
    num_shards: int,
    out_dir: str | Path,
    run: RunSpec | None = None,
    samples: int = 8,
    group_size: int = 4,
    **run_keywords: Any,
) -> Path:
    """Record shard ``shard`` of ``num_shards`` of the calibration inputs into ``out_dir``.

    ``run`` (or the keywords it replaces, as for :func:`calibrate`) describes the pipeline call.

    Shards split the same inputs :func:`calibrate` uses (every ``num_shards``-th one), so several
    processes or machines can record in parallel. A shard is recorded ``group_size`` inputs per
    pipeline call and each finished group is written at once (``trace-{i}-of-{n}.part-{g}-of-{G}.npz``,
    atomically), so a recording killed part-way resumes at the first group not yet written; the
    complete shard is ``trace-{i}-of-{n}.npz`` and is never recorded again. Every input's noise is
    seeded by its own seed, so a resumed shard equals an uninterrupted one.
    """
    run = _run_description(run, run_keywords)
    if not 0 <= shard < num_shards:
        raise RfcacheError(f"shard must be i/n with 0 <= i < n, got {shard}/{num_shards}")
    if group_size < 1:
        raise RfcacheError(f"group_size must be >= 1, got {group_size}")
    out_dir = Path(out_dir)
    path = out_dir / f"trace-{shard}-of-{num_shards}.npz"
    if path.exists():
        logger.info("%s is complete; not recorded again", path)
        return path
    # the calibration set is the first of the three; its items do not depend on the other sizes
    items = input_sets(pipe, list(run.prompts) or None, (samples, 1, 1), seed=run.seed, allow_overlap=True).calibration
    indices = list(range(len(items)))[shard::num_shards]
    if not indices:
        raise RfcacheError(f"shard {shard}/{num_shards} has no inputs: use at most {samples} shards")
    groups = [indices[g : g + group_size] for g in range(0, len(indices), group_size)]
    common = {**run.call_kwargs(pipe), "output_type": "np"}
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [out_dir / f"{path.stem}.part-{g}-of-{len(groups)}.npz" for g in range(len(groups))]
    recorded = sum(part.exists() for part in parts)
    if recorded:
        logger.info("resuming %s: %d of %d groups already recorded", path.name, recorded, len(parts))
    for g, (group, part) in enumerate(zip(groups, parts, strict=True)):
        if part.exists():
            continue
        group_items = tuple(items[i] for i in group)
        call = {**_call(group_items), **common, "generator": _generators(group_items)}
        with _progress(pipe, True, f"recording shard {shard}/{num_shards}, group {g + 1}/{len(groups)}"):
            trace, _ = _record(pipe, call)
        trace.save(part)
    Trace.merge([Trace.load(part) for part in parts]).save(path)
    for stale in out_dir.glob(f"{path.stem}.part-*.npz"):
        stale.unlink()
    return path


def load_shards(trace_dir: str | Path) -> Trace:
    """Merge the complete set of ``trace-*-of-n.npz`` shards in ``trace_dir``; an error names the missing."""
    trace_dir = Path(trace_dir)
    found = [m for p in sorted(trace_dir.glob("trace-*-of-*.npz")) if (m := _SHARD_NAME.fullmatch(p.name))]
    if not found:
        raise RfcacheError(f"{trace_dir}: no trace shards (record them with --shard i/n)")
    counts = {m.group(2) for m in found}
    if len(counts) != 1:
        raise RfcacheError(f"{trace_dir}: shards of different splits ({', '.join(sorted(counts))} shards) are mixed")
    n = int(counts.pop())
    missing = [i for i in range(n) if not (trace_dir / f"trace-{i}-of-{n}.npz").exists()]
    if missing:
        raise RfcacheError(f"{trace_dir}: shards {', '.join(f'{i}/{n}' for i in missing)} are not recorded yet")
    try:
        return Trace.merge([Trace.load(trace_dir / f"trace-{i}-of-{n}.npz") for i in range(n)])
    except (OSError, ValueError, KeyError) as exc:
        raise RfcacheError(f"{trace_dir}: cannot merge trace shards ({exc})") from exc


_SHARD_NAME = re.compile(r"trace-(\d+)-of-(\d+)\.npz")  # complete shards, not parts or temporary files


@contextlib.contextmanager
def _progress(pipe: Any, show: bool, desc: str) -> Iterator[None]:
    """Show the pipeline's own step progress bar, labelled, for one call; restore its settings after."""
    saved = dict(getattr(pipe, "_progress_bar_config", {}))
    if show:
        pipe.set_progress_bar_config(**{**saved, "disable": False, "desc": desc})
    try:
        yield
    finally:
        pipe._progress_bar_config = saved


def _images(out: Any) -> torch.Tensor:
    """The pipeline output's images (or video frames) as one tensor."""
    images = out.frames if hasattr(out, "frames") else out.images
    return torch.as_tensor(np.asarray(images))


def _profile(
    name: str,
    identity: Any,
    sampling: SamplingSetup,
    cand: Candidate,
    fits: list[tuple[RatioFit, RatioStepFit]],
    budget: float,
    seed: int,
    trials: int,
    sets: InputSets,
) -> Profile:
    """The profile of a candidate; the achieved budget and selection/test quality are filled in later."""
    import diffusers
    import optuna

    from rfcache._version import __version__

    p = cand.params
    fit, step_fit = fits[0]
    numeric = {k: float(v) for k, v in p.items() if k not in ("family", "predictor", "order", "ratio_form")}
    r2 = np.concatenate([f.r2 for f, _ in fits])  # over every expert's units
    ratios, slopes = _calibrated_ratios(p, fit, step_fit)
    return Profile(
        name=name,
        model=identity,
        sampling=sampling,
        method=MethodSpec(p["predictor"], int(p["order"]), p["family"], numeric),
        schedule=cand.pattern,
        budget=Budget(budget, cand.flops_fraction),
        provenance=Provenance(
            inputs_hash=_hash(sets.calibration, 0.0),
            seed=seed,
            trials=trials,
            created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            versions={
                "rfcache": __version__,
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "optuna": optuna.__version__,
            },
            inputs=sets.as_dict(),
        ),
        ratios=ratios or fit.ratios,  # always recorded; method.params["calibrated"] says whether RFE uses them
        ratio_form="step-linear" if slopes else "constant",
        ratio_slopes=slopes,
        quality={  # unit-local candidates are measured only, never estimated
            "calibration_rel_l2": cand.error,
            **({"estimated_rel_l2": cand.estimate} if cand.estimate is not None else {}),
        },
        diagnostics={
            "ratio_r2_min": float(r2.min()),
            "ratio_r2_median": float(np.median(r2)),
            "ratio_spread_median": float(np.median(np.concatenate([f.spread for f, _ in fits]))),
            "ratio_r2_step_linear_median": float(np.median(np.concatenate([sf.r2_linear for _, sf in fits]))),
            "poor_fits": float(sum(len(f.poor()) for f, _ in fits)),
        },
    )


def _expert_views(trace: Trace) -> list[Trace]:
    """Per expert, the trace of its own steps (the whole trace for one transformer)."""
    spans = trace.expert_spans()
    return [trace] if len(spans) == 1 else [trace.only_steps(first, stop) for first, stop in spans]


def _per_step(spans: list[tuple[int, int]], tables: list[np.ndarray], num_steps: int) -> np.ndarray:
    """One ratio table over the trajectory from each expert's (a per-unit row, or per step and unit)."""
    if len(tables) == 1:
        return tables[0]
    rows = [
        np.broadcast_to(t, (num_steps, t.shape[-1]))[first:stop] for t, (first, stop) in zip(tables, spans, strict=True)
    ]
    return np.concatenate(rows)


def _with_experts(
    profile: Profile,
    pipe: Any,
    sampling: SamplingSetup,
    spans: list[tuple[int, int]],
    params: dict[str, Any],
    fits: list[tuple[RatioFit, RatioStepFit]],
) -> Profile:
    """A two-expert pipeline's profile: one expert entry per transformer with its steps and ratios."""
    experts = expert_models(pipe)
    if len(experts) == 1:
        return profile
    entries = []
    for (component, model), span, (f, sf) in zip(experts, spans, fits, strict=True):
        ratios, slopes = _calibrated_ratios(params, f, sf)
        identity = model_identity(model, get_adapter(model))
        entries.append(Expert(component, identity, span, ratios or f.ratios, slopes))
    return replace(
        profile, model=entries[0].model, sampling=sampling, ratios=(), ratio_slopes=(), experts=tuple(entries)
    )


def _calibrated_ratios(
    params: dict[str, Any], fit: RatioFit, step_fit: RatioStepFit
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The candidate's calibrated ratios and slopes (both empty for the run-time ratio)."""
    choice = ratio_choice(params)
    if choice == "step-linear":
        return step_fit.intercepts, step_fit.slopes
    return (fit.ratios, ()) if choice == "constant" else ((), ())


def _call(items: tuple[InputItem, ...]) -> dict[str, Any]:
    """The pipeline's input arguments for ``items`` (all class labels or all prompts)."""
    if items and items[0].label is not None:
        return {"class_labels": [int(item.label) for item in items if item.label is not None]}
    return {"prompt": [str(item.prompt) for item in items]}


def _generators(items: tuple[InputItem, ...]) -> list[torch.Generator]:
    """One generator per input, seeded by the input's own seed (the pipeline draws each sample's noise from it).

    CPU generators on purpose: diffusers draws the noise on the CPU and moves it to the model's
    device, so a calibration run on a GPU starts from the same noise as one on a CPU.
    """
    return [torch.Generator().manual_seed(item.seed) for item in items]


def _record(pipe: Any, call: dict[str, Any]) -> tuple[Trace, Any]:
    try:
        return record_trace(pipe, call)
    except RfcacheError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:  # a failure inside the pipeline call
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RfcacheError(f"calibration failed while recording in {type(pipe).__name__}: {first}") from exc


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 distance to the full-compute output (the search's objective)."""
    ref = ref.double()
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _rel_l2_per_sample(out: torch.Tensor, ref: torch.Tensor) -> list[float]:
    """:func:`_rel_l2` of each sample (the first dimension) on its own."""
    return [_rel_l2(o, r) for o, r in zip(out, ref, strict=True)]


def _interval_fields(name: str, interval: Interval) -> dict[str, float]:
    """``name``, ``name_ci95_low``, ``name_ci95_high``; undefined bounds left out (a profile holds finite numbers)."""
    fields = {name: interval.value, f"{name}_ci95_low": interval.low, f"{name}_ci95_high": interval.high}
    return {k: v for k, v in fields.items() if np.isfinite(v)}


def _hash(items: tuple[InputItem, ...], guidance: Any) -> str:
    return hashlib.sha256(repr((items, guidance)).encode()).hexdigest()[:16]
