"""What a profile is checked against: the model's identity and the sampling setup it sees."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from rfcache.models import BlockAdapter, Granularity
from rfcache.schedules import ModelIdentity

__all__ = ["config_hash", "input_resolution", "model_identity"]


def config_hash(config: Any) -> str:
    """A short, stable hash of a diffusers config (private ``_``-keys, such as the version, left out)."""
    items = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_identity(model: torch.nn.Module, adapter: BlockAdapter, granularity: Granularity = "module") -> ModelIdentity:
    """The identity a profile records and is checked against."""
    return ModelIdentity(
        family=adapter.family,
        class_name=type(model).__name__,
        config_hash=config_hash(model.config),
        num_units=len(adapter.units(model, granularity)),
        granularity=granularity,
    )


def input_resolution(hidden_states: torch.Tensor) -> tuple[int, ...]:
    """The transformer input's shape without the batch dimension: ``(C, H, W)``, ``(N, C)``, ..."""
    return tuple(int(d) for d in hidden_states.shape[1:])
