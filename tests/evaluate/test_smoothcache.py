"""SmoothCache peer: its schedule rule by hand, its calibration's error, and that it really skips work quietly."""

from __future__ import annotations

import sys

import pytest
import torch

from rfcache.evaluate.bench import BenchConfig, run_bench
from rfcache.evaluate.methods import BenchContext, Target
from rfcache.evaluate.peers import PEERS
from rfcache.evaluate.smoothcache import _relative_l1, apply_smoothcache, smoothcache_schedule
from rfcache.evaluate.workload import load_workload

needs_smoothcache = pytest.mark.skipif(
    PEERS["smoothcache"].check() is not None, reason="dit-smoothcache (the bench extra) is not installed"
)


def test_relative_l1_of_hand_computable_outputs():
    outputs = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]), torch.tensor([2.0, 2.0])]
    errors = _relative_l1(outputs)
    assert errors[1, 1] == pytest.approx(2 / 2)  # |(2,0)-(1,1)| / |(1,1)|
    assert errors[2, 1] == pytest.approx(2 / 2)  # |(2,2)-(2,0)| / |(2,0)|
    assert errors[2, 2] == pytest.approx(2 / 2)  # |(2,2)-(1,1)| / |(1,1)|
    assert errors[0].abs().sum() == 0 and errors[1, 2] == 0


def test_schedule_reuses_while_the_error_since_the_last_computed_step_stays_under_alpha():
    steps = 6
    errors = torch.zeros(steps, steps)
    for t in range(steps):
        for k in range(1, t + 1):
            errors[t, k] = 0.1 * k  # error grows with the look-back
    assert smoothcache_schedule(errors, 0.15) == [1, 0, 1, 0, 1, 1]  # k=1 ok, k=2 too much; last step computed
    assert smoothcache_schedule(errors, 0.25) == [1, 0, 0, 1, 0, 1]
    assert smoothcache_schedule(errors, 0.0) == [1] * steps
    assert smoothcache_schedule(errors, 100.0) == [1, 0, 0, 0, 0, 1]  # first and last always computed


def test_missing_package_skips_the_peer_with_a_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "SmoothCache", None)  # import SmoothCache now raises ImportError
    cfg = BenchConfig(model="tiny:dit", steps=4, nfc=(2,), methods=("fora", "smoothcache"), samples=1)
    result = run_bench(BenchConfig(**{**cfg.__dict__, "repeats": 0, "progress": False}))
    assert [r.method for r in result.records] == ["fora"]
    assert "dit-smoothcache not installed" in result.skipped["smoothcache"]
    assert "rfcache[bench]" in result.skipped["smoothcache"]


@needs_smoothcache
def test_smoothcache_skips_work_silently_and_leaves_the_model_exact(capfd):
    workload = load_workload("tiny:dit", steps=8)
    with torch.no_grad():
        before = workload.generate(0)
    cfg = BenchConfig(
        model="tiny:dit", steps=8, nfc=(4,), methods=("smoothcache",), samples=1, tune_samples=1, repeats=0
    )
    result = run_bench(cfg.__class__(**{**cfg.__dict__, "progress": False}), workload=workload)
    assert not result.skipped, result.skipped
    (record,) = result.records
    assert record.skips_work and record.flops_fraction < 0.9 and record.rel_l2 > 0
    assert set(record.params["computed"]) == {"transformer_blocks.attn1", "transformer_blocks.ff"}
    assert "cached result" not in capfd.readouterr().out  # the helper's per-call prints are silenced
    with torch.no_grad():
        assert torch.equal(workload.generate(0), before)  # removed completely
    assert "forward" not in vars(workload.pipe.transformer.transformer_blocks[0].attn1)


@needs_smoothcache
def test_each_guidance_branch_gets_its_own_helper_on_true_cfg():
    """toy-flux calls the transformer once per branch: both branches' helpers see every step."""
    pipe = pytest.importorskip("rfcache").load_pipeline("toy-flux")
    ctx = BenchContext(steps=4, prompts=["a handwritten 1", "the digit two"])
    applied = apply_smoothcache(pipe, Target("t", 2, 0.5, 0.5), 100.0, ctx)  # only first and last computed
    try:
        applied.reset()
        with torch.no_grad():
            pipe("a 5", num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0))
        caches = list(applied.state_roots())
        assert len(caches) == 4 and all(len(c) > 0 for c in caches)  # 2 block lists x 2 branches, all used
        assert applied.params["computed"]["transformer_blocks.attn"] == 0.5
    finally:
        applied.remove()
