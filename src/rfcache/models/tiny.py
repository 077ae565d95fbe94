"""Tiny, randomly initialised models of each supported family, built offline from configs.

``tiny_transformer(family)`` gives the denoising transformer the adapter tests use (hidden size
≤ 64, two layers of each block kind, a handful of tokens).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TINY_TRANSFORMER_CONFIGS", "tiny_transformer"]

TINY_TRANSFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "dit": {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 4,
        "num_layers": 2,
        "sample_size": 8,
        "num_embeds_ada_norm": 10,
    },
    # D = 48: PixArt-α's size conditions embed into D//3 channels each and must add up to D
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
        "use_additional_conditions": True,
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
    """A tiny random transformer of ``family`` (config ``TINY_TRANSFORMER_CONFIGS[family]`` + overrides), in eval mode."""
    import diffusers

    if family not in TINY_TRANSFORMER_CONFIGS:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(TINY_TRANSFORMER_CONFIGS)}")
    cls = getattr(diffusers, _TRANSFORMER_CLASSES[family])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**{**TINY_TRANSFORMER_CONFIGS[family], **overrides})
    return model.eval()
