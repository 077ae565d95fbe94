"""Backends by name: each module here holds one backend's write side and run side.

- ``onnx`` (onnx.py): ONNX graphs run by ONNX Runtime, the default;
- ``aoti`` (aoti.py): AOTInductor packages compiled for the model's device;
- ``tensorrt`` (tensorrt.py): TensorRT engines built from the ONNX graphs (the ``tensorrt`` extra,
  imported only when used).

The writer and :func:`open_runner` look a backend up here (:func:`get_backend`); a new backend is
a :class:`~rfcache.export.backends.base.Backend` subclass given to :func:`register_backend`.
"""

from __future__ import annotations

from rfcache.errors import RfcacheError
from rfcache.export.backends.aoti import AotiBackend, AotiRunner
from rfcache.export.backends.base import Backend
from rfcache.export.backends.onnx import OnnxBackend, OrtRunner
from rfcache.export.backends.tensorrt import TensorRTBackend
from rfcache.export.bundle import EngineFolder
from rfcache.export.manifest import BundleError
from rfcache.export.runner import BundleRunner

__all__ = [
    "AotiRunner",
    "Backend",
    "OrtRunner",
    "backend_names",
    "get_backend",
    "open_runner",
    "register_backend",
]

_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Make ``backend`` available by its name to ``export(backend=...)`` and to the bundles it writes."""
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The backend called ``name``; an unknown name is one error listing the known ones."""
    backend = _REGISTRY.get(name)
    if backend is None:
        raise RfcacheError(f"backend {name!r} is not one of {', '.join(_REGISTRY)}")
    return backend


def backend_names() -> tuple[str, ...]:
    """The registered backends' names, the default (``onnx``) first."""
    return tuple(_REGISTRY)


def open_runner(bundle: EngineFolder, *, device: str = "cpu", threads: int | None = None) -> BundleRunner:
    """The runner for ``bundle``'s backend, from its manifest: ONNX Runtime, AOTInductor packages,
    or TensorRT engines (``tensorrt`` extra)."""
    backend = _REGISTRY.get(bundle.backend)
    if backend is None:
        raise BundleError(f"{bundle.path}: backend {bundle.backend!r} is not one of {', '.join(_REGISTRY)}")
    if threads and not backend.takes_threads:  # refused, not ignored
        raise BundleError(f"{bundle.path}: {backend.name} bundles take no thread count (got {threads}; onnx ones do)")
    return backend.open_runner(bundle, device=device, threads=threads)


for _backend in (OnnxBackend(), AotiBackend(), TensorRTBackend()):
    register_backend(_backend)
