"""Predictors: how a skipped unit's output is produced. Pure tensor code, no model knowledge.

Notation (docs/method.md): the last full step is ``t``, the one before ``t+N``; ``k >= 1`` steps have
passed since ``t``. Steps are counted in sampling order here, so ``N`` and ``k`` are positive.

- ``reuse`` (FORA): ``O(t-k) = O(t)``.
- ``taylor`` (TaylorSeer): divided differences ``D_0 = O(t)``, ``D_{i+1} = (D_i(t) - D_i(t+N)) / N``
  refreshed at every full step with the actual distance ``N``; ``O(t-k) = sum_i D_i k^i / i!``.
- ``relational`` (RFE): TaylorSeer's direction ``d(k) = sum_{i>=1} D_i k^i / i!`` rescaled to the
  magnitude the input change predicts: ``O(t) + s * ||I(t-k) - I(t)|| * d(k) / ||d(k)||`` with
  ``s = ||O(t) - O(t+N)|| / ||I(t) - I(t+N)||``. Norms are per sample (dim 0), because a CFG batch
  holds two different trajectories.

Precision (bf16 and fp16 models): the cache state -- ``O(t)``, the differences ``D_i`` and
``I(t)`` -- is kept in the model's dtype, and every norm and inner product (``||I(t-k) - I(t)||``,
``||d(k)||``, the Gram entries ``<D_i, D_j>``, the ratio ``s``) is taken in float32
(:func:`per_sample_norm`, :func:`difference_gram`); the per-sample scale they give is cast to the
state's dtype once. ``D_1 = (O(t) - O(t+N)) / N`` subtracts two outputs already rounded to the
model's dtype, which is exact when they are within a factor 2 of each other, so half-precision
differences add about one rounding of the output, no more than the model's own arithmetic;
float32 state would double the cache for no measurable gain (tests/runtime/test_precision.py:
cached bf16 is as close to cached fp32 as full bf16 is to full fp32, on every family). Norms in
half precision would overflow (fp16) or lose the small input changes the ratio divides by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rfcache.runtime.parallel import Reduce

__all__ = [
    "PREDICTORS",
    "difference_gram",
    "estimate_predictor_flops",
    "gram_pair_weights",
    "gram_relational_forecast",
    "kept_differences",
    "padded_taylor_coefficients",
    "per_sample_norm",
    "per_sample_norms",
    "relation_ratio",
    "relational_forecast",
    "rescaled_forecast",
    "stack_gram",
    "stacked_relational_forecast",
    "taylor_coefficients",
    "taylor_forecast",
    "update_differences",
    "weighted_sum",
]

PREDICTORS = ("reuse", "taylor", "relational")
_EPS = 1e-12


def per_sample_norm(x: torch.Tensor, p: int = 2, *, reduce: Reduce | None = None) -> torch.Tensor:
    """The p-norm of each sample of a batch, at least in float32: ``(B, ...) -> (B,)``.

    With ``reduce`` (context parallelism, parallel.py) ``x`` is a shard of the sequence and the norm
    is the whole sequence's: the shard's sum of ``|x|^p`` summed over the group, then the root.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if reduce is None:
        return torch.linalg.vector_norm(x.flatten(1), ord=p, dim=1)
    return _root(reduce(_power_sum(x, p)), p)


def per_sample_norms(xs: Sequence[torch.Tensor], p: int = 2, *, reduce: Reduce | None = None) -> list[torch.Tensor]:
    """:func:`per_sample_norm` of each of ``xs`` (same batch), reduced in one collective under ``reduce``."""
    if reduce is None:
        return [per_sample_norm(x, p) for x in xs]
    sums = reduce(torch.stack([_power_sum(x.float() if x.dtype != torch.float64 else x, p) for x in xs]))  # (n, B)
    return [_root(s, p) for s in sums.unbind(0)]


def _power_sum(x: torch.Tensor, p: int) -> torch.Tensor:
    flat = x.flatten(1)
    return flat.abs().sum(1) if p == 1 else flat.square().sum(1)  # (B,)


def _root(s: torch.Tensor, p: int) -> torch.Tensor:
    return s if p == 1 else s.sqrt()


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))  # (B,) -> (B, 1, ...)


def update_differences(
    previous: list[torch.Tensor], value: torch.Tensor, distance: int, order: int
) -> list[torch.Tensor]:
    """New divided differences ``[D_0, ..., D_m]`` after a full step ``distance`` steps after the last.

    Orders that need more history than ``previous`` holds are left out, so the list grows by one
    per full step until it reaches ``order + 1``.
    """
    out = [value]
    for i in range(min(order, len(previous))):
        out.append((out[i] - previous[i]) / distance)
    return out


