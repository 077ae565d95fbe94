"""Adapter for diffusers' ``WanTransformer3DModel`` (Wan 2.1 / 2.2 text- and image-to-video).

Block: ``WanTransformerBlock``, called with **positional arguments only**
(``hidden_states, encoder_hidden_states, temb, rotary_emb``); the block signature binds them by
name. Units per block, in call order (each also called positionally):

* ``attn1``: self-attention with RoPE on ``LN(x)·(1+scale_msa)+shift_msa``; before ``gate_msa``.
* ``attn2``: cross-attention, queries over video tokens, keys/values over text tokens. Like PixArt
  it has **no gate**: its output is added to the stream directly. Its input is ``norm2(x)``
  (affine LayerNorm when ``cross_attn_norm``, else the raw stream).
* ``ffn``: MLP on ``LN(x)·(1+c_scale_msa)+c_shift_msa``; before ``c_gate_msa``.

Traps:

* Image-to-video models (``added_kv_proj_dim`` set) prepend CLIP image tokens to the text tokens;
  ``attn2`` then splits them off assuming exactly **512 text tokens** and runs a second attention
  core over the image tokens with ``add_k_proj``/``add_v_proj``. Its token count is recorded in
  ``StepShape.extra["image_context_tokens"]``.
* Wan 2.2 TI2V passes a 2-D ``timestep`` (B, N): the time embedding and ``time_proj`` then run per
  token (``StepShape.extra["timestep_rows"]``) and the modulation is per token.
* Norms and modulation run in float32 (``FP32LayerNorm``, ``temb.float()``), so a block's dtype
  casts surround the units; the units' own dtype is the model's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rfcache.models.base import BlockAdapter, CacheUnit, StepShape
from rfcache.models.flops import attention_core_flops, conv_patch_flops, linear_flops

__all__ = ["WanAdapter"]


class WanAdapter(BlockAdapter):
    family = "wan"
    model_classes = ("WanTransformer3DModel",)
    block_lists = ("blocks",)
    module_kinds: ClassVar[dict[str, tuple[str, ...]]] = {"blocks": ("attn1", "attn2", "ffn")}
    taylorseer_warmup: ClassVar[int] = 2  # TaylorSeer's own code has no Wan setting: DiT's 2

    #: latent video (frames, height, width) and text tokens in ``example_inputs``
    example_latent: ClassVar[tuple[int, int, int]] = (2, 8, 8)
    example_text_tokens: ClassVar[int] = 6

    text_inputs: ClassVar[dict[str, int]] = {"encoder_hidden_states": 1}

    def conditioning_paths(self, model: torch.nn.Module) -> tuple[str, ...]:
        # the time embedding (timestep MLP and the 6·D projection); the text projection stays per step
        return ("condition_embedder.time_embedder", "condition_embedder.time_proj")

    def shared_conditioning(
        self, model: torch.nn.Module, inputs: dict[str, Any], timesteps: torch.Tensor, steps: int
    ) -> dict[str, Any]:
        embedder = model.condition_embedder
        t = embedder.timesteps_proj(timesteps)  # (S*B, F)
        t = t.to(next(iter(embedder.time_embedder.parameters())).dtype)
        temb = embedder.time_embedder(t)  # (S*B, D)
        proj = embedder.time_proj(embedder.act_fn(temb.type_as(inputs["encoder_hidden_states"])))
        return {"condition_embedder.time_embedder": temb, "condition_embedder.time_proj": proj}

    def step_shape(self, model: torch.nn.Module, inputs: dict[str, Any]) -> StepShape:
        x = inputs["hidden_states"]  # (B, C, F, H, W)
        p_t, p_h, p_w = model.config.patch_size
        tokens = (x.shape[2] // p_t) * (x.shape[3] // p_h) * (x.shape[4] // p_w)
        extra = {"timestep_rows": inputs["timestep"].numel()}
        image = inputs.get("encoder_hidden_states_image")
        if image is not None:
            # FLF2V's pos_embed regroups two images per sample: count embedded tokens per sample
            extra["image_context_tokens"] = image.numel() // image.shape[-1] // x.shape[0]
        return StepShape(
            batch=x.shape[0], image_tokens=tokens, text_tokens=inputs["encoder_hidden_states"].shape[1], extra=extra
        )

    def module_flops(self, model: torch.nn.Module, unit: CacheUnit, shape: StepShape) -> int:
        module = self.resolve(model, unit)
        b, n, t = shape.batch, shape.image_tokens, shape.text_tokens
        if unit.kind == "ffn":
            return linear_flops(module, b * n)
        kv = n if unit.kind == "attn1" else t
        flops = linear_flops(module.to_q, b * n) + linear_flops(module.to_out, b * n)
        flops += linear_flops(module.to_k, b * kv) + linear_flops(module.to_v, b * kv)
        flops += attention_core_flops(b, n, kv, module.inner_dim)
        if unit.kind == "attn2" and module.add_k_proj is not None:  # image-to-video: a second core over image tokens
            img = shape.extra.get("image_context_tokens", 0)
            flops += linear_flops(module.add_k_proj, b * img) + linear_flops(module.add_v_proj, b * img)
            flops += attention_core_flops(b, n, img, module.inner_dim)
        return flops

    def skeleton_flops(self, model: torch.nn.Module, shape: StepShape) -> int:
        b, n, t = shape.batch, shape.image_tokens, shape.text_tokens
        cond = model.condition_embedder
        time_rows = shape.extra.get("timestep_rows", b)
        flops = conv_patch_flops(model.patch_embedding, b, n)
        flops += linear_flops(cond.time_embedder, time_rows) + linear_flops(cond.time_proj, time_rows)
        flops += linear_flops(cond.text_embedder, b * t)
        if cond.image_embedder is not None:
            flops += linear_flops(cond.image_embedder, b * shape.extra.get("image_context_tokens", 0))
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
        frames, height, width = self.example_latent
        x = torch.randn(batch, cfg.in_channels, frames, height, width, generator=generator)
        text_tokens = 512 if cfg.added_kv_proj_dim is not None else self.example_text_tokens
        text = torch.randn(batch, text_tokens, cfg.text_dim, generator=generator)
        inputs: dict[str, Any] = {
            "hidden_states": x.to(device, dtype),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).to(device),
            "encoder_hidden_states": text.to(device, dtype),
        }
        if cfg.image_dim is not None:
            image = torch.randn(batch, 4, cfg.image_dim, generator=generator)  # a few CLIP image tokens
            inputs["encoder_hidden_states_image"] = image.to(device, dtype)
        return inputs
