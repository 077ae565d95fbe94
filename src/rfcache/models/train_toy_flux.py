"""Train ``toy-flux`` (a small Flux transformer) on scikit-learn's digits; reproducible from its seed.

    python -m rfcache.models.train_toy_flux --steps 2500 --batch-size 48 --lr 1e-3 --seed 0

Recipe (rectified flow, as SD3 / Flux, scaled down): ``x_t = (1 - s) x_0 + s e`` with ``s`` uniform
on (0, 1), the transformer predicts the velocity ``e - x_0`` (FlowMatchEulerDiscreteScheduler's
convention), AdamW with warm-up and cosine decay, gradient clipping, and an EMA copy of the weights,
which is what is saved. Each sample's prompt is one of the templates of
:data:`~rfcache.models.toy_flux.PROMPT_TEMPLATES` for its digit (uniformly), replaced by the empty
prompt with probability 0.1 (prompt dropout, for classifier-free guidance). Linears are xavier-
initialised, adaLN modulations and the output projection zero-initialised (DiT's recipe). Text
embeddings come from the pipeline's own (fixed, random) encoders, computed once per prompt.

One torch thread by default: on the shared 2-core machine a training step took 0.8 s with one
thread and 5-7 s with two (OpenMP workers spinning against other jobs' threads).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxPipeline

from rfcache.models.toy import load_digits_images
from rfcache.models.toy_flux import (
    PROMPT_TEMPLATES,
    SAMPLE_SIZE,
    TEXT_TOKENS,
    TOY_FLUX_WEIGHTS_DIR,
    build_toy_flux_pipeline,
    digit_prompts,
)
from rfcache.models.train_toy import optimise, warmup_cosine, xavier_linears

logger = logging.getLogger("rfcache.train_toy_flux")

PROMPT_DROPOUT = 0.1
EMA_DECAY = 0.999


def _init_weights(model: torch.nn.Module) -> None:
    """Xavier linears; zero adaLN modulations and output projection, so every block starts as identity."""
    xavier_linears(model)
    zeroed = [model.norm_out.linear, model.proj_out]
    for block in model.transformer_blocks:
        zeroed += [block.norm1.linear, block.norm1_context.linear]
    zeroed += [block.norm.linear for block in model.single_transformer_blocks]
    for linear in zeroed:
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)


def encode_prompts(pipe: FluxPipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token embeddings ``(P, L, 64)``, pooled embeddings ``(P, 64)`` and text ids ``(L, 3)`` of ``prompts``."""
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, max_sequence_length=TEXT_TOKENS, device=torch.device("cpu")
        )
    return embeds, pooled, text_ids


