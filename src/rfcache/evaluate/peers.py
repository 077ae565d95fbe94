"""Other libraries' caching methods, applied to the same transformer the benchmark caches.

**diffusers** (hooks in ``diffusers.hooks``, applied with their ``apply_*`` functions so they also
reach transformers without diffusers' ``CacheMixin``, such as DiT):

- ``diffusers-taylorseer-m1``/``-m2``: ``TaylorSeerCacheConfig`` on exactly the modules rfcache
  caches (the adapter's unit paths as ``cache_identifiers``: its default patterns match no DiT
  module, which leaves the output unchanged), factors kept in float32; ``cache_interval`` and
  ``disable_cache_before_step`` chosen for the target's NFC under diffusers' own step rule.
- ``diffusers-fbc``: ``FirstBlockCacheConfig``, ``threshold`` swept.
- ``diffusers-magcache``: ``MagCacheConfig``; one run in its calibration mode on the first
  benchmark input records the magnitude ratios, then ``threshold`` is swept with
  ``retention_ratio`` = 2 steps (rfcache's warm-up) and ``max_skip_steps`` = the interval
  schedule's gap at the target NFC.

The pipeline need not open diffusers' cache contexts: a pre-hook on the transformer opens one
where the pipeline did not, and hook state is reset before every generation.

**cache-dit** (optional ``bench`` extra): ``cache-dit-dbcache`` (``DBCacheConfig``: first block
always computed, no tail blocks, 2 warm-up steps, ``residual_diff_threshold`` swept, no cap on
consecutive cached steps: with the first block always computed a cap would keep it above the
lower fractions; ``enable_separate_cfg`` where the full-compute run calls the transformer more than
once per step, as a true-CFG Flux call or Wan does, so cond and uncond keep their own caches) and
``cache-dit-dbcache-taylorseer`` (the same with its ``TaylorSeerCalibratorConfig``, order 1).

Not included: diffusers' ``PyramidAttentionBroadcastConfig`` (caches attention only, so it cannot
reach the fractions compared here), ``FasterCacheConfig`` (needs a CFG-aware pipeline loop) and
``SeaCacheConfig`` (video latents).
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
from collections.abc import Iterable
from typing import Any

import torch

from rfcache.evaluate.methods import Applied, BenchContext, MethodSpec, Target
from rfcache.evaluate.smoothcache import apply_smoothcache, check_smoothcache
from rfcache.models import get_adapter, get_transformer
from rfcache.schedules.masks import interval_for_nfc

__all__ = ["PEERS", "peer_method"]

logger = logging.getLogger(__name__)

_CACHE_DIT_HINT = (
    "package cache-dit not installed; install the bench extra with the CPU torch pinned: "
    "pip install 'rfcache[bench]' torch==2.13.0 (pin the torch you have)"
)


def _check_diffusers(name: str) -> Any:
    def check() -> str | None:
        try:
            import diffusers.hooks as hooks
        except ImportError:  # pragma: no cover - diffusers is a dependency
            return "package diffusers not installed"
        if not hasattr(hooks, name):
            return f"this diffusers ({_version('diffusers')}) has no {name}; it needs diffusers >= 0.36"
        return None

    return check


def _check_cache_dit() -> str | None:
    try:
        import cache_dit  # noqa: F401
    except ImportError:
        return _CACHE_DIT_HINT
    return None


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


# -- diffusers ------------------------------------------------------------------------------------


def _state_managers(model: torch.nn.Module) -> list[Any]:
    from diffusers.hooks.hooks import HookRegistry, StateManager

    registry = HookRegistry.check_if_exists_or_initialize(model)
    managers = []
    for child in (registry, *registry._get_child_registries()):
        for hook in child.hooks.values():
            managers.extend(v for v in vars(hook).values() if isinstance(v, StateManager))
    return managers


def _attach_diffusers(pipe: Any, apply_hooks: Any, hook_names: tuple[str, ...], params: dict[str, Any]) -> Applied:
    """Apply diffusers hooks to the transformer; open a cache context where the pipeline opens none."""
    from diffusers.hooks.hooks import CacheContext, HookRegistry

    model = get_transformer(pipe)
    apply_hooks(model)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.invalidate_child_registries_cache()
    managers = _state_managers(model)

    def open_context(module: torch.nn.Module, args: tuple) -> None:
        for manager in managers:
            if manager._context is None:
                manager.set_context(CacheContext("default"))

    handle = model.register_forward_pre_hook(open_context)

    def remove() -> None:
        handle.remove()
        for name in hook_names:
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()

    return Applied(
        params=params,
        remove=remove,
        state_roots=lambda: [m._state_cache for m in managers],
        reset=lambda: registry.reset_stateful_hooks(recurse=True),
    )


def _diffusers_taylorseer_nfc(steps: int, interval: int, before: int) -> int:
    """Full steps under diffusers' rule: ``step < before`` or ``(step - before - 1) % interval == 0``."""
    return sum(s < before or (s - before - 1) % interval == 0 for s in range(steps))


