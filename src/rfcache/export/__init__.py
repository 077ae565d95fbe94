"""Export: bake a profile's fixed pattern into an engine bundle, and run bundles.

The stages, each importing only the ones above it in this list:

- ``manifest``: the bundle format's constants, the manifest's specs and validation, the graphs'
  input and output names, shape resolution (no torch);
- ``bundle``: a bundle folder loaded and verified, written, hashed; single-engine and two-expert;
- ``capture``: the transformer's real arguments in a call of the pipeline, the sampler's record;
- ``graphs``: the full-step, cached-step and conditioning modules torch exports;
- ``runner``: what every backend's runner shares (a generation step by step, the sampler);
- ``backends``: one module per backend (``onnx``, ``aoti``, ``tensorrt``), each its write and run
  side, registered by name;
- ``writer``: :func:`export`, one transformer or both experts;
- ``into``: :func:`load_bundle` and ``bundle.into(pipe)``, the engine in place of the transformer.

Loading and running a bundle needs neither the model's Python code nor TensorRT (unless its backend is).
"""

from __future__ import annotations

from rfcache.export.backends import OrtRunner, backend_names, get_backend, open_runner, register_backend
from rfcache.export.into import Bundle, ExpertBundle, load_bundle
from rfcache.export.manifest import BundleError
from rfcache.export.runner import GenerationResult, StepRunner
from rfcache.export.writer import export

BACKENDS = backend_names()  # the built-in backends' names, the default first

__all__ = [
    "BACKENDS",
    "Bundle",
    "BundleError",
    "ExpertBundle",
    "GenerationResult",
    "OrtRunner",
    "StepRunner",
    "backend_names",
    "export",
    "get_backend",
    "load_bundle",
    "open_runner",
    "register_backend",
]
