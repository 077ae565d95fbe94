"""`calibrate`: record, fit, search, confirm on held-out inputs, freeze into a `Profile`."""

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
from rfcache.calibrate.scoring import Scorer, confirm_candidates, fit_scorer
from rfcache.calibrate.search import Candidate, completed_trials, error_model_runs, max_nfc, search_schedules
from rfcache.calibrate.trace import RatioFit, Trace, fit_ratios, record_trace
from rfcache.errors import RfcacheError
from rfcache.models import get_adapter, get_transformer
from rfcache.runtime import disable, enable, summary
from rfcache.runtime.identity import model_identity
from rfcache.runtime.policies import interval_for_nfc
from rfcache.runtime.runspec import RunSpec, captured_call, conditioning, pipeline_call, run_setup
from rfcache.schedules import Budget, MethodSpec, Profile, Provenance, SamplingSetup

__all__ = ["CalibrationResult", "calibrate", "default_prompts", "load_shards", "record_shard"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationResult:
    """The frozen profile and the figures the closing table reports."""

    profile: Profile
    heldout_rel_l2: float
    taylorseer_rel_l2: float
    seconds: float
    candidates: tuple[Candidate, ...]
    fit: RatioFit
    error_model: ErrorModel
    confirmed: tuple[Candidate, ...]


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


def calibrate(
    pipe: Any,
    *,
    budget: float = 0.4,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    prompts: list[str] | None = None,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    call_args: dict[str, Any] | None = None,
    record_batch: int | None = None,
    samples: int = 8,
    heldout: int = 8,
    trials: int = 200,
    confirm: int = 4,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    name: str = "profile",
    progress: bool = True,
    trace: Trace | None = None,
    report: Callable[[str], None] | None = None,
) -> CalibrationResult:
    """Calibrate a static cache schedule for ``pipe`` that spends at most ``budget`` of the module FLOPs.

    Example:
        >>> pipe = rfcache.load_pipeline("toy")
        >>> result = rfcache.calibrate(pipe, budget=0.4, num_inference_steps=50)
        >>> result.profile.save("toy.yaml")

    ``trace`` (merged shards from :func:`record_shard`) replaces the in-process recording.
    ``guidance_scale`` (``None``: the pipeline's default), ``negative_prompt``, ``height``, ``width``,
    ``num_frames`` and ``call_args`` (other pipeline keywords) describe the run, as the CLI's flags
    do (:class:`~rfcache.runtime.runspec.RunSpec`); the profile records them. ``record_batch``
    records at most that many inputs per pipeline call (bounds memory). ``report`` receives the
    estimated recording time, measured from a first timed transformer step, before recording starts.

    The search scores candidates with the error model (:mod:`rfcache.calibrate.errormodel`),
    fitted on a few real runs of the seed schedules; the ``confirm`` best distinct candidates are
    then run for real on the calibration inputs and the best three by measured error on held-out
    inputs; the best of those is frozen.
    """
    if not 0 < budget <= 1:
        raise RfcacheError(f"budget must be in (0, 1], got {budget}")
    if samples < 1 or heldout < 1 or trials < 1 or confirm < 0 or num_inference_steps < 2:
        raise RfcacheError("samples, heldout and trials must be >= 1, confirm >= 0 and steps >= 2")
    start = time.perf_counter()
    model = get_transformer(pipe)
    adapter = get_adapter(model)
    spec = RunSpec(
        prompts=tuple(prompts or ()),
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        num_frames=num_frames,
        steps=num_inference_steps,
        guidance=guidance_scale,
        seed=seed,
        call_args=dict(call_args or {}),
    )
    calib_kwargs = _inputs(pipe, prompts, samples, offset=0)
    held_kwargs = _inputs(pipe, prompts, heldout, offset=samples)
    common = {**spec.call_kwargs(pipe), "output_type": "np"}

    def run(kwargs: dict[str, Any], run_seed: int) -> torch.Tensor:
        call = {**kwargs, **common, "generator": torch.Generator().manual_seed(run_seed)}
        return _images(pipeline_call(pipe, call, what="calibration"))

    # one timed transformer step on one input: checks the run before anything is recorded or stored
    first = {k: v[:1] for k, v in calib_kwargs.items()}
    with captured_call(pipe) as call:
        pipeline_call(pipe, {**first, **common, "generator": _gen(seed)}, what="calibration")
    estimate = call["seconds"] * num_inference_steps * samples
    line = (
        f"estimated recording time {estimate:.0f} s ({call['seconds'] * 1e3:.0f} ms per step and input x "
        f"{num_inference_steps} steps x {samples} inputs); the search and confirmation runs add about as much again"
    )
    logger.info("%s", line)
    if report is not None:
        report(line)
    resolution = [call["resolution"]]
    if trace is None and (record_batch is None or record_batch >= samples):
        with _progress(pipe, progress, "recording"):
            trace, reference_out = _record(pipe, {**calib_kwargs, **common, "generator": _gen(seed)})
        reference = _images(reference_out)
    else:  # recorded in groups or elsewhere (shards); the search needs this machine's full-compute output
        if trace is None:
            assert record_batch is not None
            if record_batch < 1:
                raise RfcacheError(f"record_batch must be >= 1, got {record_batch}")
            groups = []
            ((key, values),) = calib_kwargs.items()
            for g in range(0, len(values), record_batch):
                call_g = {key: values[g : g + record_batch], **common, "generator": _gen(seed + g)}
                with _progress(pipe, progress, f"recording {g + 1}-{min(g + record_batch, len(values))}"):
                    groups.append(_record(pipe, call_g)[0])
            trace = Trace.merge(groups)
        reference = run(calib_kwargs, seed)
    fit = fit_ratios(trace)
    if fit.poor():
        logger.warning("relation ratio fits poorly (R² < 0.5) for %d of %d units", len(fit.poor()), len(fit.ratios))

    def run_cached(kwargs: dict[str, Any], run_seed: int, *args: Any, **cache: Any) -> tuple[torch.Tensor, Any]:
        enable(pipe, *args, **cache)
        try:
            return run(kwargs, run_seed), summary(pipe)
        finally:
            disable(pipe)

    def real_error(params: dict[str, Any], pattern: str) -> float:
        """A real run of the static ``pattern`` with the candidate's predictor on the calibration inputs."""
        cache: dict[str, Any] = {"predictor": params["predictor"], "order": int(params["order"])}
        if params["predictor"] == "relational" and params.get("calibrated"):
            cache["ratios"] = fit.ratios
        out, _ = run_cached(calib_kwargs, seed, method="static", mask=tuple(c == "C" for c in pattern), **cache)
        return _rel_l2(out, reference)

    # the error model: forecast errors replayed on the trace, their propagation fitted on a few real runs
    scorer = Scorer(trace, ratios=fit.ratios, max_nfc=max_nfc(budget, num_inference_steps))
    measured = fit_scorer(scorer, error_model_runs(num_inference_steps, budget), real_error)
    error_model = scorer.model
    assert error_model is not None

    identity = model_identity(model, adapter)
    study_identity = {
        "config_hash": identity.config_hash,
        "steps": str(num_inference_steps),
        "budget": repr(budget),
        "inputs": _hash({**calib_kwargs, **common}, 0.0, seed),
        "objective": "error-model estimate v1",
    }
    study, candidates = search_schedules(
        scorer.estimate,
        budget=budget,
        num_steps=num_inference_steps,
        trials=trials,
        storage=storage,
        study_name=study_name or f"rfcache-{identity.config_hash}-s{num_inference_steps}-b{budget}",
        seed=seed,
        identity=study_identity,
        progress=progress,
    )
    if not candidates:
        raise RfcacheError(f"no schedule within budget {budget} was found in {completed_trials(study)} trials")

    confirmed, diagnostics = confirm_candidates(scorer, candidates, measured, real_error, count=confirm)

    held_reference = run(held_kwargs, seed + 1)
    sampling = run_setup(pipe, spec, resolution[0])
    best: tuple[float, Profile] | None = None
    for cand in confirmed[:3]:  # the best few on held-out inputs
        profile = _profile(name, identity, sampling, cand, fit, budget, seed, completed_trials(study), calib_kwargs)
        profile = replace(profile, diagnostics={**profile.diagnostics, **diagnostics})
        out, s = run_cached(held_kwargs, seed + 1, profile)
        err = _rel_l2(out, held_reference)
        if best is None or err < best[0]:
            quality = {**profile.quality, "heldout_rel_l2": err}
            best = (err, replace(profile, budget=Budget(budget, s.flops_fraction), quality=quality))
    assert best is not None
    heldout_err, profile = best

    ts_interval, ts_warmup, ts_nfc = interval_for_nfc(num_inference_steps, profile.nfc)
    out, _ = run_cached(held_kwargs, seed + 1, method="taylorseer", order=2, interval=ts_interval, warmup=ts_warmup)
    ts_err = _rel_l2(out, held_reference)
    baseline = {"taylorseer_rel_l2": ts_err, "taylorseer_nfc": float(ts_nfc)}
    profile = replace(profile, quality={**profile.quality, **baseline})
    seconds = time.perf_counter() - start
    return CalibrationResult(
        profile, heldout_err, ts_err, seconds, tuple(candidates), fit, error_model, tuple(confirmed)
    )


def record_shard(
    pipe: Any,
    *,
    shard: int,
    num_shards: int,
    out_dir: str | Path,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    prompts: list[str] | None = None,
    samples: int = 8,
    seed: int = 0,
    group_size: int = 4,
    **run: Any,
) -> Path:
    """Record shard ``shard`` of ``num_shards`` of the calibration inputs into ``out_dir``.

    Shards split the same inputs :func:`calibrate` uses (every ``num_shards``-th one), so several
    processes or machines can record in parallel. A shard is recorded ``group_size`` inputs per
    pipeline call and each finished group is written at once (``trace-{i}-of-{n}.part-{g}-of-{G}.npz``,
    atomically), so a recording killed part-way resumes at the first group not yet written; the
    complete shard is ``trace-{i}-of-{n}.npz`` and is never recorded again. A group's noise is
    seeded by its first input's index, so a resumed shard equals an uninterrupted one. ``run``
    takes :func:`calibrate`'s run arguments (``height``, ``width``, ``num_frames``, ``call_args``,
    ``negative_prompt``).
    """
    if not 0 <= shard < num_shards:
        raise RfcacheError(f"shard must be i/n with 0 <= i < n, got {shard}/{num_shards}")
    if group_size < 1:
        raise RfcacheError(f"group_size must be >= 1, got {group_size}")
    out_dir = Path(out_dir)
    path = out_dir / f"trace-{shard}-of-{num_shards}.npz"
    if path.exists():
        logger.info("%s is complete; not recorded again", path)
        return path
    key, values = next(iter(_inputs(pipe, prompts, samples, offset=0).items()))
    indices = list(range(len(values)))[shard::num_shards]
    if not indices:
        raise RfcacheError(f"shard {shard}/{num_shards} has no inputs: use at most {samples} shards")
    groups = [indices[g : g + group_size] for g in range(0, len(indices), group_size)]
    spec = RunSpec(steps=num_inference_steps, guidance=guidance_scale, seed=seed, **run)
    common = {**spec.call_kwargs(pipe), "output_type": "np"}
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [out_dir / f"{path.stem}.part-{g}-of-{len(groups)}.npz" for g in range(len(groups))]
    recorded = sum(part.exists() for part in parts)
    if recorded:
        logger.info("resuming %s: %d of %d groups already recorded", path.name, recorded, len(parts))
    for g, (group, part) in enumerate(zip(groups, parts, strict=True)):
        if part.exists():
            continue
        call = {key: [values[i] for i in group], **common, "generator": _gen(seed + group[0])}
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
    fit: RatioFit,
    budget: float,
    seed: int,
    trials: int,
    calib_kwargs: dict[str, Any],
) -> Profile:
    """The profile of a candidate; the achieved budget and held-out quality are filled in later."""
    import diffusers
    import optuna

    import rfcache

    p = cand.params
    numeric = {k: float(v) for k, v in p.items() if k not in ("family", "predictor", "order")}
    r2 = np.array(fit.r2)
    return Profile(
        name=name,
        model=identity,
        sampling=sampling,
        method=MethodSpec(p["predictor"], int(p["order"]), p["family"], numeric),
        schedule=cand.pattern,
        budget=Budget(budget, cand.flops_fraction),
        provenance=Provenance(
            inputs_hash=_hash(calib_kwargs, 0.0, seed),
            seed=seed,
            trials=trials,
            created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            versions={
                "rfcache": rfcache.__version__,
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "optuna": optuna.__version__,
            },
        ),
        ratios=fit.ratios,  # always recorded; method.params["calibrated"] says whether RFE uses them
        quality={
            "calibration_rel_l2": cand.error,
            "estimated_rel_l2": cand.estimate if cand.estimate is not None else cand.error,
        },
        diagnostics={
            "ratio_r2_min": float(r2.min()),
            "ratio_r2_median": float(np.median(r2)),
            "ratio_spread_median": float(np.median(fit.spread)),
            "poor_fits": float(len(fit.poor())),
        },
    )


def _inputs(pipe: Any, prompts: list[str] | None, n: int, *, offset: int) -> dict[str, Any]:
    """The calibration (``offset`` 0) or held-out inputs: class labels cycling the model's classes,
    or prompts cycling ``prompts`` (default: :func:`default_prompts`)."""
    if conditioning(pipe) == "class":
        if prompts:
            raise RfcacheError(f"{type(pipe).__name__} is class-conditional: it takes no prompts")
        num_classes = int(getattr(get_transformer(pipe).config, "num_embeds_ada_norm", None) or 1)
        return {"class_labels": [(offset + i) % num_classes for i in range(n)]}
    pool = prompts or default_prompts()
    return {"prompt": [pool[(offset + i) % len(pool)] for i in range(n)]}


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


def _hash(kwargs: dict[str, Any], guidance: float, seed: int) -> str:
    return hashlib.sha256(repr((sorted(kwargs.items()), guidance, seed)).encode()).hexdigest()[:16]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
