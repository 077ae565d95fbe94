"""Count sketches: a short random summary of a tensor whose linear combinations keep their norms.

The error model needs the norm of forecast errors such as ``O(t) - O(t-k) + c * (O(t) - O(t+N))``
for many step combinations, without keeping every unit's full output of every step. A count
sketch ``S x`` (each coordinate added, with a random sign, into one of ``width`` buckets) is
linear, so the sketch of such a combination is the same combination of sketches, and
``E ||S x||² = ||x||²`` with a relative spread of about ``sqrt(2 / width)`` per vector (far less
once summed over units and samples). It costs one pass over the tensor, unlike a dense projection.
The hash depends only on the vector length and a fixed seed, so shards recorded on different
machines share it.
"""

from __future__ import annotations

import torch

__all__ = ["count_sketch"]

_SEED = 20260224
_HASHES: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _hash(numel: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (numel, width, str(device))
    if key not in _HASHES:
        gen = torch.Generator().manual_seed(_SEED + numel)
        bucket = torch.randint(0, width, (numel,), generator=gen)
        sign = torch.randint(0, 2, (numel,), generator=gen).float() * 2 - 1
        _HASHES[key] = (bucket.to(device), sign.to(device))
    return _HASHES[key]


def count_sketch(x: torch.Tensor, width: int) -> torch.Tensor:
    """Per sample: ``(B, ...) -> (B, width)`` in float32; norms of sketches estimate norms of ``x``."""
    flat = x.detach().flatten(1).float()  # (B, D)
    bucket, sign = _hash(flat.shape[1], width, flat.device)
    out = torch.zeros(flat.shape[0], width, device=flat.device)
    return out.index_add_(1, bucket, flat * sign)  # (B, width)