def _diffusers_taylorseer(order: int) -> Any:
    def apply(pipe: Any, target: Target, knob: float | None, ctx: BenchContext) -> Applied:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache
        from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

        model = get_transformer(pipe)
        paths = [unit.path for unit in get_adapter(model).units(model, "module")]
        options = [
            (abs(_diffusers_taylorseer_nfc(ctx.steps, n, b) - target.nfc), b != 3, n, b)
            for b in (1, 2, 3, 4)
            for n in range(1, ctx.steps + 1)
        ]
        *_, interval, before = min(options)
        config = TaylorSeerCacheConfig(
            cache_interval=interval,
            disable_cache_before_step=before,
            max_order=order,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[re.escape(p) for p in paths],
        )
        params = {"cache_interval": interval, "disable_cache_before_step": before, "max_order": order}
        return _attach_diffusers(pipe, lambda m: apply_taylorseer_cache(m, config), (_TAYLORSEER_CACHE_HOOK,), params)

    return apply


def _diffusers_fbc(pipe: Any, target: Target, threshold: float | None, ctx: BenchContext) -> Applied:
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK

    config = FirstBlockCacheConfig(threshold=float(threshold or 0.0))
    return _attach_diffusers(
        pipe,
        lambda m: apply_first_block_cache(m, config),
        (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK),
        {"threshold": config.threshold},
    )


def _max_gap(steps: int, nfc: int) -> int:
    interval, _, _ = interval_for_nfc(steps, nfc)
    return max(interval - 1, 1)


def _magcache_ratios(pipe: Any, ctx: BenchContext) -> list[float]:
    """MagCache's own calibration mode on one full-compute generation; its logged ratios, parsed."""
    if "magcache_ratios" in ctx.memo:
        return ctx.memo["magcache_ratios"]
    from diffusers.hooks import MagCacheConfig, apply_mag_cache
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

    if ctx.calibrate is None:
        raise RuntimeError("MagCache needs a calibration run")
    config = MagCacheConfig(calibrate=True, num_inference_steps=ctx.steps)
    applied = _attach_diffusers(
        pipe, lambda m: apply_mag_cache(m, config), (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK), {}
    )
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    mag_logger = logging.getLogger("diffusers.hooks.mag_cache")
    level, propagate = mag_logger.level, mag_logger.propagate
    mag_logger.addHandler(handler)
    mag_logger.setLevel(logging.INFO)
    mag_logger.propagate = False
    try:
        applied.reset()
        with contextlib.redirect_stdout(io.StringIO()):  # it also prints the ratios for pasting
            ctx.calibrate()
    finally:
        mag_logger.removeHandler(handler)
        mag_logger.setLevel(level)
        mag_logger.propagate = propagate
        applied.remove()
    found = [r.split(":", 1)[1] for r in records if r.startswith("MagCache Calibration Results:")]
    if not found:
        raise RuntimeError("MagCache's calibration mode logged no ratios")
    ctx.memo["magcache_ratios"] = [float(x) for x in ast.literal_eval(found[-1].strip())]
    return ctx.memo["magcache_ratios"]


def _diffusers_magcache(pipe: Any, target: Target, threshold: float | None, ctx: BenchContext) -> Applied:
    from diffusers.hooks import MagCacheConfig, apply_mag_cache
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

    ratios = _magcache_ratios(pipe, ctx)
    config = MagCacheConfig(
        threshold=float(threshold or 0.0),
        max_skip_steps=_max_gap(ctx.steps, target.nfc),
        retention_ratio=2 / ctx.steps,
        num_inference_steps=ctx.steps,
        mag_ratios=ratios,
    )
    params = {"threshold": config.threshold, "max_skip_steps": config.max_skip_steps, "retention_steps": 2}
    return _attach_diffusers(
        pipe, lambda m: apply_mag_cache(m, config), (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK), params
    )


# -- cache-dit ------------------------------------------------------------------------------------


def _cache_dit_adapter(pipe: Any) -> Any:
    """cache-dit's registered adapter for the pipeline, else for its transformer's class (a custom DiT pipeline)."""
    from cache_dit.caching.block_adapters.block_registers import BlockAdapterRegister

    adapter = BlockAdapterRegister.get_adapter(pipe)
    if adapter is not None:
        return adapter
    name = type(get_transformer(pipe)).__name__
    for prefix, factory in BlockAdapterRegister._adapters.items():  # keyed by class-name prefix
        if name.startswith(prefix):
            return factory(pipe)
    raise RuntimeError(f"cache-dit has no block adapter for {type(pipe).__name__} / {name}")


