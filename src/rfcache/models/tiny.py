"""Tiny, randomly initialised models and pipelines of each supported family, built offline.

``tiny_transformer(family)`` gives the denoising transformer the adapter tests use (hidden size
≤ 64, two layers of each block kind, a handful of tokens). ``build_tiny_pipeline(family)`` wraps it
in the family's real diffusers pipeline with a tiny VAE, tiny random text encoders and tokenizers
built in memory (a character-level Unigram T5 tokenizer, a byte-level CLIP BPE tokenizer with no
merges), so everything runs from prompts, with no hub access. ``tiny_pipeline_call_kwargs(family)``
gives the call arguments that make ``pipe(**kwargs, num_inference_steps=4, output_type="np")`` run:
a prompt, a small size, short text sequences, and CFG on where the pipeline has it.

Traps the configs encode:

* DiT's pipeline uses class 1000 as the null class for CFG, so the tiny DiT keeps 1000 classes.
* PixArt-α's pipeline passes size conditions only when ``sample_size == 128``; the tiny PixArt
  (``sample_size`` 8) therefore has ``use_additional_conditions`` off, and the pipeline is called
  with ``use_resolution_binning=False`` (binning only knows sample sizes 32/64/128).
* SD3 pads the two CLIP embeddings (16 + 16 channels) to the T5 width (32 = ``joint_attention_dim``);
  the pooled projection is the two CLIP projections concatenated (32 = ``pooled_projection_dim``).
* Flux's ``in_channels`` is 4x the VAE's latent channels (2x2 packing); FLUX.1-dev's guidance is an
  embedding, not CFG. Wan's ``in_channels`` is the Wan VAE's ``z_dim`` (16, as its latent stats are).
"""

from __future__ import annotations

import string
from typing import Any

import torch

__all__ = [
    "FAMILIES",
    "TINY_BOUNDARY_RATIO",
    "TINY_TRANSFORMER_CONFIGS",
    "build_tiny_pipeline",
    "clip_text_encoder",
    "tiny_pipeline_call_kwargs",
    "tiny_transformer",
]

FAMILIES = ("dit", "pixart", "sd3", "flux", "wan")
TINY_BOUNDARY_RATIO = 0.875  # Wan 2.2 A14B's: at 6 steps the tiny two-expert Wan switches at step 2

TINY_TRANSFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "dit": {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 4,
        "out_channels": 8,  # learned sigma, as DiT-XL/2; the pipeline reads out_channels and drops the variance
        "num_layers": 2,
        "sample_size": 8,
        "num_embeds_ada_norm": 1000,  # the pipeline's CFG null class is 1000
    },
    # D = 48 so that the size-conditioned variant (use_additional_conditions=True: resolution and
    # aspect ratio embed into D//3 channels each, added to the D-wide timestep embedding) also works
    "pixart": {
        "num_attention_heads": 2,
        "attention_head_dim": 24,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": 2,
        "sample_size": 8,
        "patch_size": 2,
        "cross_attention_dim": 48,
        "caption_channels": 32,
        "use_additional_conditions": False,
    },
    # block 0 is an SD3.5 dual-attention block; block 1 (the last) is context_pre_only
    "sd3": {
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "caption_projection_dim": 32,
        "pooled_projection_dim": 32,
        "pos_embed_max_size": 8,
        "dual_attention_layers": (0,),
        "qk_norm": "rms_norm",
    },
    # FLUX.1-dev-like (guidance embedding); in_channels = 4 latent channels x 2x2 packing
    "flux": {
        "patch_size": 1,
        "in_channels": 16,
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "guidance_embeds": True,
        "axes_dims_rope": (4, 6, 6),
    },
    "wan": {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 32,
        "freq_dim": 32,
        "ffn_dim": 64,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 32,
    },
}

_TRANSFORMER_CLASSES = {
    "dit": "DiTTransformer2DModel",
    "pixart": "PixArtTransformer2DModel",
    "sd3": "SD3Transformer2DModel",
    "flux": "FluxTransformer2DModel",
    "wan": "WanTransformer3DModel",
}


def tiny_transformer(family: str, *, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A tiny random transformer of ``family``: its tiny config plus ``overrides``, seeded, in eval mode."""
    import diffusers

    if family not in TINY_TRANSFORMER_CONFIGS:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(TINY_TRANSFORMER_CONFIGS)}")
    cls = getattr(diffusers, _TRANSFORMER_CLASSES[family])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**{**TINY_TRANSFORMER_CONFIGS[family], **overrides})
    return model.eval()


# -- tokenizers and text encoders ---------------------------------------------------------------

_TEXT_DIM = 32  # T5 / UMT5 width; = the transformers' caption_channels / joint_attention_dim / text_dim
_CLIP_MAX_LENGTH = 8
_T5_MAX_LENGTH = 8


def _t5_tokenizer() -> Any:
    """A character-level Unigram T5 tokenizer: pad 0, eos 1, unk 2, then ``▁`` and printable ASCII."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁", *(string.ascii_letters + string.digits + string.punctuation)]
    return T5Tokenizer(vocab=[(p, -float(i)) for i, p in enumerate(pieces)], extra_ids=0)


