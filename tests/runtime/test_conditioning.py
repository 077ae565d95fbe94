"""Shared conditioning: every family's conditioning modules, batched over all steps, match the per-step computation."""

import numpy as np
import pytest
import torch

import rfcache
from rfcache.models.tiny import FAMILIES, build_tiny_pipeline, tiny_pipeline_call_kwargs
from rfcache.runtime.api import get_session
from tests.conftest import generate

STEPS = 6
# batched matmuls round differently from per-step ones; over a whole generation (fp32) the outputs
# stay within this of the per-step computation
RTOL, ATOL = 1e-4, 1e-5


def _run(pipe, family):
    out = pipe(
        **tiny_pipeline_call_kwargs(family),
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return np.asarray(out.frames if hasattr(out, "frames") else out.images)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_conditioning_matches_per_step_computation(family):
    pipe = build_tiny_pipeline(family)
    reference = _run(pipe, family)
    rfcache.enable(pipe, method="none", share_conditioning=True)
    try:
        shared = _run(pipe, family)
        s = rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)
    assert s.shared_conditioning_calls == s.num_calls == STEPS * len(s.patterns)  # served at every call
    np.testing.assert_allclose(shared, reference, rtol=RTOL, atol=ATOL)
    rfcache.enable(pipe, method="none")  # off by default without a cache method
    try:
        np.testing.assert_array_equal(_run(pipe, family), reference)
        assert rfcache.summary(pipe).shared_conditioning_calls == 0
    finally:
        rfcache.disable(pipe)


def test_the_conditioning_modules_do_not_run_at_served_steps(tiny_pipe, monkeypatch):
    linear = tiny_pipe.transformer.transformer_blocks[1].norm1.linear
    calls = []
    original = torch.nn.Linear.forward

    def counting(self, x):
        if self is linear:
            calls.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", counting)
    rfcache.enable(tiny_pipe, method="taylorseer", interval=3)
    try:
        generate(tiny_pipe, steps=STEPS, labels=(1, 7))
        assert calls == [STEPS * 4]  # once, batched over every step's CFG batch of 4, at the first call
        generate(tiny_pipe, steps=STEPS, labels=(1, 7))
        assert calls == [STEPS * 4] * 2  # and again for the next generation
    finally:
        rfcache.disable(tiny_pipe)


def test_an_unpredicted_call_runs_the_modules(tiny_pipe):
    # a transformer called outside a pipeline (no scheduler to predict from) computes per step
    rfcache.enable(tiny_pipe.transformer, method="taylorseer", interval=3)
    try:
        x = torch.randn(2, 1, 16, 16)
        labels = torch.tensor([1, 10])
        with torch.no_grad():
            for t in (900, 800):
                tiny_pipe.transformer(x, timestep=torch.tensor([t, t]), class_labels=labels)
        assert rfcache.summary(tiny_pipe.transformer).shared_conditioning_calls == 0
    finally:
        rfcache.disable(tiny_pipe.transformer)


def test_changed_conditions_are_not_served_stale_rows(tiny_pipe):
    rfcache.enable(tiny_pipe, method="none", share_conditioning=True)
    session = get_session(tiny_pipe)
    try:
        generate(tiny_pipe, steps=STEPS, labels=(1, 7))
        branch = session._branches[0]
        store = branch.conditioning
        other = {"class_labels": torch.tensor([2, 3, 10, 10])}
        assert store.lookup(1, store.timesteps[1], other) is None
        assert store.lookup(1, store.timesteps[1] + 1, {"class_labels": store.conditions["class_labels"]}) is None
        assert store.lookup(1, store.timesteps[1], {"class_labels": store.conditions["class_labels"].clone()}) == 1
    finally:
        rfcache.disable(tiny_pipe)


def test_one_negative_prompt_for_several_prompts_under_true_cfg():
    """Flux's true CFG encodes one negative prompt at batch 1 for a batch of prompts; the model broadcasts
    its pooled embedding, and the shared conditioning must too."""
    pipe = build_tiny_pipeline("flux")
    kwargs = dict(
        prompt=["a fox", "a lighthouse"],
        negative_prompt="blurry",
        true_cfg_scale=2.0,
        height=16,
        width=16,
        num_inference_steps=STEPS,
        max_sequence_length=8,
        output_type="np",
    )
    reference = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    rfcache.enable(pipe, method="none", share_conditioning=True)
    try:
        shared = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
        s = rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)
    assert s.shared_conditioning_calls == s.num_calls == 2 * STEPS  # both branches served
    np.testing.assert_allclose(shared, reference, rtol=RTOL, atol=ATOL)
