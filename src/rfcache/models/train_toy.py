"""Train the embedded toy DiT on scikit-learn's digits; reproducible from its seed.

    python -m rfcache.models.train_toy --steps 3000 --batch-size 48 --lr 1e-3 --seed 0

Recipe (DiT paper, scaled down): epsilon prediction under DDPM linear betas, AdamW, label
dropout once per sample to the null class (for classifier-free guidance), xavier-initialised
linears with zero-initialised adaLN modulation and final layer, and an EMA copy of the weights,
which is what is saved.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from rfcache.models.toy import (
    NULL_CLASS,
    TOY_CONFIG,
    build_toy_transformer,
    load_digits_images,
    toy_scheduler_config,
)
from rfcache.outputs import replace_folder

logger = logging.getLogger("rfcache.train_toy")


def xavier_linears(model: torch.nn.Module) -> None:
    """Every linear layer xavier-uniform with zero bias (the DiT paper's starting point)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def _dit_init(model: torch.nn.Module) -> None:
    """DiT-paper initialisation: xavier linears, zero adaLN modulation and final projection."""
    xavier_linears(model)
    for block in model.transformer_blocks:
        torch.nn.init.zeros_(block.norm1.linear.weight)
        torch.nn.init.zeros_(block.norm1.linear.bias)
        block.norm1.emb.class_embedder.dropout_prob = 0.0  # dropout is done once per sample below
        torch.nn.init.normal_(block.norm1.emb.class_embedder.embedding_table.weight, std=0.02)
    for proj in (model.proj_out_1, model.proj_out_2):
        torch.nn.init.zeros_(proj.weight)
        torch.nn.init.zeros_(proj.bias)


def warmup_cosine(steps: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor at step ``s``: linear warm-up, then cosine decay to 0.1."""
    return lambda s: min(1.0, (s + 1) / max(1, warmup)) * (0.5 * (1 + math.cos(math.pi * s / steps)) * 0.9 + 0.1)


def optimise(
    model: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
    step: int,
    *,
    ema_decay: float = 0.999,
) -> float:
    """One optimiser step on ``loss`` (gradients clipped at norm 1) and the EMA update; the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)
    return loss.item()


def train(steps: int, seed: int, out: Path, batch_size: int = 48, lr: float = 1e-3) -> dict:
    """Train for ``steps`` optimiser steps and write the EMA weights + scheduler + record to ``out``."""
    torch.manual_seed(seed)
    images, labels = load_digits_images(TOY_CONFIG["sample_size"])
    model = build_toy_transformer().train()
    _dit_init(model)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    noise_scheduler = DDPMScheduler(**toy_scheduler_config())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup))
    g = torch.Generator().manual_seed(seed)
    start, running = time.perf_counter(), None
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(batch_size, generator=g) < 0.1] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        xt = noise_scheduler.add_noise(x0, noise, t)
        pred = model(xt, timestep=t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        value = optimise(model, ema, opt, sched, loss, step)
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 100 == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f (%.0f s)", step, steps, running, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    record = {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": f"linear warm-up {warmup} steps, cosine to 0.1x",
        "ema_decay": 0.999,
        "label_dropout": 0.1,
        "final_loss_ema": round(running, 5),
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "data": "sklearn.datasets.load_digits, 8x8 bilinear-upsampled to 16x16, scaled to [-1, 1]",
        "command": (
            f"python -m rfcache.models.train_toy --steps {steps} --batch-size {batch_size} --lr {lr:g} --seed {seed}"
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / "weights"
        ema.save_pretrained(tmp_out / "transformer")
        DDIMScheduler(**toy_scheduler_config()).save_pretrained(tmp_out / "scheduler")
        (tmp_out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        # replaces only a weights folder this script wrote (or an empty one), never anything else
        replace_folder(tmp_out, out, force=True, ours=lambda folder: (folder / "training.json").is_file())
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("toy_weights"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    record = train(args.steps, args.seed, args.out, batch_size=args.batch_size, lr=args.lr)
    logger.info("wrote %s: %s", args.out, record)


if __name__ == "__main__":
    main()
