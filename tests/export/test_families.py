"""Every family's transformer exports and replays a profile step by step as the PyTorch runtime does."""

import dataclasses

import numpy as np
import pytest
import torch

import rfcache
from rfcache.export import OrtRunner, export, load_bundle
from rfcache.models.tiny import build_tiny_pipeline, tiny_pipeline_call_kwargs, tiny_transformer
from rfcache.runtime.identity import input_resolution
from rfcache.runtime.runspec import RunSpec, captured_call, pipeline_call, run_setup
from rfcache.schedules import Profile
from tests.conftest import families_param, make_profile

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
@pytest.mark.parametrize("family", families_param(("dit", "flux"), "bundle vs runtime pixels in test_text_to_image"))
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


@pytest.mark.slow
def test_per_sample_constants_do_not_fix_the_batch(tmp_path):
    """PixArt-α at 1024 px passes ``added_cond_kwargs`` (per-sample resolution and aspect ratio
    tensors), baked into the graphs at the export's probe batch (3 prompts, 6 with CFG); the bundle
    still runs one and two prompts (batch 2 and 4) inside the pipeline as the runtime does."""

    def build():
        pipe = build_tiny_pipeline("pixart")
        pipe.transformer = tiny_transformer("pixart", sample_size=128).eval()  # 128: additional conditions
        return pipe

    pipe = build()
    run = RunSpec(prompts=("a",), steps=5, height=16, width=24, call_args={"use_resolution_binning": False})
    with captured_call(pipe) as call:
        pipeline_call(pipe, {**run.call_kwargs(pipe), "prompt": ["a"], "output_type": "latent"})
    assert call["kwargs"]["added_cond_kwargs"]["resolution"] is not None
    resolution = tuple(call["kwargs"]["hidden_states"].shape[1:])
    profile = make_profile(pipe, "CCPCP", order=1, **dataclasses.asdict(run_setup(pipe, run, resolution)))
    bundle = load_bundle(export(pipe, profile, tmp_path / "b"))
    for prompts in (["a red fox"], ["a red fox", "a cat"]):
        kwargs = {**run.call_kwargs(pipe), "prompt": prompts, "output_type": "latent"}
        rfcache.enable(pipe, profile)
        reference = pipe(**kwargs, generator=torch.Generator().manual_seed(0))[0]
        rfcache.disable(pipe)
        engine = bundle.into(build())
        out = engine(**kwargs, generator=torch.Generator().manual_seed(0))[0]
        assert engine.transformer.executed == "CCPCP"
        assert (out - reference).abs().max() / reference.abs().max() < 1e-4, len(prompts)
