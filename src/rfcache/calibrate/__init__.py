"""Calibration: record full-compute trajectories, fit relation ratios, search schedules, freeze a profile."""

from __future__ import annotations

from rfcache.calibrate.api import CalibrationResult, calibrate, default_prompts, load_shards, record_shard
from rfcache.calibrate.search import Candidate, StudyMismatchError, search_schedules
from rfcache.calibrate.trace import RatioFit, RatioStepFit, Trace, fit_ratio_steps, fit_ratios, record_trace

__all__ = [
    "CalibrationResult",
    "Candidate",
    "RatioFit",
    "RatioStepFit",
    "StudyMismatchError",
    "Trace",
    "calibrate",
    "default_prompts",
    "fit_ratio_steps",
    "fit_ratios",
    "load_shards",
    "record_shard",
    "record_trace",
    "search_schedules",
]
