"""Runtime: predictors, policies, the cache session and the enable/disable API."""

from __future__ import annotations

from rfcache.runtime.api import disable, enable, get_session, summary
from rfcache.runtime.config import METHODS, CacheConfig
from rfcache.runtime.session import CacheSession, CacheSummary

__all__ = ["METHODS", "CacheConfig", "CacheSession", "CacheSummary", "disable", "enable", "get_session", "summary"]
