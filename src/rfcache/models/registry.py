"""Finds the `BlockAdapter` for a model or pipeline by exact class name along the model's MRO."""

from __future__ import annotations

from typing import Any

import torch

from rfcache.models.base import BlockAdapter, UnsupportedModelError

__all__ = ["get_adapter", "get_transformer", "register_adapter", "supported_families"]

_ADAPTERS: dict[str, BlockAdapter] = {}


def register_adapter(adapter: BlockAdapter) -> BlockAdapter:
    """Register ``adapter`` for each class name in its ``model_classes``."""
    for name in adapter.model_classes:
        if name in _ADAPTERS and type(_ADAPTERS[name]) is not type(adapter):
            raise ValueError(f"{name} already has adapter {type(_ADAPTERS[name]).__name__}")
        _ADAPTERS[name] = adapter
    return adapter


def supported_families() -> dict[str, tuple[str, ...]]:
    """Family name -> the diffusers model classes it covers."""
    out: dict[str, tuple[str, ...]] = {}
    for adapter in _ADAPTERS.values():
        out[adapter.family] = adapter.model_classes
    return out


def get_transformer(model_or_pipe: Any) -> torch.nn.Module:
    """The denoising transformer of a pipeline, or the model itself."""
    if isinstance(model_or_pipe, torch.nn.Module):
        return model_or_pipe
    transformer = getattr(model_or_pipe, "transformer", None)
    if isinstance(transformer, torch.nn.Module):
        return transformer
    raise UnsupportedModelError(
        f"{type(model_or_pipe).__name__} is neither a transformer nor a pipeline with a .transformer; "
        f"supported families: {_families_text()}"
    )


def get_adapter(model_or_pipe: Any) -> BlockAdapter:
    """The adapter for a transformer (or a pipeline's transformer); a clear error if none fits."""
    model = get_transformer(model_or_pipe)
    for cls in type(model).__mro__:
        adapter = _ADAPTERS.get(cls.__name__)
        if adapter is not None:
            return adapter
    name = type(model).__name__
    raise UnsupportedModelError(f"no rfcache adapter for {name}; supported families: {_families_text()}")


def _families_text() -> str:
    return ", ".join(f"{fam} ({'/'.join(classes)})" for fam, classes in sorted(supported_families().items()))
