"""Analytic FLOP counting helpers, in the convention of ``torch.utils.flop_counter``.

A FLOP is counted as in the DiT and nanoGPT papers: 2 per multiply-add, matmuls and attention
only (elementwise work such as norms, activations and residual adds is not counted; it is small and
``FlopCounterMode`` ignores it too). Every function is pure arithmetic on layer shapes taken from
the model's configuration, so cost is known before anything runs.
"""

from __future__ import annotations

import torch

__all__ = ["attention_core_flops", "conv_patch_flops", "linear_flops"]


def linear_flops(module: torch.nn.Module | None, rows: int) -> int:
    """FLOPs of applying every ``nn.Linear`` inside ``module`` to ``rows`` vectors: 2·rows·in·out."""
    if module is None:
        return 0
    layers = [module] if isinstance(module, torch.nn.Linear) else module.modules()
    return sum(2 * rows * m.in_features * m.out_features for m in layers if isinstance(m, torch.nn.Linear))


def attention_core_flops(batch: int, q_tokens: int, kv_tokens: int, inner_dim: int) -> int:
    """FLOPs of softmax(QKᵀ)V over all heads: two matmuls of 2·q·kv·inner each, per sample."""
    return 4 * batch * q_tokens * kv_tokens * inner_dim


def conv_patch_flops(conv: torch.nn.Module, batch: int, tokens: int) -> int:
    """FLOPs of a patchifying convolution (kernel == stride) producing ``tokens`` outputs per sample."""
    kernel = 1
    for k in conv.kernel_size:
        kernel *= k
    return 2 * batch * tokens * conv.in_channels * kernel * conv.out_channels
