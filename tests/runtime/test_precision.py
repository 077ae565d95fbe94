"""Half precision: a profile applies to a bf16 (or fp16) model and caching adds no error of its own.

The cache state is kept in the model's dtype and norms in float32 (predictors.py, "Precision").
Stated tolerance: per step, the cached bf16 output's relative L2 distance to the cached fp32
output is at most 1.25x the distance of bf16 full compute to fp32 full compute, plus 1e-3.
Measured on these tiny random models: equal to within 1e-3 for every family (e.g. PixArt
0.0074 vs 0.0075, Flux 0.0622 vs 0.0622, Wan 0.0064 vs 0.0059).
"""

import copy

import pytest
import torch

import rfcache
from rfcache.models.tiny import FAMILIES, tiny_transformer
from tests.export.test_families import _profile

SCHEDULE = "CCPPCPPCPP"


def _steps(model, example, profile, dtype):
    """The transformer's outputs over a falling timestep and a moving latent, as in sampling."""
    example = {k: _cast(v, dtype) for k, v in example.items()}
    outs = []
    if profile is not None:
        rfcache.enable(model, profile)
    try:
        for i in range(len(SCHEDULE)):
            inputs = dict(example)
            t = example["timestep"]
            inputs["timestep"] = (t.float().max() * (1 - 0.08 * i)).expand_as(t).to(t.dtype)
            inputs["hidden_states"] = example["hidden_states"] * (1 - 0.05 * i)
            with torch.no_grad():
                outs.append(model(**inputs, return_dict=False)[0].float())
        if profile is not None:
            assert rfcache.summary(model).pattern == SCHEDULE
    finally:
        if profile is not None:
            rfcache.disable(model)
    return outs


def _cast(value, dtype):
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _distance(outs, references):
    return [((o - r).norm() / r.norm()).item() for o, r in zip(outs, references, strict=True)]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "dtype"), [(f, torch.bfloat16) for f in FAMILIES] + [("dit", torch.float16)])
def test_half_precision_caching_adds_no_error_of_its_own(family, dtype):
    model = tiny_transformer(family).eval()
    example = rfcache.get_adapter(model).example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    profile = _profile(model, example, SCHEDULE)  # made on the fp32 model; applies to its half copy
    half = copy.deepcopy(model).to(dtype)
    full = _distance(_steps(half, example, None, dtype), _steps(model, example, None, torch.float32))
    cached = _distance(_steps(half, example, profile, dtype), _steps(model, example, profile, torch.float32))
    for step, (c, f) in enumerate(zip(cached, full, strict=True)):
        assert c <= 1.25 * f + 1e-3, f"step {step}: cached {c:.4f} vs full {f:.4f}"
