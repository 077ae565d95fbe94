"""``enable(per_unit_profile, compile=True)``: one whole-forward variant per step kind (or, past dynamo's
recompile limit, regional compilation); no recompilation, eager's outputs."""

import contextlib
import dataclasses
from unittest import mock

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import rfcache
from rfcache.models import get_adapter, get_transformer
from rfcache.schedules.masks import rows_intersection, step_kinds
from tests.conftest import families_param, full_only, generate, make_profile, make_tiny_digits_pipeline

STEPS = 12
ROWS = ("CCPPPCPPPCPP", "CCCCCCCCCCCC", "CCPCPCPCPCPC", "CCCPPCPPCPPC")  # 6 step kinds
# 3 step kinds, each unit with its own distances (1, 3, 1-2): a whole forward compiles once per kind
FEW_KINDS = ("CCPPCPPCPPCP", "CCCCCCCCCCCC", "CCCPCCPCCPCC", "CCPPCPPCPPCP")


def _per_unit(pipe, rows=ROWS, **kwargs):
    model = get_transformer(pipe)
    paths = [u.path for u in get_adapter(model).units(model)]
    rows = {p: rows[i % len(rows)] for i, p in enumerate(paths)}
    base = make_profile(pipe, rows_intersection(list(rows.values())), **kwargs)
    return dataclasses.replace(base, unit_schedules=rows)


def _one_nonfinite_check():
    """A patch under which the guard sees the first cached step's output as non-finite (once)."""
    from rfcache.runtime import session

    calls = []
    original = session._first_tensor

    def first_tensor(output):
        calls.append(1)
        return torch.tensor([float("nan")]) if len(calls) == 1 else original(output)

    return mock.patch.object(session, "_first_tensor", first_tensor)


def _generate_once(pipe, profile, *, nonfinite: bool = False):
    with _one_nonfinite_check() if nonfinite else contextlib.nullcontext():
        return generate(pipe, steps=STEPS), rfcache.summary(pipe)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("relational", 2, "whole"), id="rfe-whole"),
        pytest.param(("relational", 2, "regional"), id="rfe-regional"),
        pytest.param(("taylor", 1, "whole"), id="taylor-whole", marks=full_only("taylor: rfe-whole's path")),
    ],
)
def runs(request) -> dict:
    """Eager outputs, then compiled generations with dynamo's graph count after each (``regional``: as if
    the schedule had more step kinds than dynamo keeps variants); ``nonfinite``: a generation whose first
    cached step the guard re-runs in full."""
    predictor, order, mode = request.param
    pipe = make_tiny_digits_pipeline()
    profile = _per_unit(pipe, ROWS if mode == "regional" else FEW_KINDS, predictor=predictor, order=order)
    r = {"pipe": pipe, "profile": profile, "mode": mode}
    rfcache.enable(pipe, profile)
    try:
        r["eager"], r["eager_nonfinite"] = _generate_once(pipe, profile), _generate_once(pipe, profile, nonfinite=True)
    finally:
        rfcache.disable(pipe)
    torch._dynamo.reset()
    counters.clear()
    limit = 1 if mode == "regional" else rfcache.runtime.compile.max_step_kinds()
    with mock.patch("rfcache.runtime.api.max_step_kinds", return_value=limit):
        rfcache.enable(pipe, profile, compile=True)
    r["schedule"] = type(vars(pipe.transformer)["_rfcache_session"].compiled).__name__
    try:
        r["first"] = _generate_once(pipe, profile)
        r["graphs_first"] = counters["stats"]["unique_graphs"]
        r["second"] = _generate_once(pipe, profile)
        r["graphs_second"] = counters["stats"]["unique_graphs"]
        r["nonfinite"] = _generate_once(pipe, profile, nonfinite=True)
    finally:
        rfcache.disable(pipe)
    return r


def _assert_close(run, reference):
    (out, summary), (expected, expected_summary) = run, reference
    assert (out - expected).abs().max() / expected.abs().max() < 1e-4
    assert summary.unit_patterns == expected_summary.unit_patterns
    assert summary.pattern == expected_summary.pattern
    assert summary.total_flops == expected_summary.total_flops
    assert summary.nonfinite_fallbacks == expected_summary.nonfinite_fallbacks