def _batch(data: dict[str, torch.Tensor], batch_size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Noisy packed latents, the velocity target and the text conditioning for one batch."""
    idx = torch.randint(0, data["latents"].shape[0], (batch_size,), generator=g)
    x0 = data["latents"][idx]  # (B, 64, 4)
    digits = data["labels"][idx]
    per_digit = data["prompt_index"]  # (10, T): prompt index of template t for digit d
    choice = per_digit[digits, torch.randint(0, per_digit.shape[1], (batch_size,), generator=g)]
    dropped = torch.rand(batch_size, generator=g) < PROMPT_DROPOUT
    choice = torch.where(dropped, torch.full_like(choice, data["empty_index"]), choice)
    noise = torch.randn(x0.shape, generator=g)
    sigma = torch.rand(batch_size, generator=g)
    xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise  # (B, 64, 4)
    return {
        "hidden_states": xt,
        "timestep": sigma,
        "encoder_hidden_states": data["embeds"][choice],
        "pooled_projections": data["pooled"][choice],
        "target": noise - x0,
    }


def prepare_data(pipe: FluxPipeline) -> dict[str, torch.Tensor]:
    """Standardised packed latents of every digit, and the embeddings of every prompt plus the empty one."""
    images, labels = load_digits_images(SAMPLE_SIZE)  # (N, 1, 16, 16) in [-1, 1]
    vae = pipe.vae.config
    with torch.no_grad():
        raw = pipe.vae.encode(images).latent_dist.mode()  # the identity VAE: (N, 1, 16, 16)
    latents = (raw - vae.shift_factor) * vae.scaling_factor
    packed = FluxPipeline._pack_latents(latents, latents.shape[0], 1, SAMPLE_SIZE, SAMPLE_SIZE)  # (N, 64, 4)
    pairs = digit_prompts()
    embeds, pooled, text_ids = encode_prompts(pipe, [p for p, _ in pairs] + [""])
    prompt_index = torch.tensor([[t * 10 + d for t in range(len(PROMPT_TEMPLATES))] for d in range(10)])
    img_ids = FluxPipeline._prepare_latent_image_ids(1, SAMPLE_SIZE // 2, SAMPLE_SIZE // 2, "cpu", torch.float32)
    return {
        "latents": packed,
        "labels": labels,
        "embeds": embeds,
        "pooled": pooled,
        "txt_ids": text_ids,
        "img_ids": img_ids,
        "prompt_index": prompt_index,
        "empty_index": torch.tensor(len(pairs)),
    }


def train(
    steps: int, seed: int, out: Path, batch_size: int = 48, lr: float = 1e-3, snapshot_every: int = 0
) -> dict[str, Any]:
    """Train for ``steps`` optimiser steps; write the pipeline (EMA transformer) and a record to ``out``."""
    torch.manual_seed(seed)
    images, _ = load_digits_images(SAMPLE_SIZE)
    pipe = build_toy_flux_pipeline(seed=seed, **_latent_statistics(images))
    data = prepare_data(pipe)
    model = pipe.transformer.train()
    _init_weights(model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup))
    g = torch.Generator().manual_seed(seed)
    start, running = time.perf_counter(), None
    for step in range(steps):
        batch = _batch(data, batch_size, g)
        target = batch.pop("target")
        pred = model(**batch, txt_ids=data["txt_ids"], img_ids=data["img_ids"], return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, target)
        value = optimise(model, ema, opt, sched, loss, step, ema_decay=EMA_DECAY)
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 100 == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f (%.0f s)", step, steps, running, time.perf_counter() - start)
        if snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            _save(pipe, ema, {"snapshot_at_step": step + 1}, out.with_name(out.name + ".snapshot"))
    record = _record(steps, seed, batch_size, lr, warmup, running or 0.0, time.perf_counter() - start)
    _save(pipe, ema, record, out)
    return record


def _latent_statistics(images: torch.Tensor) -> dict[str, float]:
    """The VAE's shift and scaling factors: the data's mean and 1 / standard deviation, rounded."""
    return {"shift_factor": round(float(images.mean()), 4), "scaling_factor": round(1 / float(images.std()), 4)}


def _record(steps: int, seed: int, batch_size: int, lr: float, warmup: int, loss: float, seconds: float) -> dict:
    return {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": f"linear warm-up {warmup} steps, cosine to 0.1x",
        "optimizer": "AdamW (weight decay 0), gradient clipping at 1.0",
        "objective": "rectified flow: x_t = (1-s) x0 + s e, s ~ U(0, 1), predict e - x0",
        "ema_decay": EMA_DECAY,
        "prompt_dropout": PROMPT_DROPOUT,
        "prompts": f"{len(PROMPT_TEMPLATES)} templates x 10 digits (rfcache.models.toy_flux.PROMPT_TEMPLATES)",
        "final_loss_ema": round(loss, 5),
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "data": "sklearn.datasets.load_digits, 8x8 bilinear-upsampled to 16x16, scaled to [-1, 1]",
        "trained": "transformer only; text encoders fixed random (seeded), VAE the fixed identity",
        "command": (
            f"python -m rfcache.models.train_toy_flux --steps {steps} --batch-size {batch_size} "
            f"--lr {lr:g} --seed {seed} --threads {torch.get_num_threads()}"
        ),
    }


def _save(pipe: FluxPipeline, ema: torch.nn.Module, record: dict[str, Any], out: Path) -> None:
    """Write ``pipe`` with the EMA transformer, plus ``training.json``, to ``out`` (replaced atomically)."""
    saved = FluxPipeline(**{**pipe.components, "transformer": ema})
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / "weights"
        saved.save_pretrained(tmp_out, safe_serialization=True)
        (tmp_out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp_out.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--snapshot-every", type=int, default=0, help="also save the EMA every N steps to OUT.snapshot")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see the module docstring)")
    parser.add_argument("--out", type=Path, default=TOY_FLUX_WEIGHTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    record = train(
        args.steps, args.seed, args.out, batch_size=args.batch_size, lr=args.lr, snapshot_every=args.snapshot_every
    )
    logger.info("wrote %s: %s", args.out, record)


if __name__ == "__main__":
    main()
