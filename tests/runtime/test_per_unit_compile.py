"""``enable(per_unit_profile, compile=True)``: one whole-forward variant per step kind (or, past dynamo's
recompile limit, regional compilation); no recompilation, eager's outputs."""

import dataclasses
from unittest import mock

import pytest
import torch
from torch._dynamo.utils import counters

import rfcache
from rfcache.models import get_adapter, get_transformer
from rfcache.schedules.masks import rows_intersection, step_kinds
from tests.conftest import full_only, generate, make_profile, make_tiny_digits_pipeline

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


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("relational", 2, "whole"), id="rfe-whole"),
        pytest.param(("relational", 2, "regional"), id="rfe-regional"),
        pytest.param(("taylor", 1, "whole"), id="taylor-whole", marks=full_only("taylor: rfe-whole's path")),
    ],
)
def eager_and_compiled(request):
    """Eager output, then two compiled generations with dynamo's graph count after each (``regional``:
    as if the schedule had more step kinds than dynamo keeps variants)."""
    predictor, order, mode = request.param
    pipe = make_tiny_digits_pipeline()
    profile = _per_unit(pipe, ROWS if mode == "regional" else FEW_KINDS, predictor=predictor, order=order)
    rfcache.enable(pipe, profile)
    eager, eager_summary = generate(pipe, steps=STEPS), rfcache.summary(pipe)
    rfcache.disable(pipe)
    torch._dynamo.reset()
    counters.clear()
    limit = 1 if mode == "regional" else rfcache.runtime.compile.max_step_kinds()
    with mock.patch("rfcache.runtime.api.max_step_kinds", return_value=limit):
        rfcache.enable(pipe, profile, compile=True)
    assert type(vars(pipe.transformer)["_rfcache_session"].compiled).__name__ == (
        "RegionalSchedule" if mode == "regional" else "CompiledSchedule"
    )
    try:
        first = generate(pipe, steps=STEPS)
        graphs_first = counters["stats"]["unique_graphs"]
        second = generate(pipe, steps=STEPS)
        graphs_second = counters["stats"]["unique_graphs"]
        summary = rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)
    return pipe, profile, (eager, eager_summary), (first, second, summary), (graphs_first, graphs_second), mode


def test_compiled_per_unit_outputs_match_eager(eager_and_compiled):
    _, _, (eager, eager_summary), (first, second, summary), *_ = eager_and_compiled
    scale = eager.abs().max()
    assert (first - eager).abs().max() / scale < 1e-4
    assert (second - eager).abs().max() / scale < 1e-4
    assert summary.unit_patterns == eager_summary.unit_patterns
    assert summary.pattern == eager_summary.pattern
    assert summary.total_flops == eager_summary.total_flops


def test_graphs_bounded_by_step_kinds_not_steps_and_no_recompilation(eager_and_compiled):
    _, profile, *_, (graphs_first, graphs_second), mode = eager_and_compiled
    kinds = len(step_kinds(list(profile.unit_rows().values())))
    assert kinds < STEPS
    if mode == "regional":
        assert 0 < graphs_first < kinds  # fewer graphs than step kinds: per unit class and predictor order
    else:  # one whole forward per step kind; the first step per shape runs eagerly (it allocates the cache)
        assert 1 < graphs_first <= kinds
    assert graphs_second == graphs_first  # the second generation compiled nothing


def test_disable_restores_the_eager_session_and_plain_forwards(eager_and_compiled):
    pipe = eager_and_compiled[0]
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