def taylor_coefficients(k: int, count: int) -> list[float]:
    """``[k^0/0!, ..., k^(count-1)/(count-1)!]``: the weights of the differences at ``k`` steps."""
    return [k**i / math.factorial(i) for i in range(count)]


def padded_taylor_coefficients(k: int, order: int, keep: int) -> list[float]:
    """``keep + 1`` weights: :func:`taylor_coefficients` up to ``order`` (what the full steps so far
    allow) and 0 above it, so one fixed-size step (an exported graph, a compiled step) serves every ``k``."""
    return [*taylor_coefficients(k, order + 1), *[0.0] * (keep - order)]


def kept_differences(predictor: str, order: int) -> int:
    """The highest difference a predictor keeps (``D_0..D_keep``): reuse keeps ``D_0`` alone."""
    return 0 if predictor == "reuse" else order


def weighted_sum(differences: list[torch.Tensor], coefficients: Sequence[Any], *, start: int = 0) -> torch.Tensor:
    """``sum_{i >= start} c_i D_i``; coefficients may be floats or 0-d tensors (an exported graph's inputs).

    One fused pass per term (``addcmul`` / ``add(alpha=)``), no temporary per term.
    """
    c = coefficients[start]
    out = differences[start] if _is_one(c) else differences[start] * c
    for i in range(start + 1, len(differences)):
        out = _add_scaled(out, differences[i], coefficients[i], inplace=out is not differences[start])
    return out


def _is_one(c: Any) -> bool:
    return not isinstance(c, torch.Tensor) and c == 1


def _add_scaled(out: torch.Tensor, d: torch.Tensor, c: Any, *, inplace: bool) -> torch.Tensor:
    """``out + c * d``, in place where ``out`` is a fresh temporary; ``c`` a number or a tensor that broadcasts."""
    if isinstance(c, torch.Tensor):
        c = c.to(d.dtype)
        return out.addcmul_(d, c) if inplace else torch.addcmul(out, d, c)
    return out.add_(d, alpha=c) if inplace else torch.add(out, d, alpha=c)


def taylor_forecast(differences: list[torch.Tensor], k: int, *, start: int = 0) -> torch.Tensor:
    """``sum_{i >= start} D_i k^i / i!`` (``start=1`` gives the change term alone)."""
    return weighted_sum(differences, taylor_coefficients(k, len(differences)), start=start)