def _quiet_cache_dit() -> None:
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("cache_dit"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _cache_dit(taylorseer: bool) -> Any:
    def apply(pipe: Any, target: Target, threshold: float | None, ctx: BenchContext) -> Applied:
        import cache_dit

        _quiet_cache_dit()
        # cache-dit's Flux adapter assumes one call per step; under true CFG the pipeline calls the
        # transformer for cond then uncond, which cache-dit must keep apart (its cfg_compute_first=False order)
        separate = ctx.calls_per_step() > 1
        config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=1,
            Bn_compute_blocks=0,
            residual_diff_threshold=float(threshold or 0.0),
            max_warmup_steps=2,
            num_inference_steps=ctx.steps,
            enable_separate_cfg=separate,
        )
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if taylorseer else None
        model = get_transformer(pipe)
        forwards = {m: vars(m).get("forward") for m in model.modules()}
        children = {m: dict(m._modules) for m in model.modules()}
        adapter = _cache_dit_adapter(pipe)
        cache_dit.enable_cache(adapter, cache_config=config, calibrator_config=calibrator)
        _quiet_cache_dit()
        params = {"Fn": 1, "Bn": 0, "residual_diff_threshold": config.residual_diff_threshold, "separate_cfg": separate}
        if taylorseer:
            params["taylorseer_order"] = 1

        def remove() -> None:
            cache_dit.disable_cache(pipe)
            _undo_cache_dit(model, forwards, children)

        return Applied(
            params=params,
            remove=remove,
            state_roots=lambda: _cache_dit_state(pipe, model),
        )

    return apply


def _undo_cache_dit(
    model: torch.nn.Module, forwards: dict[torch.nn.Module, Any], children: dict[torch.nn.Module, dict[str, Any]]
) -> None:
    """Undo what ``disable_cache`` leaves of cache-dit: its patch functors' ``forward`` methods (the
    transformer's, Flux's single blocks') and its re-registered block lists, which come back in
    another order (diffusers' First Block Cache and MagCache then take Flux's last single block for
    the first block). The next method would run on either."""
    for module, before in children.items():
        if set(module._modules) == set(before):
            module._modules = dict(before)
    for module in model.modules():
        before = forwards.get(module)
        if vars(module).get("forward") is not before:
            if before is None:
                del module.forward
            else:
                module.forward = before
    vars(model).pop("_is_patched", None)


def _cache_dit_state(pipe: Any, model: torch.nn.Module) -> Iterable[Any]:
    """cache-dit keeps its buffers in context-manager objects attached to the pipeline and transformer."""
    return [
        v for obj in (pipe, model) for k, v in vars(obj).items() if "context" in k.lower() and "manager" in k.lower()
    ]


PEERS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec(
            "diffusers-taylorseer-m1",
            "diffusers",
            _diffusers_taylorseer(1),
            check=_check_diffusers("TaylorSeerCacheConfig"),
            description="diffusers TaylorSeerCacheConfig, max_order 1",
        ),
        MethodSpec(
            "diffusers-taylorseer-m2",
            "diffusers",
            _diffusers_taylorseer(2),
            check=_check_diffusers("TaylorSeerCacheConfig"),
            description="diffusers TaylorSeerCacheConfig, max_order 2",
        ),
        MethodSpec(
            "diffusers-fbc",
            "diffusers",
            _diffusers_fbc,
            knob="threshold",
            check=_check_diffusers("FirstBlockCacheConfig"),
            description="diffusers FirstBlockCacheConfig",
        ),
        MethodSpec(
            "diffusers-magcache",
            "diffusers",
            _diffusers_magcache,
            knob="threshold",
            check=_check_diffusers("MagCacheConfig"),
            description="diffusers MagCacheConfig, ratios from its calibration mode",
        ),
        MethodSpec(
            "cache-dit-dbcache",
            "cache-dit",
            _cache_dit(False),
            knob="residual_diff_threshold",
            check=_check_cache_dit,
            description="cache-dit DBCacheConfig F1B0",
        ),
        MethodSpec(
            "cache-dit-dbcache-taylorseer",
            "cache-dit",
            _cache_dit(True),
            knob="residual_diff_threshold",
            check=_check_cache_dit,
            description="cache-dit DBCacheConfig F1B0 + TaylorSeerCalibratorConfig order 1",
        ),
        MethodSpec(
            "smoothcache",
            "dit-smoothcache",
            apply_smoothcache,
            knob="alpha",
            knob_range=(1e-3, 5.0),
            check=check_smoothcache,
            description="SmoothCache: per-layer-type static reuse schedules from its calibration, alpha swept",
        ),
    ]
}


def peer_method(name: str) -> MethodSpec:
    return PEERS[name]
