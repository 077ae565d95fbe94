"""Every family's transformer exports and replays a profile step by step as the PyTorch runtime does."""

import numpy as np
import pytest
import torch

import rfcache
from rfcache.export import OrtRunner, export, load_bundle
from rfcache.models.tiny import FAMILIES, build_tiny_pipeline, tiny_pipeline_call_kwargs, tiny_transformer
from rfcache.runtime.identity import input_resolution
from rfcache.schedules import Profile
from tests.conftest import make_profile

SCHEDULE = "CCPPCPPC"


def _profile(model, example, schedule=SCHEDULE, scheduler="none", guidance="none") -> Profile:
    resolution = input_resolution(example["hidden_states"])
    return make_profile(model, schedule, scheduler=scheduler, guidance=guidance, resolution=resolution)


def sampling_steps(model, example, schedule=SCHEDULE):
    """Per step of ``schedule``: its index, inputs as in sampling (a falling timestep, a moving
    latent) and the model's output for them (under whatever caching is enabled)."""
    for i in range(len(schedule)):
        inputs = dict(example)
        t = example["timestep"]
        inputs["timestep"] = (t.float().max() * (1 - 0.1 * i)).expand_as(t).to(t.dtype)
        inputs["hidden_states"] = example["hidden_states"] * (1 - 0.05 * i)
        with torch.no_grad():
            reference = model(**inputs, return_dict=False)[0]
        yield i, inputs, reference


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_bundle_replays_the_runtime_step_by_step(family, tmp_path):
    model = tiny_transformer(family).eval()
    example = rfcache.get_adapter(model).example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    profile = _profile(model, example)
    bundle = load_bundle(export(model, profile, tmp_path / "b"))
    assert bundle.sampling == {"recipe": "transformer-only"}
    steps = OrtRunner(bundle).steps(2)
    names = [t.name for t in bundle.graphs["cached"].inputs if t.name in example]
    rfcache.enable(model, profile)
    try:
        for i, inputs, reference in sampling_steps(model, example):
            out = steps({n: inputs[n].numpy() for n in names})
            assert np.abs(out - reference.numpy()).max() < 1e-4, f"step {i}"
        assert steps.executed == rfcache.summary(model).pattern == SCHEDULE
    finally:
        rfcache.disable(model)


@pytest.mark.slow
def test_dit_pipeline_bundle_samples_with_its_scheduler_and_vae(tmp_path):
    pipe = build_tiny_pipeline("dit")
    kwargs = tiny_pipeline_call_kwargs("dit")
    steps = 6
    latent = pipe.transformer.config
    example = {"hidden_states": torch.zeros(1, latent.in_channels, latent.sample_size, latent.sample_size)}
    guidance = "cfg" if kwargs.get("guidance_scale", 4.0) > 1 else "none"
    profile = _profile(pipe.transformer, example, "CCPCPC", type(pipe.scheduler).__name__, guidance)
    bundle = load_bundle(export(pipe, profile, tmp_path / "b", guidance_scale=kwargs.get("guidance_scale")))
    assert "decoder" in bundle.graphs
    labels = kwargs["class_labels"]
    result = OrtRunner(bundle).generate(labels, seed=0)
    rfcache.enable(pipe, profile)
    reference = pipe(
        **{**kwargs, "num_inference_steps": steps, "generator": torch.Generator().manual_seed(0)}, output_type="np"
    ).images
    assert result.pattern == rfcache.summary(pipe).pattern
    assert np.abs(result.images - reference).max() < 1e-4


@pytest.mark.slow
def test_a_fixed_text_axis_says_why_and_refuses_another_length_in_one_line(tmp_path, monkeypatch):
    """Where the model bakes a size the text axis would change (here pooled text declared as text),
    the axis stays fixed, the manifest says why, and a run at another text length is refused."""
    model = tiny_transformer("sd3")
    adapter = rfcache.get_adapter(model)
    monkeypatch.setattr(type(adapter), "text_inputs", {"encoder_hidden_states": 1, "pooled_projections": 1})
    example = adapter.example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    bundle = load_bundle(export(model, _profile(model, example), tmp_path / "b"))
    text = bundle.text_axis
    assert not text.dynamic and text.tokens == adapter.example_text_tokens
    assert "does not run at 7 text tokens" in text.reason
    runner = OrtRunner(bundle)
    runner.steps(2, text_tokens=6)  # the exported length runs
    with pytest.raises(rfcache.RfcacheError, match="text axis is fixed at 6 tokens") as info:
        runner.steps(2, text_tokens=7)
    assert "\n" not in str(info.value)