def _clip_tokenizer() -> Any:
    """A byte-level BPE CLIP tokenizer with no merges (one token per byte), 8 tokens long."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_CLIP_MAX_LENGTH)


def _t5_encoder(tokenizer: Any, *, umt5: bool = False) -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = {
        "vocab_size": len(tokenizer),
        "d_model": _TEXT_DIM,
        "d_kv": 16,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "dropout_rate": 0.0,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs))
    return T5EncoderModel(T5Config(**kwargs))


def clip_text_encoder(
    tokenizer: Any,
    *,
    hidden: int,
    projection: int | None = None,
    heads: int = 2,
    max_length: int = _CLIP_MAX_LENGTH,
) -> torch.nn.Module:
    """A two-layer CLIP text encoder of width ``hidden`` (the tiny pipelines', and toy-flux's with 4
    heads over 16 tokens); with a projection head (SD3) when ``projection`` is given."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=max_length,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


# -- VAEs ---------------------------------------------------------------------------------------


def _vae(**overrides: Any) -> torch.nn.Module:
    """A two-level ``AutoencoderKL`` (8x spatial becomes 2x) with 4 latent channels."""
    from diffusers import AutoencoderKL

    config = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 16,
    }
    return AutoencoderKL(**{**config, **overrides})


def _wan_vae() -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    # 8x spatial and 4x temporal compression as in Wan 2.1, at 3 channels; z_dim 16 matches latents_mean/std
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


# -- pipelines ----------------------------------------------------------------------------------


def build_tiny_pipeline(
    family: str,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    experts: int = 1,
) -> Any:
    """A real diffusers pipeline of ``family`` made of tiny random components, built offline.

    Weights are drawn from ``seed`` (the global RNG is left as it was); every module is in eval mode.
    ``experts=2`` (Wan only) gives a Wan 2.2-style two-expert pipeline: ``transformer`` (high noise)
    and ``transformer_2`` (low noise, the same config, other weights) switched at Wan 2.2 A14B's
    ``boundary_ratio`` of 0.875.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    if experts not in (1, 2) or (experts == 2 and family != "wan"):
        raise ValueError(f"experts must be 1, or 2 for wan; got {experts} for {family!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = tiny_transformer(family, seed=seed)
        pipe = _TINY_PIPELINES[family](transformer, seed, experts)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    # casting to float32 is a no-op, and naming a dtype makes diffusers warn about fp32-kept modules
    return pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)


def _tiny_dit(transformer: torch.nn.Module, seed: int, experts: int) -> Any:
    import diffusers

    return diffusers.DiTPipeline(
        transformer=transformer, vae=_vae(), scheduler=diffusers.DPMSolverMultistepScheduler(), id2label=None
    )


def _tiny_pixart(transformer: torch.nn.Module, seed: int, experts: int) -> Any:
    import diffusers

    tokenizer = _t5_tokenizer()
    return diffusers.PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(tokenizer),
        vae=_vae(),
        transformer=transformer,
        scheduler=diffusers.DPMSolverMultistepScheduler(),
    )


def _tiny_sd3(transformer: torch.nn.Module, seed: int, experts: int) -> Any:
    import diffusers

    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    return diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=clip_text_encoder(clip, hidden=16, projection=16),
        tokenizer=clip,
        text_encoder_2=clip_text_encoder(clip, hidden=16, projection=16),
        tokenizer_2=clip,
        text_encoder_3=_t5_encoder(t5),
        tokenizer_3=t5,
    )


def _tiny_flux(transformer: torch.nn.Module, seed: int, experts: int) -> Any:
    import diffusers

    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=_vae(shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=clip_text_encoder(
            clip, hidden=TINY_TRANSFORMER_CONFIGS["flux"]["pooled_projection_dim"], projection=None
        ),
        tokenizer=clip,
        text_encoder_2=_t5_encoder(t5),
        tokenizer_2=t5,
        transformer=transformer,
    )


def _tiny_wan(transformer: torch.nn.Module, seed: int, experts: int) -> Any:
    import diffusers

    tokenizer = _t5_tokenizer()
    text_encoder, vae = _t5_encoder(tokenizer, umt5=True), _wan_vae()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    second: dict[str, Any] = {}
    if experts == 2:  # the second expert's weights are drawn last
        second = {"transformer_2": tiny_transformer("wan", seed=seed + 1), "boundary_ratio": TINY_BOUNDARY_RATIO}
    return diffusers.WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        **second,
    )


# family -> its pipeline around a tiny transformer, the other components drawn in this order
_TINY_PIPELINES = {"dit": _tiny_dit, "pixart": _tiny_pixart, "sd3": _tiny_sd3, "flux": _tiny_flux, "wan": _tiny_wan}


def tiny_pipeline_call_kwargs(family: str, batch: int = 1) -> dict[str, Any]:
    """Arguments that make ``build_tiny_pipeline(family)(**kwargs, num_inference_steps=4, output_type="np")`` run.

    ``batch`` prompts (or class labels), a small size, short text sequences, and CFG on (scale > 1)
    for every pipeline that has it; Flux gets FLUX.1-dev's embedded guidance instead.
    """
    if family == "dit":
        return {"class_labels": list(range(batch)), "guidance_scale": 4.0}
    # short prompts: the tiny tokenizers are character-level
    text = {"prompt": [f"cat {i}" for i in range(batch)], "max_sequence_length": _T5_MAX_LENGTH}
    per_family: dict[str, dict[str, Any]] = {
        "pixart": {
            "height": 16,
            "width": 16,
            "guidance_scale": 4.5,
            "use_resolution_binning": False,
            "clean_caption": False,
        },
        "sd3": {"height": 16, "width": 16, "guidance_scale": 4.0},
        "flux": {"height": 16, "width": 16, "guidance_scale": 3.5},
        "wan": {"height": 32, "width": 32, "num_frames": 5, "guidance_scale": 5.0},
    }
    if family in per_family:
        return {**text, **per_family[family]}
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
