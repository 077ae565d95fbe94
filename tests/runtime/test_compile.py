"""``enable(..., compile=True)``: two compiled variants, no recompilation, eager's outputs."""

import contextlib

import pytest
import torch
from torch._dynamo.utils import counters

import rfcache
from rfcache.cli.main import main
from rfcache.devices import cuda_available
from rfcache.errors import RfcacheError
from tests.conftest import generate, make_profile, make_tiny_digits_pipeline

SCHEDULE = "CCCPPCPPPCPC"


def _eager(pipe, profile):
    """One eager generation under ``profile``: its output and summary."""
    rfcache.enable(pipe, profile)
    try:
        return generate(pipe, steps=len(SCHEDULE)), rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)


@contextlib.contextmanager
def _compiled(pipe, profile):
    """``profile`` enabled with ``compile=True`` on a fresh dynamo cache and counters."""
    torch._dynamo.reset()
    counters.clear()
    rfcache.enable(pipe, profile, compile=True)
    try:
        yield
    finally:
        rfcache.disable(pipe)


@pytest.fixture(scope="module")
def eager_and_compiled():
    """Eager outputs, then two compiled generations with dynamo's counters after each."""
    pipe = make_tiny_digits_pipeline()
    profile = make_profile(pipe, SCHEDULE, predictor="relational", order=2)
    eager, eager_summary = _eager(pipe, profile)
    with _compiled(pipe, profile):
        first = generate(pipe, steps=len(SCHEDULE))
        after_first = (counters["stats"]["unique_graphs"], dict(counters["graph_break"]))
        second = generate(pipe, steps=len(SCHEDULE))
        after_second = (counters["stats"]["unique_graphs"], dict(counters["graph_break"]))
        summary = rfcache.summary(pipe)
    return pipe, (eager, eager_summary), (first, second, summary), (after_first, after_second)


def test_compiled_outputs_match_eager(eager_and_compiled):
    _, (eager, eager_summary), (first, second, summary), _ = eager_and_compiled
    scale = eager.abs().max()
    assert (first - eager).abs().max() / scale < 1e-4  # measured ~2e-6
    assert (second - eager).abs().max() / scale < 1e-4
    assert summary.pattern == eager_summary.pattern == SCHEDULE
    assert summary.total_flops == eager_summary.total_flops
    assert summary.flops_fraction == pytest.approx(eager_summary.flops_fraction)


def test_two_variants_no_graph_breaks_no_recompilation(eager_and_compiled):
    *_, ((graphs_first, breaks_first), (graphs_second, breaks_second)) = eager_and_compiled
    assert graphs_first <= 2 and breaks_first == {}  # full step and cached step, whole forward in one graph
    assert graphs_second == graphs_first and breaks_second == {}  # the second generation compiled nothing


def test_disable_restores_the_plain_forward(eager_and_compiled):
    pipe = eager_and_compiled[0]
    assert "forward" not in vars(pipe.transformer)
    assert not any(hasattr(m, "_rfcache_hook") for m in pipe.transformer.modules())


def test_a_dynamic_schedule_or_cuda_graphs_on_cpu_are_refused(tiny_pipe):
    with pytest.raises(RfcacheError, match="compile=True needs a fixed schedule"):
        rfcache.enable(tiny_pipe, method="rfc", compile=True)
    with pytest.raises(RfcacheError, match="cuda_graphs=True needs compile=True"):
        rfcache.enable(tiny_pipe, method="taylorseer", cuda_graphs=True)
    if not cuda_available():
        with pytest.raises(RfcacheError, match="needs the model on a CUDA device"):
            rfcache.enable(tiny_pipe, method="taylorseer", compile=True, cuda_graphs=True)
    model = tiny_pipe.transformer
    assert "forward" not in vars(model) and not rfcache.runtime.api.has_unit_hooks(model)


def test_rfc_generate_compile_needs_a_fixed_schedule(tmp_path, capsys):
    assert main(["generate", "--compile", "--steps", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "--compile needs --profile" in capsys.readouterr().err


@pytest.mark.slow
def test_rfc_generate_compile(tmp_path, capsys):
    out = tmp_path / "c.png"
    args = ["generate", "--method", "taylorseer", "--interval", "3", "--steps", "8", "--compile", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "pattern           CCPPCPPC" in printed  # TaylorSeer placement: full at w-1+jN


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_with_cuda_graphs_matches_eager_on_cuda(dtype):
    pipe = make_tiny_digits_pipeline().to("cuda", dtype)
    profile = make_profile(pipe, SCHEDULE, predictor="relational", order=2)
    rfcache.enable(pipe, profile)
    eager = generate(pipe, steps=len(SCHEDULE)).float()
    rfcache.disable(pipe)
    rfcache.enable(pipe, profile, compile=True, cuda_graphs=True)
    try:
        for _ in range(2):
            out = generate(pipe, steps=len(SCHEDULE)).float()
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            assert (out - eager).abs().max() / eager.abs().max() < tol
        assert rfcache.summary(pipe).pattern == SCHEDULE
    finally:
        rfcache.disable(pipe)


@pytest.mark.slow
def test_compiled_step_linear_ratio_matches_eager():
    """A step-linear calibrated ratio enters the compiled cached step as a per-step position tensor."""
    import dataclasses

    pipe = make_tiny_digits_pipeline()
    units = len(rfcache.get_adapter(pipe).units(pipe.transformer))
    ratios = tuple(0.5 + 0.1 * i for i in range(units))
    profile = dataclasses.replace(
        make_profile(pipe, SCHEDULE, ratios=ratios),
        ratio_form="step-linear",
        ratio_slopes=tuple((-1) ** i * 0.8 for i in range(units)),
    )
    eager, _ = _eager(pipe, profile)
    with _compiled(pipe, profile):
        compiled = generate(pipe, steps=len(SCHEDULE))
    assert (compiled - eager).abs().max() / eager.abs().max() < 1e-4
    assert counters["stats"]["unique_graphs"] <= 2 and dict(counters["graph_break"]) == {}
