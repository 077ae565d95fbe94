"""Adapter for diffusers' ``DiTTransformer2DModel`` (class-conditional DiT, adaLN-zero blocks).

Block: ``BasicTransformerBlock`` with ``norm_type="ada_norm_zero"``. Units per block:
``attn1`` (self-attention on ``LN(x)·(1+scale_msa)+shift_msa``) and ``ff`` (MLP on
``LN(x)·(1+scale_mlp)+shift_mlp``); both outputs are taken before ``gate_msa``/``gate_mlp``.
Trap: the model's forward reads ``transformer_blocks[0].norm1`` after the block loop, so blocks
are never replaced, only their sub-modules' forwards wrapped.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rfcache.models.base import BlockAdapter, CacheUnit, StepShape, modulation_outputs, repeat_steps
from rfcache.models.flops import attention_core_flops, conv_patch_flops, linear_flops

__all__ = ["DiTAdapter"]


class DiTAdapter(BlockAdapter):
    family = "dit"
    model_classes = ("DiTTransformer2DModel",)
    block_lists = ("transformer_blocks",)
    module_kinds = {"transformer_blocks": ("attn1", "ff")}
    taylorseer_warmup: ClassVar[int] = 2  # TaylorSeer's DiT code: first_enhance = 2

    def step_shape(self, model: torch.nn.Module, inputs: dict[str, Any]) -> StepShape:
        x = inputs["hidden_states"]  # (B, C, H, W)
        p = model.config.patch_size
        return StepShape(batch=x.shape[0], image_tokens=(x.shape[-2] // p) * (x.shape[-1] // p))

    def module_flops(self, model: torch.nn.Module, unit: CacheUnit, shape: StepShape) -> int:
        module = self.resolve(model, unit)
        rows = shape.batch * shape.image_tokens
        flops = linear_flops(module, rows)
        if unit.kind == "attn1":
            flops += attention_core_flops(shape.batch, shape.image_tokens, shape.image_tokens, module.inner_dim)
        return flops

    def skeleton_flops(self, model: torch.nn.Module, shape: StepShape) -> int:
        b, n = shape.batch, shape.image_tokens
        flops = conv_patch_flops(model.pos_embed.proj, b, n)
        for block in model.transformer_blocks:
            # per sample: timestep MLP and the adaLN modulation (6·D outputs)
            flops += linear_flops(block.norm1.emb, b) + linear_flops(block.norm1.linear, b)
        # final layer: the forward recomputes block 0's conditioning, then shift/scale and the projection
        flops += linear_flops(model.transformer_blocks[0].norm1.emb, b) + linear_flops(model.proj_out_1, b)
        return flops + linear_flops(model.proj_out_2, b * n)

    conditioning_inputs = ("class_labels",)

    def conditioning_paths(self, model: torch.nn.Module) -> tuple[str, ...]:
        # each block's timestep/class embedding and adaLN linear; the final layer's projection (the
        # forward feeds it block 0's embedding again)
        paths = [
            f"transformer_blocks.{i}.norm1.{m}" for i in range(len(model.transformer_blocks)) for m in ("emb", "linear")
        ]
        return (*paths, "proj_out_1")

    def shared_conditioning(
        self, model: torch.nn.Module, inputs: dict[str, Any], timesteps: torch.Tensor, steps: int
    ) -> dict[str, Any]:
        labels = repeat_steps(inputs["class_labels"], steps)  # (S*B,)
        dtype = inputs["hidden_states"].dtype
        out: dict[str, Any] = {}
        for i, block in enumerate(model.transformer_blocks):
            emb = block.norm1.emb(timesteps, labels, hidden_dtype=dtype)  # (S*B, D)
            out[f"transformer_blocks.{i}.norm1.emb"] = emb
            out.update(modulation_outputs(model, [f"transformer_blocks.{i}.norm1.linear"], emb))
        out.update(modulation_outputs(model, ["proj_out_1"], out["transformer_blocks.0.norm1.emb"]))
        return out

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
        x = torch.randn(batch, cfg.in_channels, size, size, generator=generator).to(device, dtype)
        num_classes = cfg.num_embeds_ada_norm
        return {
            "hidden_states": x,
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).to(device),
            "class_labels": torch.randint(0, num_classes, (batch,), generator=generator).to(device),
        }
