"""Peers really skip work on the model we cache, leave it exact when removed, and are skipped when missing."""

from __future__ import annotations

import sys

import pytest
import torch

from rfcache.evaluate.bench import BenchConfig, run_bench
from rfcache.evaluate.peers import PEERS
from rfcache.evaluate.workload import load_workload

DIFFUSERS_PEERS = [name for name, spec in PEERS.items() if spec.source == "diffusers"]


def test_missing_package_skips_the_peer_with_a_message(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cache_dit", None)  # import cache_dit now raises ImportError
    cfg = BenchConfig(model="tiny:dit", steps=4, nfc=(2,), methods=("fora", "cache-dit-dbcache"), samples=1)
    result = run_bench(BenchConfig(**{**cfg.__dict__, "repeats": 0, "progress": False}))
    assert [r.method for r in result.records] == ["fora"]
    assert "cache-dit not installed" in result.skipped["cache-dit-dbcache"]
    assert "rfcache[bench]" in result.skipped["cache-dit-dbcache"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny:dit", "tiny:flux"])
def test_peers_skip_work_and_leave_the_model_exact(model: str) -> None:
    names = tuple(DIFFUSERS_PEERS)
    if PEERS["cache-dit-dbcache"].check() is None:
        names += ("cache-dit-dbcache", "cache-dit-dbcache-taylorseer")
    if PEERS["smoothcache"].check() is None:
        names += ("smoothcache",)
    workload = load_workload(model, steps=10)
    with torch.no_grad():
        before = workload.generate(0)
    cfg = BenchConfig(model=model, steps=10, nfc=(5,), methods=names, samples=1, tune_samples=1, repeats=0)
    result = run_bench(cfg.__class__(**{**cfg.__dict__, "progress": False}), workload=workload)
    assert not result.skipped, result.skipped
    for record in result.records:
        assert record.skips_work and record.flops_fraction < 0.9, (record.method, record.flops_fraction)
        assert record.rel_l2 > 0, record.method  # a skipped step changes the output: the hook really acted
    with torch.no_grad():
        assert torch.equal(workload.generate(0), before)  # every peer removed itself completely


@pytest.mark.skipif(PEERS["cache-dit-dbcache"].check() is not None, reason="cache-dit not installed")
@pytest.mark.parametrize("true_cfg", [False, True])
def test_cache_dit_keeps_true_cfg_calls_apart(true_cfg: bool) -> None:
    """Under true CFG (cond, then uncond, per step) cache-dit must count steps, not calls: its two
    warm-up steps are four full calls, and the uncond call never reuses the cond call's residual."""
    from rfcache.evaluate.cost import measure_generation
    from rfcache.evaluate.methods import BenchContext, Target

    steps = 6
    workload = load_workload("tiny:flux", steps=steps)
    order = [name for name, _ in workload.transformer.named_modules()]
    if true_cfg:
        workload.base_kwargs.update(true_cfg_scale=2.0, negative_prompt="")
    with torch.no_grad():
        full = measure_generation(workload.transformer, lambda: workload.generate(0))
    calls = 2 if true_cfg else 1
    assert len(full.call_flops) == calls * steps
    ctx = BenchContext(steps=steps, calls_per_step=lambda: len(full.call_flops) // steps)
    applied = PEERS["cache-dit-dbcache"].apply(workload.pipe, Target("t", 2, 0.3, 0.3), 10.0, ctx)  # caches all it may
    try:
        with torch.no_grad():
            cached = measure_generation(workload.transformer, lambda: workload.generate(0))
    finally:
        applied.remove()
    # its patch functors are undone too: what runs next runs on the model's own forward methods
    assert not any("forward" in vars(m) for m in workload.transformer.modules())
    assert [name for name, _ in workload.transformer.named_modules()] == order  # block lists in their order
    assert applied.params["separate_cfg"] is true_cfg
    per_call = cached.call_flops
    warm = 2 * calls  # cache-dit's max_warmup_steps=2, in steps
    assert per_call[:warm] == full.call_flops[:warm]
    assert all(c < f for c, f in zip(per_call[warm:], full.call_flops[warm:], strict=True))
