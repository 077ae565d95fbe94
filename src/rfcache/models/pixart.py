"""Adapter for diffusers' ``PixArtTransformer2DModel`` (PixArt-α / PixArt-Σ, adaLN-single blocks).

Block: ``BasicTransformerBlock`` with ``norm_type="ada_norm_single"``. Units per block, in call
order:

* ``attn1``: self-attention on ``LN(x)·(1+scale_msa)+shift_msa``; taken before ``gate_msa``.
* ``attn2``: cross-attention, queries over image tokens, keys/values over the projected caption
  tokens. PixArt applies **no norm and no gate** here: its input is the raw residual stream and its
  output is added to it directly (so "before the gate" is simply its output).
* ``ff``: MLP on ``LN(x)·(1+scale_mlp)+shift_mlp``; taken before ``gate_mlp``.

Traps:

* All modulation comes from one model-level ``adaln_single`` (timestep MLP + one ``6·D`` linear per
  sample) and per-block ``scale_shift_table`` parameters, so blocks have no modulation linears:
  a block's measured FLOPs equal the sum of its three units exactly.
* ``use_additional_conditions`` (PixArt-α at 1024 px) adds resolution / aspect-ratio embedders to
  the skeleton; ``added_cond_kwargs`` must then carry ``resolution`` (B, 2) and ``aspect_ratio`` (B, 1).
* Feed-forward chunking (``set_chunk_feed_forward``) calls ``ff`` once per chunk: keep it off
  while units are hooked, or a unit is seen several times per step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rfcache.models.base import BlockAdapter, CacheUnit, StepShape, repeat_steps
from rfcache.models.flops import attention_core_flops, conv_patch_flops, linear_flops

__all__ = ["PixArtAdapter"]


class PixArtAdapter(BlockAdapter):
    family = "pixart"
    model_classes = ("PixArtTransformer2DModel",)
    block_lists = ("transformer_blocks",)
    module_kinds: ClassVar[dict[str, tuple[str, ...]]] = {"transformer_blocks": ("attn1", "attn2", "ff")}
    taylorseer_warmup: ClassVar[int] = 2  # TaylorSeer publishes no PixArt setting: DiT's 2

    #: caption tokens in ``example_inputs``
    example_text_tokens: ClassVar[int] = 6

    def step_shape(self, model: torch.nn.Module, inputs: dict[str, Any]) -> StepShape:
        x = inputs["hidden_states"]  # (B, C, H, W)
        p = model.config.patch_size
        text = inputs.get("encoder_hidden_states")
        return StepShape(
            batch=x.shape[0],
            image_tokens=(x.shape[-2] // p) * (x.shape[-1] // p),
            text_tokens=0 if text is None else text.shape[1],
        )

    def module_flops(self, model: torch.nn.Module, unit: CacheUnit, shape: StepShape) -> int:
        module = self.resolve(model, unit)
        b, n, t = shape.batch, shape.image_tokens, shape.text_tokens
        if unit.kind == "ff":
            return linear_flops(module, b * n)
        # attention: queries and output over image tokens; keys/values over image (attn1) or text (attn2)
        kv = n if unit.kind == "attn1" else t
        flops = linear_flops(module.to_q, b * n) + linear_flops(module.to_out, b * n)
        flops += linear_flops(module.to_k, b * kv) + linear_flops(module.to_v, b * kv)
        return flops + attention_core_flops(b, n, kv, module.inner_dim)

    def skeleton_flops(self, model: torch.nn.Module, shape: StepShape) -> int:
        b, n, t = shape.batch, shape.image_tokens, shape.text_tokens
        flops = conv_patch_flops(model.pos_embed.proj, b, n)
        emb = model.adaln_single.emb
        flops += linear_flops(emb.timestep_embedder, b) + linear_flops(model.adaln_single.linear, b)
        if emb.use_additional_conditions:
            # resolution (B, 2) and aspect ratio (B, 1) are embedded value by value
            flops += linear_flops(emb.resolution_embedder, 2 * b) + linear_flops(emb.aspect_ratio_embedder, b)
        flops += linear_flops(model.caption_projection, b * t)
        return flops + linear_flops(model.proj_out, b * n)

    conditioning_inputs = ("added_cond_kwargs",)
    text_inputs: ClassVar[dict[str, int]] = {"encoder_hidden_states": 1, "encoder_attention_mask": 1}

    def conditioning_paths(self, model: torch.nn.Module) -> tuple[str, ...]:
        return ("adaln_single",)  # timestep MLP + the one 6·D modulation linear, shared by all blocks

    def shared_conditioning(
        self, model: torch.nn.Module, inputs: dict[str, Any], timesteps: torch.Tensor, steps: int
    ) -> dict[str, Any]:
        added = repeat_steps(inputs.get("added_cond_kwargs") or {"resolution": None, "aspect_ratio": None}, steps)
        out = model.adaln_single(
            timesteps, added, batch_size=timesteps.shape[0], hidden_dtype=inputs["hidden_states"].dtype
        )
        return {"adaln_single": out}

    def example_inputs(
        self,
        model: torch.nn.Module,
        *,
        batch: int = 2,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, Any]:
        cfg = model.config
        size = cfg.sample_size
        text_dim = cfg.caption_channels if cfg.caption_channels is not None else cfg.cross_attention_dim
        x = torch.randn(batch, cfg.in_channels, size, size, generator=generator)
        text = torch.randn(batch, self.example_text_tokens, text_dim, generator=generator)
        added: dict[str, torch.Tensor | None] = {"resolution": None, "aspect_ratio": None}
        if model.use_additional_conditions:
            pixels = float(size * 8)  # the VAE's 8x: what the pipeline passes
            added = {
                "resolution": torch.full((batch, 2), pixels).to(device, dtype),
                "aspect_ratio": torch.ones(batch, 1).to(device, dtype),
            }
        return {
            "hidden_states": x.to(device, dtype),
            "encoder_hidden_states": text.to(device, dtype),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).to(device),
            "added_cond_kwargs": added,
        }
