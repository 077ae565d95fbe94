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
from rfcache.models.flux import FluxAdapter
from rfcache.models.pixart import PixArtAdapter
from rfcache.models.registry import get_adapter, get_transformer, register_adapter, supported_families
from rfcache.models.sd3 import SD3Adapter
from rfcache.models.wan import WanAdapter

register_adapter(DiTAdapter())
register_adapter(PixArtAdapter())
register_adapter(SD3Adapter())
register_adapter(FluxAdapter())
register_adapter(WanAdapter())

__all__ = [
    "BlockAdapter",
    "BlockSignature",
    "CacheUnit",
    "DiTAdapter",
    "FluxAdapter",
    "Granularity",
    "PixArtAdapter",
    "SD3Adapter",
    "StepShape",
    "UnsupportedModelError",
    "WanAdapter",
    "get_adapter",
    "get_transformer",
    "register_adapter",
    "supported_families",
]