def relation_ratio(
    output_now: torch.Tensor,
    output_before: torch.Tensor,
    input_now: torch.Tensor,
    input_before: torch.Tensor,
    *,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """Per-sample ``s = ||O(t) - O(t+N)|| / ||I(t) - I(t+N)||``; 0 where the input did not move."""
    num, den = per_sample_norms([output_now - output_before, input_now - input_before], reduce=reduce)
    return torch.where(den > _EPS, num / den.clamp_min(_EPS), torch.zeros_like(num))


def relational_forecast(
    differences: list[torch.Tensor],
    k: int,
    ratio: torch.Tensor,
    input_now: torch.Tensor,
    input_at_full: torch.Tensor,
    *,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """RFE: ``O(t) + s * ||I(t-k) - I(t)|| * d(k) / ||d(k)||``, with per-sample ``s`` of shape (B,)."""
    if len(differences) < 2:
        raise ValueError("relational prediction needs two full steps (D_0 and D_1)")
    direction = taylor_forecast(differences, k, start=1)  # (B, ...)
    return rescaled_forecast(differences[0], direction, ratio, input_now, input_at_full, reduce=reduce)


def rescaled_forecast(
    base: torch.Tensor,
    direction: torch.Tensor,
    ratio: torch.Tensor,
    input_now: torch.Tensor,
    input_at_full: torch.Tensor,
    *,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """``base + s * ||I(t-k) - I(t)|| * direction / ||direction||``: RFE given TaylorSeer's change term."""
    change, length = per_sample_norms([input_now - input_at_full, direction], reduce=reduce)  # (B,) each
    scale = ratio * change / length.clamp_min(_EPS)  # (B,)
    return base + _per_sample(scale, direction).to(direction.dtype) * direction


def difference_gram(
    differences: list[torch.Tensor], *, reduce: Reduce | None = None
) -> dict[tuple[int, int], torch.Tensor]:
    """Per-sample inner products ``<D_i, D_j>`` (``1 <= i <= j``) of the change terms, in float32.

    With them a cached step gets ``||d(k)||`` for any ``k`` without a pass over ``d(k)``:
    ``||sum_i c_i D_i||^2 = sum_ij c_i c_j <D_i, D_j>`` (see :func:`gram_relational_forecast`).
    Under ``reduce`` the shard's inner products are summed over the group (one collective).
    """
    flat = [d.float().flatten(1) for d in differences]
    gram = {(i, j): (flat[i] * flat[j]).sum(1) for i in range(1, len(flat)) for j in range(i, len(flat))}
    if reduce is None or not gram:
        return gram
    return dict(zip(gram, reduce(torch.stack(list(gram.values()))).unbind(0), strict=True))


def gram_relational_forecast(
    differences: list[torch.Tensor],
    coefficients: Sequence[Any],
    gram: dict[tuple[int, int], torch.Tensor],
    ratio: torch.Tensor,
    input_now: torch.Tensor,
    input_at_full: torch.Tensor,
    *,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """RFE as :func:`rescaled_forecast` computes it, with ``||d||`` from :func:`difference_gram`.

    The same prediction up to float rounding, in fewer passes over the tensors: the direction is
    never formed on its own, each ``D_i`` is added once with its per-sample weight. The exported
    cached-step graph uses it; the norm of the input change is still taken at run time.
    """
    square = sum((1 if i == j else 2) * coefficients[i] * coefficients[j] * g for (i, j), g in gram.items())
    return _scaled_change(differences, coefficients, square, ratio, input_now, input_at_full, reduce)


def gram_pair_weights(coefficients: torch.Tensor) -> torch.Tensor:
    """``w`` with ``||sum_{i>=1} c_i D_i||^2 = G @ w``, ``G`` from :func:`stack_gram`: ``(P,)``, once per step."""
    c = coefficients
    pairs = [(1 if i == j else 2) * c[i] * c[j] for i in range(1, len(c)) for j in range(i, len(c))]
    return torch.stack(pairs) if pairs else c.new_zeros(0)


def stack_gram(gram: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """The Gram entries of :func:`difference_gram` side by side, in its pair order: ``(B, P)``."""
    return torch.stack(list(gram.values()), dim=1)


def stacked_relational_forecast(
    differences: list[torch.Tensor],
    coefficients: torch.Tensor,
    pair_weights: torch.Tensor,
    gram: torch.Tensor,
    ratio: torch.Tensor,
    input_now: torch.Tensor,
    input_at_full: torch.Tensor,
    *,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """:func:`gram_relational_forecast` with the Gram entries stacked ``(B, P)`` and the step's weights
    prepared once (:func:`gram_pair_weights`): ``||d(k)||^2`` is one product, the runtime's hot path.
    The Gram entries are already the whole sequence's under ``reduce`` (:func:`difference_gram`)."""
    return _scaled_change(differences, coefficients, gram @ pair_weights, ratio, input_now, input_at_full, reduce)


def _scaled_change(
    differences: list[torch.Tensor],
    coefficients: Sequence[Any],
    square: torch.Tensor,
    ratio: torch.Tensor,
    input_now: torch.Tensor,
    input_at_full: torch.Tensor,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """``D_0 + sum_{i>=1} (scale c_i) D_i`` with ``scale = s ||I(t-k) - I(t)|| / sqrt(square)``, per sample."""
    norm = torch.sqrt(torch.clamp(square, min=0.0))  # (B,)
    scale = ratio * per_sample_norm(input_now - input_at_full, reduce=reduce) / norm.clamp_min(_EPS)  # (B,)
    weights = [_per_sample(scale * coefficients[i], differences[0]) for i in range(1, len(differences))]  # (B, 1, ...)
    return weighted_sum(differences, [1.0, *weights])


def estimate_predictor_flops(kind: str, order: int, numel_out: int, numel_in: int, *, full: bool) -> int:
    """Elementwise FLOPs a predictor adds to one unit call (counted in the budget, not free).

    A full step refreshes the differences (a subtract and a divide per order and element) and,
    for ``relational``, two norms; a cached step evaluates the forecast (a multiply-add per term)
    and, for ``relational``, two norms and a rescale.
    """
    if kind == "reuse":
        return 0
    if full:
        flops = 2 * order * numel_out
        return flops + (3 * (numel_out + numel_in) if kind == "relational" else 0)
    if kind == "taylor":
        return 2 * order * numel_out
    return 2 * max(order - 1, 0) * numel_out + 3 * numel_in + 2 * numel_out + 2 * numel_out
