"""`CacheConfig`: a caching method and its parameters, validated once.

Methods (docs/method.md): ``none`` (hooks attached, every step computed), ``fora`` (reuse + interval),
``taylorseer`` (Taylor + interval), ``rfe`` (relational + interval), ``rcs`` (Taylor + dynamic),
``rfc`` (relational + dynamic: the paper's full method) and ``static`` (a profile's fixed mask with
the profile's predictor). Parameter names are shared by all methods where they apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rfcache.errors import RfcacheError
from rfcache.models import Granularity
from rfcache.schedules import ratio_position
from rfcache.schedules.masks import min_full_steps

__all__ = ["METHODS", "CacheConfig"]

# method -> (predictor, policy)
METHODS: dict[str, tuple[str, str]] = {
    "none": ("reuse", "always"),
    "fora": ("reuse", "interval"),
    "taylorseer": ("taylor", "interval"),
    "rfe": ("relational", "interval"),
    "rcs": ("taylor", "dynamic"),
    "rfc": ("relational", "dynamic"),
    "static": ("relational", "static"),
}


@dataclass(frozen=True)
class CacheConfig:
    """How a model is cached. ``predictor`` defaults to the method's; a profile may override it.

    Args:
        method: one of :data:`METHODS`.
        interval: N, full step every N steps after the warm-up (``interval`` policies).
        order: m, Taylor order of the predictor and of RCS's input forecast (0, 1 or 2).
        warmup: full steps at the start of every generation.
        tau: RCS threshold on the accumulated relative-L1 input-forecast error.
        max_cached: cap on consecutive cached steps (dynamic policy); None for no cap.
        granularity: ``"module"`` (attention and feed-forward separately) or ``"block"``.
        mask: per-step compute mask (True = full) for ``static``.
        unit_masks: with ``mask``, one compute mask per unit (by unit index, each as long as ``mask``):
            a unit is computed where its own row is True (or ``mask`` is); None: every unit follows
            ``mask``. A profile's per-unit rows (``Profile.unit_masks``).
        ratios: calibrated relation ratio ``s`` per unit index, replacing the run-time ratio.
        ratio_slopes: with ``ratios`` and a ``mask``, a step-linear calibrated ratio per unit:
            ``s(step) = ratios[u] + ratio_slopes[u] * ratio_position(step, len(mask))`` (a
            profile's ``step-linear`` ratio form); None for a constant ratio.
        check_finite: recompute a unit whose prediction holds NaN or inf (counted in the summary).
        share_conditioning: compute every step's timestep/condition embeddings (the adapter's
            conditioning modules) in one batched pass at a generation's first call and serve them per
            step; None (default) means on for every method but ``none``. Equal to the per-step
            computation within float rounding (runtime/conditioning.py).
        max_cache_bytes: refuse to cache when the cached tensors would exceed this many bytes
            (estimated at enable time for one sample at the model's configured size, then for each
            generation's real batch before it starts; memory.py says what is counted).
    """

    method: str = "rfc"
    interval: int = 4
    order: int = 2
    warmup: int = 2
    tau: float = 0.3
    max_cached: int | None = None
    granularity: Granularity = "module"
    mask: tuple[bool, ...] | None = None
    unit_masks: tuple[tuple[bool, ...], ...] | None = None
    ratios: tuple[float, ...] | None = None
    ratio_slopes: tuple[float, ...] | None = None
    predictor: str = field(default="")
    check_finite: bool = True
    max_cache_bytes: int | None = None
    share_conditioning: bool | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RfcacheError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if not self.predictor:
            object.__setattr__(self, "predictor", METHODS[self.method][0])
        if self.predictor not in ("reuse", "taylor", "relational"):
            raise RfcacheError(f"predictor must be reuse, taylor or relational; got {self.predictor!r}")
        if self.interval < 1:
            raise RfcacheError(f"interval must be >= 1; got {self.interval}")
        if self.order not in (0, 1, 2):
            raise RfcacheError(f"order must be 0, 1 or 2; got {self.order}")
        if self.predictor == "relational" and self.order < 1:
            raise RfcacheError("the relational predictor needs order >= 1 (it keeps TaylorSeer's direction)")
        if self.warmup < 0:
            raise RfcacheError(f"warmup must be >= 0; got {self.warmup}")
        if not (self.tau >= 0) or math.isnan(self.tau):
            raise RfcacheError(f"tau must be >= 0; got {self.tau}")
        if self.max_cached is not None and self.max_cached < 0:
            raise RfcacheError(f"max_cached must be >= 0 or None; got {self.max_cached}")
        if self.granularity not in ("module", "block"):
            raise RfcacheError(f"granularity must be 'module' or 'block'; got {self.granularity!r}")
        if self.max_cache_bytes is not None and not self.max_cache_bytes > 0:
            raise RfcacheError(f"max_cache_bytes must be a positive number of bytes; got {self.max_cache_bytes}")
        if self.policy == "static" and not self.mask:
            raise RfcacheError("method 'static' needs a mask (from a profile)")
        if self.unit_masks is not None and (
            not self.mask or not self.unit_masks or any(len(row) != len(self.mask) for row in self.unit_masks)
        ):
            raise RfcacheError("unit_masks needs a mask and one row per unit as long as the mask")
        if self.ratio_slopes is not None and (
            not self.mask or self.ratios is None or len(self.ratios) != len(self.ratio_slopes)
        ):
            raise RfcacheError("ratio_slopes needs a mask and one calibrated ratio per slope")

    def ratio_at(self, unit: int, step: int) -> float:
        """The calibrated ratio of ``unit`` at ``step`` (constant, or step-linear with ``ratio_slopes``)."""
        assert self.ratios is not None
        if self.ratio_slopes is None:
            return float(self.ratios[unit])
        assert self.mask is not None
        return float(self.ratios[unit] + self.ratio_slopes[unit] * ratio_position(step, len(self.mask)))

    @property
    def policy(self) -> str:
        return METHODS[self.method][1]

    @property
    def shares_conditioning(self) -> bool:
        """Whether conditioning is shared across steps (default: under every method but ``none``)."""
        return self.method != "none" if self.share_conditioning is None else self.share_conditioning

    @property
    def min_full_steps(self) -> int:
        """Full steps the predictor needs before it can predict."""
        return min_full_steps(self.predictor)
