"""Every caching method runs on every supported family's real diffusers pipeline (tiny configs)."""

import numpy as np
import pytest
import torch

import rfcache
from rfcache.models.tiny import FAMILIES, build_tiny_pipeline, tiny_pipeline_call_kwargs

STEPS = 8


def _run(pipe, family):
    out = pipe(
        **tiny_pipeline_call_kwargs(family),
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    images = out.frames if hasattr(out, "frames") else out.images
    return np.asarray(images)


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request):
    return request.param, build_tiny_pipeline(request.param)


def test_none_and_disable_are_bit_identical(family_pipe):
    family, pipe = family_pipe
    reference = _run(pipe, family)
    rfcache.enable(pipe, method="none")
    try:
        np.testing.assert_array_equal(_run(pipe, family), reference)
    finally:
        rfcache.disable(pipe)
    rfcache.enable(pipe, method="taylorseer", interval=3, warmup=1)
    _run(pipe, family)
    rfcache.disable(pipe)
    np.testing.assert_array_equal(_run(pipe, family), reference)


@pytest.mark.parametrize("method", ["fora", "taylorseer", "rfe", "rcs", "rfc"])
def test_methods_skip_work_and_stay_finite(family_pipe, method):
    family, pipe = family_pipe
    rfcache.enable(pipe, method=method, interval=3, warmup=2, tau=float("inf"), max_cached=2)
    try:
        out = _run(pipe, family)
        s = rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)
    assert np.isfinite(out).all()
    assert s.num_steps == STEPS and "P" in s.pattern and s.flops_fraction < 0.9, s
    # pipelines with sequential CFG (Wan) call the transformer once per branch and step
    assert s.num_calls == STEPS * len(s.patterns)
