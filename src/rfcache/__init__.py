"""rfcache: Relational Feature Caching for diffusion transformers.

Calibrate a per-model cache schedule, apply it to an unmodified diffusers pipeline, export it as a
fixed-pattern engine, and compare it with other caching methods at equal FLOPs.
"""

from __future__ import annotations

import logging

from rfcache.errors import RfcacheError
from rfcache.models import UnsupportedModelError, get_adapter, supported_families
from rfcache.pipelines import load_pipeline
from rfcache.runtime import CacheConfig, CacheSummary, disable, enable, summary

__version__ = "0.1.0.dev0"

__all__ = [
    "CacheConfig",
    "CacheSummary",
    "RfcacheError",
    "UnsupportedModelError",
    "__version__",
    "disable",
    "enable",
    "get_adapter",
    "load_pipeline",
    "summary",
    "supported_families",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
