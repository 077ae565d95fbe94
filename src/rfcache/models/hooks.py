"""Named forward wrappers on a model's unit sub-modules: the only way rfcache touches a model.

A wrapper replaces ``module.forward`` on the instance (never the block or the class), so the
block's own code runs unchanged and removing the wrapper restores the original bound method.
Wrappers are registered by name so that two features cannot silently stack on one module.

Another library may wrap the same module's forward on the instance too (diffusers' hook registry:
context parallelism's split and gather hooks). Removing a wrapper puts back the forward it wrapped;
where another wrapper was set over it after, it stays in that chain and passes calls straight through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from rfcache.models.base import BlockAdapter, CacheUnit, Granularity

__all__ = ["UnitCall", "attach_module_hooks", "attach_unit_hooks", "detach_unit_hooks", "has_unit_hooks"]

_ATTR = "_rfcache_hook"
_WRAPPER = "_rfcache_wrapper"  # (our wrapper, the instance forward it replaced or None)

# (unit, original forward, args, kwargs) -> output
UnitCall = Callable[[CacheUnit, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


def attach_unit_hooks(
    model: torch.nn.Module,
    adapter: BlockAdapter,
    call: UnitCall,
    *,
    name: str,
    granularity: Granularity = "module",
) -> list[CacheUnit]:
    """Route every call of each unit of ``model`` through ``call``; returns the units hooked."""
    if has_unit_hooks(model):
        raise RuntimeError(f"{type(model).__name__} already has rfcache hooks ({_hook_names(model)}); disable first")
    units = adapter.units(model, granularity)
    for unit in units:
        _wrap(adapter.resolve(model, unit), unit, call, name)
    return units


def attach_module_hooks(
    model: torch.nn.Module,
    paths: tuple[str, ...],
    call: Callable[[str, Callable[..., Any], tuple, dict], Any],
    *,
    name: str,
) -> None:
    """Route every call of the sub-modules at ``paths`` through ``call(path, original, args, kwargs)``."""
    for path in paths:
        _wrap(model.get_submodule(path), path, call, name)


def _wrap(module: torch.nn.Module, key: Any, call: Callable[..., Any], name: str) -> None:
    original = module.forward
    live = [True]  # False once detached while another wrapper holds this one

    @functools.wraps(original)
    def forward(*args: Any, __key: Any = key, __orig: Callable = original, **kwargs: Any) -> Any:
        if not live[0]:
            return __orig(*args, **kwargs)
        return call(__key, __orig, args, kwargs)

    forward._rfcache_live = live  # type: ignore[attr-defined]
    setattr(module, _WRAPPER, (forward, vars(module).get("forward")))
    module.forward = forward
    setattr(module, _ATTR, name)


def detach_unit_hooks(model: torch.nn.Module, *, name: str) -> int:
    """Remove the wrappers registered under ``name``; returns how many were removed."""
    removed = 0
    for module in model.modules():
        if getattr(module, _ATTR, None) == name:
            wrapper, previous = getattr(module, _WRAPPER)
            if vars(module).get("forward") is wrapper:
                if previous is None:
                    del module.forward  # the instance attribute; the class's forward shows through again
                else:
                    module.forward = previous  # another library's wrapper, as it was
            else:  # wrapped over since: stay in that chain, calling straight through
                wrapper._rfcache_live[0] = False
            delattr(module, _ATTR)
            delattr(module, _WRAPPER)
            removed += 1
    return removed


def has_unit_hooks(model: torch.nn.Module) -> bool:
    return any(hasattr(m, _ATTR) for m in model.modules())


def _hook_names(model: torch.nn.Module) -> str:
    return ", ".join(sorted({getattr(m, _ATTR) for m in model.modules() if hasattr(m, _ATTR)}))