def test_compiled_per_unit_outputs_match_eager(runs):
    assert runs["schedule"] == ("RegionalSchedule" if runs["mode"] == "regional" else "CompiledSchedule")
    _assert_close(runs["first"], runs["eager"])
    _assert_close(runs["second"], runs["eager"])


def test_a_step_rerun_in_full_restores_each_units_history_as_eager_does(runs):
    """Some units were computed at the re-run step: their refresh is replaced, not applied twice."""
    assert runs["eager_nonfinite"][1].nonfinite_fallbacks == 1
    assert not torch.equal(runs["eager_nonfinite"][0], runs["eager"][0])
    _assert_close(runs["nonfinite"], runs["eager_nonfinite"])


def test_graphs_bounded_by_step_kinds_not_steps_and_no_recompilation(runs):
    kinds = len(step_kinds(list(runs["profile"].unit_rows().values())))
    graphs_first, graphs_second = runs["graphs_first"], runs["graphs_second"]
    assert kinds < STEPS
    if runs["mode"] == "regional":
        assert 0 < graphs_first < kinds  # fewer graphs than step kinds: per unit class and predictor order
    else:  # one whole forward per step kind; the first step per shape runs eagerly (it allocates the cache)
        assert 1 < graphs_first <= kinds
    assert graphs_second == graphs_first  # the second generation compiled nothing


def test_disable_restores_the_eager_session_and_plain_forwards(runs):
    pipe = runs["pipe"]
    assert not any(hasattr(m, "_rfcache_hook") for m in pipe.transformer.modules())
    assert all("forward" not in vars(m) for m in pipe.transformer.modules())


def test_cuda_graphs_with_a_regionally_compiled_profile_are_refused_in_one_line():
    pipe = make_tiny_digits_pipeline()
    with (
        mock.patch("rfcache.runtime.api.max_step_kinds", return_value=1),
        pytest.raises(rfcache.RfcacheError, match="not supported with per-unit profiles") as info,
    ):
        rfcache.enable(pipe, _per_unit(pipe), compile=True, cuda_graphs=True)
    assert "\n" not in str(info.value)


def test_step_kinds_counted_with_each_units_warm_up():
    """RFE needs two computed steps per unit before it predicts: a row that skips step 1 still runs it."""
    from rfcache.runtime.compile import compiled_step_kinds
    from rfcache.runtime.config import CacheConfig

    rows = ((True, False, True, False), (True, True, False, False))
    config = CacheConfig(method="static", mask=(True, False, False, False), unit_masks=rows, predictor="relational")
    assert compiled_step_kinds(config) == 3  # CC (steps 0-1, warm-up), CP, PP
    taylor = CacheConfig(method="static", mask=(True, False, False, False), unit_masks=rows, predictor="taylor")
    assert compiled_step_kinds(taylor) == 4  # CC, PC, CP, PP
    assert compiled_step_kinds(CacheConfig(method="static", mask=(True, False, True, False))) == 2


@pytest.mark.parametrize("family", families_param((), "dit: the tests above, on the tiny digits pipeline"))
def test_every_family_compiles_a_per_unit_profile_as_eager(family):
    from rfcache.models.tiny import build_tiny_pipeline, tiny_pipeline_call_kwargs

    pipe = build_tiny_pipeline(family)
    guidance = "embedded" if family == "flux" else "cfg"
    profile = _per_unit(pipe, FEW_KINDS, scheduler=type(pipe.scheduler).__name__, guidance=guidance, resolution=())

    def run():
        out = pipe(
            **tiny_pipeline_call_kwargs(family),
            num_inference_steps=STEPS,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
        latents = out.frames if hasattr(out, "frames") else out.images
        return torch.as_tensor(np.asarray(latents)).float(), rfcache.summary(pipe)

    rfcache.enable(pipe, profile)
    try:
        eager = run()
    finally:
        rfcache.disable(pipe)
    torch._dynamo.reset()
    counters.clear()
    rfcache.enable(pipe, profile, compile=True)
    try:
        first = run()
        graphs = counters["stats"]["unique_graphs"]
        second = run()
        assert counters["stats"]["unique_graphs"] == graphs  # the second generation compiled nothing
    finally:
        rfcache.disable(pipe)
    _assert_close(first, eager)
    _assert_close(second, eager)
