"""toy-flux: a real Flux pipeline, shipped trained, loading offline by name, deterministic, following prompts."""

import json

import numpy as np
import pytest
import torch

import rfcache
from rfcache.models.toy import load_digits_images
from rfcache.models.toy_flux import (
    DEFAULT_GUIDANCE,
    PROMPT_TEMPLATES,
    TOY_FLUX_TRANSFORMER_CONFIG,
    TOY_FLUX_WEIGHTS_DIR,
    ToyFluxPipeline,
    build_toy_flux_pipeline,
    digit_prompt,
    identity_vae,
)


@pytest.fixture(scope="module")
def pipe():
    return rfcache.load_pipeline("toy-flux")


def test_identity_vae_round_trips_digits():
    vae = identity_vae()
    images, _ = load_digits_images()  # (N, 1, 16, 16) in [-1, 1]
    with torch.no_grad():
        latents = vae.encode(images[:16]).latent_dist.mode()
        decoded = vae.decode(3 * latents).sample  # latents wider than the data's range too
    assert latents.shape == (16, 1, 16, 16)
    torch.testing.assert_close(latents, images[:16], atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded, 3 * images[:16], atol=1e-4, rtol=0)


def test_tokenizers_read_the_prompt_words_whole():
    built = build_toy_flux_pipeline()
    t5 = built.tokenizer_2("number seven, written by hand").input_ids
    clip = built.tokenizer("a handwritten 7").input_ids
    assert len(t5) == 7  # ▁number ▁seven , ▁written ▁by ▁hand </s>
    assert len(clip) == 5  # <|startoftext|> a handwritten 7 <|endoftext|>
    assert built.tokenizer_2("the digit seven").input_ids != built.tokenizer_2("the digit three").input_ids


def test_weights_ship_with_the_package_and_record_their_recipe():
    sizes = sum(p.stat().st_size for p in TOY_FLUX_WEIGHTS_DIR.rglob("*.safetensors"))
    assert 0 < sizes <= 25 * 1024 * 1024
    record = json.loads((TOY_FLUX_WEIGHTS_DIR / "training.json").read_text())
    assert record["seed"] == 0 and record["steps"] > 0 and record["train_seconds"] > 0
    assert record["command"].startswith("python -m rfcache.models.train_toy_flux")
    index = json.loads((TOY_FLUX_WEIGHTS_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"  # diffusers loads the folder by itself, too


def test_loads_offline_by_name_as_the_real_flux_classes(pipe, monkeypatch):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = rfcache.load_pipeline("toy-flux")
    assert isinstance(offline, FluxPipeline) and isinstance(offline, ToyFluxPipeline)
    assert type(pipe.transformer) is FluxTransformer2DModel and not pipe.transformer.training
    assert len(pipe.transformer.transformer_blocks) == TOY_FLUX_TRANSFORMER_CONFIG["num_layers"] > 0
    assert len(pipe.transformer.single_transformer_blocks) == TOY_FLUX_TRANSFORMER_CONFIG["num_single_layers"] > 0
    assert type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler and type(pipe.vae) is AutoencoderKL
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.text_encoder_2) is T5EncoderModel
    assert "CLIPTokenizer" in type(pipe.tokenizer).__name__ and "T5Tokenizer" in type(pipe.tokenizer_2).__name__
    assert rfcache.models.get_adapter(pipe).family == "flux"


def test_generation_is_deterministic_at_the_default_call(pipe):
    kwargs = {"num_inference_steps": 4, "output_type": "np"}
    a = pipe(["a handwritten 3", "the digit five"], generator=torch.Generator().manual_seed(0), **kwargs).images
    b = pipe(["a handwritten 3", "the digit five"], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert a.shape == (2, 16, 16, 1) and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("guidance", "calls"), [(DEFAULT_GUIDANCE, 2), (1.0, 1)])
def test_guidance_scale_is_true_cfg_against_the_empty_prompt(pipe, guidance, calls):
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["timestep"]), with_kwargs=True)
    try:
        pipe("digit 4", num_inference_steps=3, guidance_scale=guidance, output_type="np")
    finally:
        handle.remove()
    assert len(seen) == 3 * calls


def test_default_call_matches_the_training_setup():
    import inspect

    params = inspect.signature(ToyFluxPipeline.__call__).parameters
    assert params["height"].default == params["width"].default == 16
    assert params["max_sequence_length"].default == 16
    assert params["guidance_scale"].default == DEFAULT_GUIDANCE
    assert digit_prompt(7, 2) == "number seven, written by hand" and len(PROMPT_TEMPLATES) >= 5


@pytest.mark.slow
def test_toy_flux_follows_its_prompts(pipe):
    from rfcache.evaluate.prompt_following import measure_prompt_following

    result = measure_prompt_following(pipe, samples=20, seed=20_000, steps=20)
    assert result.accuracy >= 0.8, result


@pytest.mark.slow
def test_training_script_writes_a_loadable_pipeline(tmp_path):
    from rfcache.models.toy_flux import load_toy_flux_pipeline
    from rfcache.models.train_toy_flux import train

    record = train(2, 0, tmp_path / "weights", batch_size=4)
    assert record["steps"] == 2 and (tmp_path / "weights" / "training.json").is_file()
    loaded = load_toy_flux_pipeline(tmp_path / "weights")
    out = loaded("a 1", num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 16, 16, 1)
