"""``enable(per_unit_profile, compile=True)``: regional compilation, no recompilation, eager's outputs."""

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

import rfcache
from rfcache.models import get_adapter, get_transformer
from rfcache.schedules.masks import rows_intersection, step_kinds
from tests.conftest import generate, make_profile, make_tiny_digits_pipeline

STEPS = 12
ROWS = ("CCPPPCPPPCPP", "CCCCCCCCCCCC", "CCPCPCPCPCPC", "CCCPPCPPCPPC")


def _per_unit(pipe, **kwargs):
    model = get_transformer(pipe)
    paths = [u.path for u in get_adapter(model).units(model)]
    rows = {p: ROWS[i % len(ROWS)] for i, p in enumerate(paths)}
    base = make_profile(pipe, rows_intersection(list(rows.values())), **kwargs)
    return dataclasses.replace(base, unit_schedules=rows)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("relational", 2), id="rfe"),
        pytest.param(("taylor", 1), id="taylor", marks=pytest.mark.slow),
    ],
)
def eager_and_compiled(request):
    """Eager output, then two compiled generations with dynamo's graph count after each."""
    predictor, order = request.param
    pipe = make_tiny_digits_pipeline()
    profile = _per_unit(pipe, predictor=predictor, order=order)
    rfcache.enable(pipe, profile)
    eager, eager_summary = generate(pipe, steps=STEPS), rfcache.summary(pipe)
    rfcache.disable(pipe)
    torch._dynamo.reset()
    counters.clear()
    rfcache.enable(pipe, profile, compile=True)
    try:
        first = generate(pipe, steps=STEPS)
        graphs_first = counters["stats"]["unique_graphs"]
        second = generate(pipe, steps=STEPS)
        graphs_second = counters["stats"]["unique_graphs"]
        summary = rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)
    return pipe, profile, (eager, eager_summary), (first, second, summary), (graphs_first, graphs_second)


def test_compiled_per_unit_outputs_match_eager(eager_and_compiled):
    _, _, (eager, eager_summary), (first, second, summary), _ = eager_and_compiled
    scale = eager.abs().max()
    assert (first - eager).abs().max() / scale < 1e-4
    assert (second - eager).abs().max() / scale < 1e-4
    assert summary.unit_patterns == eager_summary.unit_patterns
    assert summary.pattern == eager_summary.pattern
    assert summary.total_flops == eager_summary.total_flops


def test_graphs_bounded_by_unit_classes_not_steps_and_no_recompilation(eager_and_compiled):
    _, profile, *_, (graphs_first, graphs_second) = eager_and_compiled
    kinds = len(step_kinds(list(profile.unit_rows().values())))
    assert 0 < graphs_first < kinds  # fewer graphs than step kinds: per unit class and predictor order
    assert graphs_second == graphs_first  # the second generation compiled nothing


def test_disable_restores_the_eager_session_and_plain_forwards(eager_and_compiled):
    pipe = eager_and_compiled[0]
    assert not any(hasattr(m, "_rfcache_hook") for m in pipe.transformer.modules())
    assert all("forward" not in vars(m) for m in pipe.transformer.modules())


def test_cuda_graphs_with_a_per_unit_profile_are_refused_in_one_line():
    pipe = make_tiny_digits_pipeline()
    with pytest.raises(rfcache.RfcacheError, match="not supported with per-unit profiles") as info:
        rfcache.enable(pipe, _per_unit(pipe), compile=True, cuda_graphs=True)
    assert "\n" not in str(info.value)
