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
