"""Runtime guards: non-finite predictions, the cache-size limit, enabling twice, a profile swapped mid-generation."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

import rfcache
from rfcache.calibrate import record_trace
from rfcache.runtime.api import get_session
from rfcache.runtime.memory import CacheMemoryError
from tests.conftest import generate, make_tiny_digits_pipeline
from tests.runtime.test_profile_runtime import _profile
from tests.runtime.test_session import _sequential_cfg

STEPS = 12


def _units(pipe) -> int:
    return len(rfcache.get_adapter(pipe).units(pipe.transformer))


# -- non-finite predictions ---------------------------------------------------------------------


def test_an_overflowing_prediction_is_recomputed_and_counted(tiny_pipe):
    reference = generate(tiny_pipe, steps=STEPS)
    huge = (float("inf"),) * _units(tiny_pipe)  # a broken calibrated ratio: every RFE forecast overflows
    rfcache.enable(tiny_pipe, method="rfe", interval=3, warmup=2, ratios=huge, check_finite=False)
    assert not torch.isfinite(generate(tiny_pipe, steps=STEPS)).all()  # unguarded, the output is ruined
    planned = rfcache.summary(tiny_pipe).pattern
    rfcache.disable(tiny_pipe)

    rfcache.enable(tiny_pipe, method="rfe", interval=3, warmup=2, ratios=huge, share_conditioning=False)
    guarded = generate(tiny_pipe, steps=STEPS)
    s = rfcache.summary(tiny_pipe)
    # checked once per step, on the output: each cached step is re-run in full (as the bundle runner does)
    assert s.nonfinite_fallbacks == planned.count("P") > 0
    assert s.pattern == "C" * STEPS and s.num_calls == STEPS
    assert "non-finite        " + str(s.nonfinite_fallbacks) in str(s)
    assert torch.equal(guarded, reference)  # every bad step became a real one
    assert s.computed_module_flops == s.module_flops  # counted once, as full steps


# -- max_cache_bytes ----------------------------------------------------------------------------


def _held_bytes(pipe) -> int:
    """Bytes of the tensors the session really holds now (differences, inputs, the policy's history)."""
    session = get_session(pipe)
    total = 0
    for branch in session._branches:
        for state in branch.units.values():
            tensors = [t for diffs in state.differences for t in diffs]
            tensors += [state.input_at_full] if state.input_at_full is not None else []
            total += sum(t.numel() * t.element_size() for t in tensors)
        total += sum(d.numel() * d.element_size() for d in getattr(branch.policy, "_differences", []))
    return total


@pytest.mark.parametrize(
    "method,params",
    [("fora", {}), ("taylorseer", {"order": 2}), ("rfe", {"order": 2}), ("rfc", {"order": 1, "tau": 0.3})],
)
def test_the_estimate_is_what_a_generation_holds(tiny_pipe, method, params):
    # tiny DiT: hidden 32, 16 tokens, 4 units; two labels with batched CFG make a batch of 4
    unit_output = 4 * 16 * 32 * 4  # bytes of one (B, N, D) float32 tensor
    copies = {"fora": 1, "taylorseer": 3, "rfe": 3, "rfc": 2}[method]
    inputs = {"rfe": 1, "rfc": 1}.get(method, 0)
    policy = 2 * unit_output if method == "rfc" else 0  # RCS keeps D_0, D_1 of the first unit's input
    expected = 4 * (copies + inputs) * unit_output + policy
    rfcache.enable(tiny_pipe, method=method, interval=3, max_cache_bytes=expected, **params)
    generate(tiny_pipe, steps=STEPS)
    assert _held_bytes(tiny_pipe) == expected
    rfcache.disable(tiny_pipe)
    rfcache.enable(tiny_pipe, method=method, interval=3, max_cache_bytes=expected - 1, **params)
    with pytest.raises(CacheMemoryError, match=f"would hold about {expected / 1024:.1f} KiB"):
        generate(tiny_pipe, steps=STEPS)


def test_enable_refuses_a_cache_that_cannot_fit_even_one_sample(tiny_pipe):
    one_sample = 4 * 3 * (1 * 16 * 32 * 4)  # taylorseer order 2, batch 1
    with pytest.raises(CacheMemoryError) as info:
        rfcache.enable(tiny_pipe, method="taylorseer", order=2, max_cache_bytes=one_sample - 1)
    message = str(info.value)
    assert "would hold about 24.0 KiB" in message and "one sample" in message and "\n" not in message
    assert not any(hasattr(m, "_rfcache_hook") for m in tiny_pipe.transformer.modules())  # nothing left behind
    with pytest.raises(rfcache.RfcacheError, match="max_cache_bytes must be a positive"):
        rfcache.enable(tiny_pipe, method="fora", max_cache_bytes=0)

    # enabled within the limit, a generation too large for it is refused before anything is cached
    rfcache.enable(tiny_pipe, method="taylorseer", order=2, max_cache_bytes=2 * one_sample)
    with pytest.raises(CacheMemoryError, match=r"\(4 units, batch 4, 1 CFG branch\(es\)\)"):
        generate(tiny_pipe, steps=STEPS, labels=(1, 7))
    assert _held_bytes(tiny_pipe) == 0
    generate(tiny_pipe, steps=STEPS, labels=(1,), guidance=1.0)  # one sample, no CFG: fits
    assert _held_bytes(tiny_pipe) == one_sample


def test_a_sequential_cfg_branch_counts_against_the_limit(tiny_pipe):
    one_branch = 4 * 3 * (2 * 16 * 32 * 4)  # taylorseer order 2, two labels
    rfcache.enable(tiny_pipe.transformer, method="taylorseer", order=2, max_cache_bytes=one_branch + 1)
    with pytest.raises(CacheMemoryError, match=r"batch 2, 2 CFG branch\(es\)"):
        _sequential_cfg(tiny_pipe.transformer, [3, 5], 10)


# -- enabling twice -----------------------------------------------------------------------------


def test_enabling_twice_is_an_error_however_the_model_is_reached(tiny_pipe):
    rfcache.enable(tiny_pipe, method="fora")
    for target in (tiny_pipe, tiny_pipe.transformer):
        with pytest.raises(rfcache.RfcacheError, match="already enabled on this DiTTransformer2DModel"):
            rfcache.enable(target, method="rfc")
    other = type(tiny_pipe)(transformer=tiny_pipe.transformer, scheduler=tiny_pipe.scheduler)  # shares the model
    with pytest.raises(rfcache.RfcacheError, match="already enabled"):
        rfcache.enable(other, _profile(tiny_pipe))
    assert rfcache.summary(tiny_pipe).method == "fora"  # the first session is untouched
    rfcache.disable(tiny_pipe)
    rfcache.enable(tiny_pipe, method="rfc")  # after disable it is allowed again


def test_enabling_during_a_trace_recording_is_an_error(tiny_pipe):
    calls = []

    def enable_mid_recording(module, args, kwargs):
        if not calls:
            with pytest.raises(rfcache.RfcacheError, match="hooked by another rfcache feature") as info:
                rfcache.enable(tiny_pipe, method="fora")
            calls.append(info.value)

    handle = tiny_pipe.transformer.register_forward_pre_hook(enable_mid_recording, with_kwargs=True)
    try:
        record_trace(tiny_pipe, {"class_labels": [1], "num_inference_steps": 4, "output_type": "pt"})
    finally:
        handle.remove()
    assert calls


# -- a different profile mid-generation ---------------------------------------------------------


def _swap_profile_after(pipe, step: int, profile) -> None:
    """Disable and enable ``profile`` between two denoising steps, as a step callback would."""
    original = pipe.scheduler.step
    done = {"n": 0}

    def step_then_swap(*args, **kwargs):
        out = original(*args, **kwargs)
        done["n"] += 1
        if done["n"] == step:
            rfcache.disable(pipe)
            rfcache.enable(pipe, profile)
        return out

    pipe.scheduler.step = step_then_swap


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_a_profile_swapped_in_mid_generation_is_refused(scheduler):
    pipe = make_tiny_digits_pipeline()
    if scheduler != "DDIMScheduler":  # a scheduler that counts its steps (step_index)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    first = _profile(pipe, schedule="CCCPPCPPCPPC", scheduler=scheduler)
    second = _profile(pipe, schedule="CCPCPCPCPCPC", scheduler=scheduler)
    rfcache.enable(pipe, first)
    generate(pipe, steps=STEPS)
    assert rfcache.summary(pipe).pattern == first.schedule
    _swap_profile_after(pipe, 5, second)
    with pytest.raises(rfcache.RfcacheError, match="began in the middle of a generation \\(at step 6 of 12\\)"):
        generate(pipe, steps=STEPS)
    del pipe.scheduler.step  # the swap done; between generations the new profile runs from its first step
    generate(pipe, steps=STEPS)
    assert rfcache.summary(pipe).pattern == second.schedule
