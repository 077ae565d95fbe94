"""Adapter for diffusers' ``SD3Transformer2DModel`` (Stable Diffusion 3 / 3.5, MMDiT blocks).

Block: ``JointTransformerBlock``, called with keywords, returning
``(encoder_hidden_states, hidden_states)``. Units per block, in call order:

* ``attn``: joint attention. Image tokens go through ``to_q/to_k/to_v/to_out``, text tokens through
  ``add_q_proj/add_k_proj/add_v_proj/to_add_out``, and the attention core runs over image+text
  tokens. Returns ``(image_out, text_out)``, both before ``gate_msa`` / ``c_gate_msa``.
* ``attn2``: SD3.5's second self-attention over image tokens only (``dual_attention_layers``); on
  ``norm1``'s second modulation, taken before ``gate_msa2``. ``None`` on other blocks (skipped).
* ``ff``: image MLP, before ``gate_mlp``.
* ``ff_context``: text MLP, before ``c_gate_mlp``. ``None`` on the last block (skipped).

Traps:

* The last block is ``context_pre_only``: it returns ``(None, hidden_states)`` (same output names),
  its ``attn`` has no ``to_add_out`` and returns the un-projected text output, which is discarded.
  So the last block has one or two units fewer than the others.
* ``skip_layers`` (skip-layer guidance) skips whole blocks: their units are not called that step.
* Feed-forward chunking calls ``ff`` / ``ff_context`` once per chunk; keep it off while hooked.
* The context embedder and ``norm1_context`` modulation run over text tokens / per sample and stay
  in the skeleton.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rfcache.models.base import BlockAdapter, CacheUnit, StepShape, existing_paths, modulation_outputs, repeat_steps
from rfcache.models.flops import attention_core_flops, conv_patch_flops, linear_flops

__all__ = ["SD3Adapter"]


class SD3Adapter(BlockAdapter):
    family = "sd3"
    model_classes = ("SD3Transformer2DModel",)
    block_lists = ("transformer_blocks",)
    module_kinds: ClassVar[dict[str, tuple[str, ...]]] = {"transformer_blocks": ("attn", "attn2", "ff", "ff_context")}
    taylorseer_warmup: ClassVar[int] = 2  # TaylorSeer publishes no SD3 setting: DiT's 2

    #: text tokens in ``example_inputs``
    example_text_tokens: ClassVar[int] = 6

    def block_outputs(self, block_list: str) -> tuple[str, ...]:
        return ("encoder_hidden_states", "hidden_states")

    conditioning_inputs = ("pooled_projections",)
    text_inputs: ClassVar[dict[str, int]] = {"encoder_hidden_states": 1}

    def conditioning_paths(self, model: torch.nn.Module) -> tuple[str, ...]:
        blocks = range(len(model.transformer_blocks))
        linears = [f"transformer_blocks.{i}.{n}.linear" for i in blocks for n in ("norm1", "norm1_context")]
        return ("time_text_embed", *existing_paths(model, [*linears, "norm_out.linear"]))

    def shared_conditioning(
        self, model: torch.nn.Module, inputs: dict[str, Any], timesteps: torch.Tensor, steps: int
    ) -> dict[str, Any]:
        pooled = repeat_steps(inputs["pooled_projections"], steps, timesteps.shape[0] // steps)
        temb = model.time_text_embed(timesteps, pooled)  # (S*B, D)
        paths = self.conditioning_paths(model)
        return {"time_text_embed": temb, **modulation_outputs(model, paths[1:], temb)}

    def step_shape(self, model: torch.nn.Module, inputs: dict[str, Any]) -> StepShape:
        x = inputs["hidden_states"]  # (B, C, H, W)
        p = model.config.patch_size
        return StepShape(
            batch=x.shape[0],
            image_tokens=(x.shape[-2] // p) * (x.shape[-1] // p),
            text_tokens=inputs["encoder_hidden_states"].shape[1],
        )

    def module_flops(self, model: torch.nn.Module, unit: CacheUnit, shape: StepShape) -> int:
        module = self.resolve(model, unit)
        b, n, t = shape.batch, shape.image_tokens, shape.text_tokens
        if unit.kind == "ff":
            return linear_flops(module, b * n)
        if unit.kind == "ff_context":
            return linear_flops(module, b * t)
        image = linear_flops(module.to_q, b * n) + linear_flops(module.to_k, b * n) + linear_flops(module.to_v, b * n)
        image += linear_flops(module.to_out, b * n)
        if unit.kind == "attn2":  # self-attention over image tokens only
            return image + attention_core_flops(b, n, n, module.inner_dim)
        text = linear_flops(module.add_q_proj, b * t) + linear_flops(module.add_k_proj, b * t)
        text += linear_flops(module.add_v_proj, b * t) + linear_flops(module.to_add_out, b * t)
        return image + text + attention_core_flops(b, n + t, n + t, module.inner_dim)

    def skeleton_flops(self, model: torch.nn.Module, shape: StepShape) -> int:
        b, n, t = shape.batch, shape.image_tokens, shape.text_tokens
        flops = conv_patch_flops(model.pos_embed.proj, b, n)
        flops += linear_flops(model.time_text_embed, b)  # timestep MLP + pooled-text MLP, per sample
        flops += linear_flops(model.context_embedder, b * t)
        for block in model.transformer_blocks:
            # adaLN modulation of both streams (6·D or 9·D, and 6·D or 2·D on the last block)
            flops += linear_flops(block.norm1, b) + linear_flops(block.norm1_context, b)
        flops += linear_flops(model.norm_out, b)
        return flops + linear_flops(model.proj_out, b * n)

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
        x = torch.randn(batch, cfg.in_channels, size, size, generator=generator)
        text = torch.randn(batch, self.example_text_tokens, cfg.joint_attention_dim, generator=generator)
        pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=generator)
        timestep = torch.rand(batch, generator=generator) * 1000  # sigma·1000, as the pipeline passes
        return {
            "hidden_states": x.to(device, dtype),
            "encoder_hidden_states": text.to(device, dtype),
            "pooled_projections": pooled.to(device, dtype),
            "timestep": timestep.to(device, dtype),
        }
