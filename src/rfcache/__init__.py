"""rfcache: Relational Feature Caching for diffusion transformers.

Calibrate a per-model cache schedule, apply it to an unmodified diffusers pipeline, export it as a
fixed-pattern engine, and compare it with other caching methods at equal FLOPs.
"""

from __future__ import annotations

import logging

from rfcache._version import __version__
from rfcache.calibrate import calibrate
from rfcache.errors import RfcacheError
from rfcache.export import Bundle, BundleError, export, load_bundle
from rfcache.models import UnsupportedModelError, get_adapter, supported_families
from rfcache.pipelines import load_pipeline
from rfcache.runtime import CacheConfig, CacheSummary, disable, enable, summary
from rfcache.schedules import Profile, ProfileError, load_profile

__all__ = [
    "Bundle",
    "BundleError",
    "CacheConfig",
    "CacheSummary",
    "Profile",
    "ProfileError",
    "RfcacheError",
    "UnsupportedModelError",
    "__version__",
    "calibrate",
    "disable",
    "enable",
    "export",
    "get_adapter",
    "load_bundle",
    "load_pipeline",
    "load_profile",
    "summary",
    "supported_families",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
