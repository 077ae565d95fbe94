"""``benchmarks/runtime_methods.py``'s attainable run: FORA's schedule and predictions without the session."""

import importlib.util
from pathlib import Path

import torch

import rfcache
from tests.conftest import generate

STEPS = 12


def _benchmark():
    path = Path(__file__).parents[2] / "benchmarks" / "runtime_methods.py"
    spec = importlib.util.spec_from_file_location("runtime_methods", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_attainable_run_is_fora_without_the_session(tiny_pipe):
    bench = _benchmark()
    pattern = bench._interval_pattern(STEPS)
    skeleton = bench.SkeletonOnly(tiny_pipe, pattern)
    skeleton.attach()
    try:
        bare = generate(tiny_pipe, steps=STEPS)
    finally:
        skeleton.detach()
    assert skeleton.store is not None and skeleton.step == STEPS - 1  # conditioning served, one call per step
    assert not any(hasattr(m, "_rfcache_hook") for m in tiny_pipe.transformer.modules())  # detached
    rfcache.enable(tiny_pipe, **bench.SPEED_METHODS["fora"], share_conditioning=True)
    fora = generate(tiny_pipe, steps=STEPS)
    assert rfcache.summary(tiny_pipe).pattern == pattern  # the schedule the benchmark assumes
    rfcache.disable(tiny_pipe)
    assert torch.equal(bare, fora)
    assert not torch.equal(bare, generate(tiny_pipe, steps=STEPS))  # cached steps really skipped the units
