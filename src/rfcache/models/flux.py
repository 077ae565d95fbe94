"""Adapter for diffusers' ``FluxTransformer2DModel`` (FLUX.1: double-stream then single-stream blocks).

Block lists, in execution order: ``transformer_blocks`` (``FluxTransformerBlock``, double-stream)
then ``single_transformer_blocks`` (``FluxSingleTransformerBlock``). Both are called with keywords
and return ``(encoder_hidden_states, hidden_states)``.

Units of a double-stream block, in call order:

* ``attn``: joint attention; image tokens through ``to_q/to_k/to_v/to_out``, text tokens through
  ``add_q_proj/add_k_proj/add_v_proj/to_add_out``, core over text+image tokens (RoPE on both).
  Returns ``(image_out, text_out)``, both before ``gate_msa`` / ``c_gate_msa``.
* ``ff``: image MLP, before ``gate_mlp``. ``ff_context``: text MLP, before ``c_gate_mlp``.

Units of a single-stream block, in call order. The block concatenates text and image tokens, so
these run over ``T+N`` tokens; its forward is
``gate · proj_out(cat(attn(h), gelu(proj_mlp(h))))`` with ``h`` the modulated hidden state:

* ``proj_mlp``: the MLP up-projection (``D → 4D``), called *before* ``attn``. Its output is the
  pre-activation MLP hidden state, 4x wider than the stream: caching it costs 4x the memory.
* ``attn``: self-attention over text+image tokens (``pre_only``: no output projection; that work
  is folded into ``proj_out``). Output ``(B, T+N, D)``.
* ``proj_out``: the fused output projection ``(D + 4D) → D`` of ``cat(attn, gelu(mlp))``; its
  output is the block's whole residual update before ``gate``. Its *input* is that ``5D``-wide
  concatenation, not the ``D``-wide stream.

All three are units so a runtime can reuse attention alone (``attn``), the MLP alone
(``proj_mlp``), or the whole update (all three, which is what block granularity means here).
There is no clean "MLP output before the gate": the MLP's down-projection is shared with the
attention's output projection inside ``proj_out``.

Traps:

* ``img_ids`` / ``txt_ids`` are 2-D ``(tokens, 3)``; 3-D ids are accepted with a warning.
* ``timestep`` (and ``guidance``) are in [0, 1]: the model multiplies them by 1000.
* ``guidance`` is required exactly when the config has ``guidance_embeds`` (FLUX.1-dev).
* IP-Adapter processors make the double-stream ``attn`` return a third tensor (``ip_attn_output``)
  that is added after the gate; the analytic FLOPs here do not count IP-Adapter work.
* Fused QKV projections (``fuse_qkv_projections``) change the linears but not their FLOPs; the
  per-linear count here assumes unfused ``to_q``/``to_k``/``to_v``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rfcache.models.base import BlockAdapter, CacheUnit, StepShape, existing_paths, modulation_outputs, repeat_steps
from rfcache.models.flops import attention_core_flops, linear_flops

__all__ = ["FluxAdapter"]


class FluxAdapter(BlockAdapter):
    family = "flux"
    model_classes = ("FluxTransformer2DModel",)
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    unbatched_inputs = ("img_ids", "txt_ids")
    module_kinds: ClassVar[dict[str, tuple[str, ...]]] = {
        "transformer_blocks": ("attn", "ff", "ff_context"),
        "single_transformer_blocks": ("proj_mlp", "attn", "proj_out"),
    }
    taylorseer_warmup: ClassVar[int] = 3  # TaylorSeer's FLUX code: first_enhance = 3

    #: packed latent grid (rows, cols) and text tokens in ``example_inputs``
    example_grid: ClassVar[tuple[int, int]] = (4, 4)
    example_text_tokens: ClassVar[int] = 6

    def block_outputs(self, block_list: str) -> tuple[str, ...]:
        return ("encoder_hidden_states", "hidden_states")

    conditioning_inputs = ("pooled_projections", "guidance")
    text_inputs: ClassVar[dict[str, int]] = {"encoder_hidden_states": 1, "txt_ids": 0}
    timestep_divisor = 1000.0  # FluxPipeline passes t / 1000; the transformer multiplies it back

    def conditioning_paths(self, model: torch.nn.Module) -> tuple[str, ...]:
        double = [
            f"transformer_blocks.{i}.{n}.linear"
            for i in range(len(model.transformer_blocks))
            for n in ("norm1", "norm1_context")
        ]
        single = [f"single_transformer_blocks.{i}.norm.linear" for i in range(len(model.single_transformer_blocks))]
        return ("time_text_embed", *existing_paths(model, [*double, *single, "norm_out.linear"]))

    def shared_conditioning(
        self, model: torch.nn.Module, inputs: dict[str, Any], timesteps: torch.Tensor, steps: int
    ) -> dict[str, Any]:
        dtype = inputs["hidden_states"].dtype
        batch = timesteps.shape[0] // steps
        pooled = repeat_steps(inputs["pooled_projections"], steps, batch)
        t = timesteps.to(dtype) * 1000  # as FluxTransformer2DModel.forward scales it
        guidance = inputs.get("guidance")
        if guidance is None:
            temb = model.time_text_embed(t, pooled)
        else:
            temb = model.time_text_embed(t, repeat_steps(guidance, steps, batch).to(dtype) * 1000, pooled)
        paths = self.conditioning_paths(model)
        return {"time_text_embed": temb, **modulation_outputs(model, paths[1:], temb)}

    def step_shape(self, model: torch.nn.Module, inputs: dict[str, Any]) -> StepShape:
        x = inputs["hidden_states"]  # (B, N, C): packed 2x2 latent patches
        return StepShape(
            batch=x.shape[0], image_tokens=x.shape[1], text_tokens=inputs["encoder_hidden_states"].shape[1]
        )

    def module_flops(self, model: torch.nn.Module, unit: CacheUnit, shape: StepShape) -> int:
        module = self.resolve(model, unit)
        b, n, t = shape.batch, shape.image_tokens, shape.text_tokens
        if unit.block_list == "single_transformer_blocks":
            rows = b * (n + t)
            if unit.kind == "attn":  # q/k/v over all tokens, no output projection
                qkv = (
                    linear_flops(module.to_q, rows) + linear_flops(module.to_k, rows) + linear_flops(module.to_v, rows)
                )
                return qkv + attention_core_flops(b, n + t, n + t, module.inner_dim)
            return linear_flops(module, rows)  # proj_mlp, proj_out
        if unit.kind == "ff":
            return linear_flops(module, b * n)
        if unit.kind == "ff_context":
            return linear_flops(module, b * t)
        image = linear_flops(module.to_q, b * n) + linear_flops(module.to_k, b * n) + linear_flops(module.to_v, b * n)
        image += linear_flops(module.to_out, b * n)
        text = linear_flops(module.add_q_proj, b * t) + linear_flops(module.add_k_proj, b * t)
        text += linear_flops(module.add_v_proj, b * t) + linear_flops(module.to_add_out, b * t)
        return image + text + attention_core_flops(b, n + t, n + t, module.inner_dim)

    def skeleton_flops(self, model: torch.nn.Module, shape: StepShape) -> int:
        b, n, t = shape.batch, shape.image_tokens, shape.text_tokens
        flops = linear_flops(model.x_embedder, b * n) + linear_flops(model.context_embedder, b * t)
        flops += linear_flops(model.time_text_embed, b)  # timestep (+ guidance) MLPs and pooled-text MLP
        for block in model.transformer_blocks:
            flops += linear_flops(block.norm1, b) + linear_flops(block.norm1_context, b)  # 6·D each
        for block in model.single_transformer_blocks:
            flops += linear_flops(block.norm, b)  # 3·D
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
        rows, cols = self.example_grid
        n, t = rows * cols, self.example_text_tokens
        img_ids = torch.zeros(rows, cols, 3)
        img_ids[..., 1] = torch.arange(rows)[:, None]
        img_ids[..., 2] = torch.arange(cols)[None, :]
        inputs: dict[str, Any] = {
            "hidden_states": torch.randn(batch, n, cfg.in_channels, generator=generator).to(device, dtype),
            "encoder_hidden_states": torch.randn(batch, t, cfg.joint_attention_dim, generator=generator).to(
                device, dtype
            ),
            "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=generator).to(device, dtype),
            "timestep": torch.rand(batch, generator=generator).to(device, dtype),
            "img_ids": img_ids.reshape(n, 3).to(device, dtype),
            "txt_ids": torch.zeros(t, 3).to(device, dtype),
        }
        if cfg.guidance_embeds:
            inputs["guidance"] = torch.full((batch,), 3.5).to(device, dtype)
        return inputs
