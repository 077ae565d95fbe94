"""The embedded default model: a small class-conditional DiT trained on scikit-learn's digits.

The transformer is a stock ``diffusers.DiTTransformer2DModel``; the pipeline around it
(:class:`DigitsDiTPipeline`) works in pixel space (no VAE) and is called like diffusers'
``DiTPipeline``. Weights and the training recipe ship in ``rfcache/models/toy_weights/``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DiTTransformer2DModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

__all__ = [
    "NULL_CLASS",
    "NUM_CLASSES",
    "TOY_CONFIG",
    "TOY_WEIGHTS_DIR",
    "DigitsDiTPipeline",
    "build_toy_transformer",
    "load_digits_images",
    "random_dit_pipeline",
    "toy_scheduler_config",
]

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the extra label-embedding row diffusers adds for guidance
TOY_WEIGHTS_DIR = Path(__file__).with_name("toy_weights")

TOY_CONFIG: dict[str, Any] = {
    "num_attention_heads": 4,
    "attention_head_dim": 48,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 6,
    "sample_size": 16,
    "patch_size": 2,
    "num_embeds_ada_norm": NUM_CLASSES,
    "norm_type": "ada_norm_zero",
}


def toy_scheduler_config() -> dict[str, Any]:
    """The noise schedule the toy model was trained with (DDPM, linear betas, epsilon)."""
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "clip_sample": False,
    }


def build_toy_transformer() -> DiTTransformer2DModel:
    """A randomly initialised transformer with the toy configuration, in eval mode."""
    return DiTTransformer2DModel(**TOY_CONFIG).eval()


def load_digits_images(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits upsampled to ``size``, scaled to [-1, 1]: ``(N, 1, size, size)``, labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1) * 2 - 1, torch.tensor(digits.target, dtype=torch.long)


class DigitsDiTPipeline(DiffusionPipeline):
    """Class-conditional pixel-space DiT sampling, with classifier-free guidance.

    Mirrors ``diffusers.DiTPipeline.__call__`` (class labels in, images out) without a VAE:
    the transformer denoises ``(B, C, H, W)`` pixels directly.
    """

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: DiTTransformer2DModel, scheduler: DDIMScheduler) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @property
    def null_class(self) -> int:
        return int(self.transformer.config.num_embeds_ada_norm)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int] | int,
        *,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        labels = [class_labels] if isinstance(class_labels, int) else list(class_labels)
        for label in labels:
            if not 0 <= int(label) < self.null_class:
                raise ValueError(f"class label {label} is outside 0..{self.null_class - 1}")
        cfg = self.transformer.config
        batch = len(labels)
        device, dtype = self._execution_device, self.transformer.dtype
        shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        use_cfg = guidance_scale > 1
        y = torch.tensor(labels, device=device)
        if use_cfg:
            y = torch.cat([y, torch.full_like(y, self.null_class)])  # cond first, then uncond

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        extra = {"eta": eta} if "eta" in inspect.signature(self.scheduler.step).parameters else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents, latents]) if use_cfg else latents  # (B', C, H, W)
            timesteps = t.expand(model_input.shape[0]).to(device)
            eps = self.transformer(model_input, timestep=timesteps, class_labels=y).sample
            if use_cfg:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(eps, t, latents, generator=generator, **extra).prev_sample

        images = (latents.float() / 2 + 0.5).clamp(0, 1)  # (B, C, H, W) in [0, 1]
        if output_type == "pt":
            out: Any = images
        else:
            out = images.cpu().permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)


def random_dit_pipeline(sample_size: int = 16, seed: int = 0) -> DigitsDiTPipeline:
    """The toy pipeline around a random DiT sized like DiT-S (hidden 384, 12 layers, 4-channel latent).

    The speed model of the benchmarks: large enough for module compute to dominate hook overhead.
    ``sample_size`` 16 gives 64 tokens, 32 gives DiT-S/2's 256 at 256 px. Seeds the global RNG.
    """
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=6,
        attention_head_dim=64,
        in_channels=4,
        out_channels=4,
        num_layers=12,
        sample_size=sample_size,
    ).eval()
    pipe = DigitsDiTPipeline(transformer=transformer, scheduler=DDIMScheduler(**toy_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def read_training_record(weights_dir: Path = TOY_WEIGHTS_DIR) -> dict[str, Any]:
    """The recipe and measurements recorded beside the shipped weights."""
    return json.loads((weights_dir / "training.json").read_text())
