"""Export: bake a profile's fixed pattern into an engine bundle, and run bundles.

Export (torch -> ONNX, `api`), the bundle format (`bundle`), the ONNX Runtime runner (`runner`)
and the TensorRT engines (`tensorrt`, optional) are separate stages; loading and running a bundle
needs neither the model's Python code nor TensorRT.
"""

from __future__ import annotations

from pathlib import Path

from rfcache.export.api import BACKENDS, export
from rfcache.export.bundle import Bundle, BundleError
from rfcache.export.runner import GenerationResult, OrtRunner, StepRunner

__all__ = ["BACKENDS", "Bundle", "BundleError", "GenerationResult", "OrtRunner", "StepRunner", "export", "load_bundle"]


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle folder, verifying every file's hash; refuses a missing, altered or extra file."""
    return Bundle.load(path)
