"""Model knowledge: one `BlockAdapter` per diffusers family, the registry, FLOP helpers, the toy model."""

from __future__ import annotations

from rfcache.models.base import (
    BlockAdapter,
    BlockSignature,
    CacheUnit,
    Granularity,
    StepShape,
    UnsupportedModelError,
)
from rfcache.models.dit import DiTAdapter
from rfcache.models.registry import get_adapter, get_transformer, register_adapter, supported_families

register_adapter(DiTAdapter())

__all__ = [
    "BlockAdapter",
    "BlockSignature",
    "CacheUnit",
    "DiTAdapter",
    "Granularity",
    "StepShape",
    "UnsupportedModelError",
    "get_adapter",
    "get_transformer",
    "register_adapter",
    "supported_families",
]
