"""The one FLOP counter agrees with the analytic count; cached state and per-step shares are measured."""

from __future__ import annotations

import pytest
import torch

import rfcache
from rfcache.evaluate.cost import measure_generation, step_fractions, tensor_bytes, time_interleaved
from rfcache.models.tiny import build_tiny_pipeline, tiny_pipeline_call_kwargs
from rfcache.schedules.masks import interval_mask

STEPS = 8


def _generate(pipe) -> torch.Tensor:
    out = pipe(
        **tiny_pipeline_call_kwargs("dit"),
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return torch.from_numpy(out.images)


@pytest.mark.parametrize("interval", [2, 3])
def test_counter_matches_analytic_flops_of_an_interval_schedule(interval: int) -> None:
    pipe = build_tiny_pipeline("dit")
    full = measure_generation(pipe.transformer, lambda: _generate(pipe))
    # per-step conditioning: the analytic model counts it per call (shared, it is one pass at the first call)
    rfcache.enable(pipe, method="fora", interval=interval, warmup=1, share_conditioning=False)
    try:
        cached = measure_generation(pipe.transformer, lambda: _generate(pipe))
        s = rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)
    # the analytic count (adapter FLOPs of skeleton + computed units); FORA's reuse adds no matmuls
    assert cached.flops == s.total_flops - s.predictor_flops
    assert full.flops == s.full_flops
    mask = interval_mask(STEPS, interval, 1)
    shares = step_fractions(cached, full)
    assert tuple(share == 1.0 for share in shares) == mask
    assert len(set(share for share, m in zip(shares, mask, strict=True) if not m)) == 1  # the skeleton's share
    assert cached.flops == pytest.approx(sum(shares) / STEPS * full.flops)


def test_tensor_bytes_counts_each_storage_once_and_skips_modules() -> None:
    a = torch.zeros(10)  # 40 bytes
    b = torch.zeros(4, dtype=torch.float64)  # 32 bytes

    class State:
        def __init__(self) -> None:
            self.cache = {"x": [a, a[2:]], "y": (b,)}
            self.model = torch.nn.Linear(100, 100)

    assert tensor_bytes([State(), a]) == 72


def test_time_interleaved_runs_every_method_each_round_and_drops_the_warmup() -> None:
    calls: list[str] = []
    runs = [(name, lambda name=name: calls.append(f"+{name}"), lambda name=name: calls.append(name)) for name in "ab"]
    seconds = time_interleaved(runs, repeats=2)
    assert set(seconds) == {"a", "b"}
    assert calls == ["+a", "a", "+b", "b"] * 3


def test_time_interleaved_reports_a_failing_method_and_times_the_rest() -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    failures: dict[str, str] = {}
    runs = [("ok", lambda: None, lambda: None), ("bad", lambda: None, broken)]
    seconds = time_interleaved(runs, repeats=1, failures=failures)
    assert seconds["ok"] >= 0 and seconds["bad"] != seconds["bad"]  # nan
    assert failures == {"bad": "RuntimeError: boom"}
    with pytest.raises(RuntimeError, match="boom"):
        time_interleaved(runs, repeats=1)


def test_the_shared_conditioning_pass_counts_for_the_first_call() -> None:
    pipe = build_tiny_pipeline("dit")
    full = measure_generation(pipe.transformer, lambda: _generate(pipe))
    rfcache.enable(pipe, method="none", share_conditioning=True)
    try:
        shared = measure_generation(pipe.transformer, lambda: _generate(pipe))
    finally:
        rfcache.disable(pipe)
    assert shared.call_flops[0] > full.call_flops[0]  # every step's conditioning, in one batched pass
    assert all(s < f for s, f in zip(shared.call_flops[1:], full.call_flops[1:], strict=True))  # then served
