"""What a backend is: how the writer saves a bundle's graphs in its format and how a runner opens them.

A backend is registered by name (``backends/__init__.py``); the writer, the runners' chooser and
the CLI look it up there and never compare backend names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from rfcache.export.bundle import EngineFolder
from rfcache.export.runner import BundleRunner

__all__ = ["Backend"]


class Backend:
    """One way to run a bundle's step graphs: its write side (:meth:`save_graph`, :meth:`finish`) and its
    run side (:meth:`open_runner`)."""

    name: ClassVar[str]
    takes_threads: ClassVar[bool] = False  # whether its runner takes a CPU thread count
    extension: ClassVar[str] = ".onnx"  # the graph files' suffix (``full.onnx``, ``full.pt2`` ...)
    half_graphs: ClassVar[bool] = True  # whether ``fp16`` exports half-precision graphs
    fixed_text: ClassVar[str | None] = None  # why the text axis is fixed at the exported length, if it is

    def require(self) -> None:
        """Refuse, before any work, where what the backend needs is missing (an optional extra)."""

    def check_export(self, *, fp16: bool, device: torch.device) -> None:
        """Refuse an export this backend cannot make from a model on ``device``; ``fp16``: the bundle is half
        precision (``fp16=True``, or a float16 model)."""

    def save_graph(
        self,
        module: torch.nn.Module,
        args: tuple,
        dynamic_shapes: Any,
        path: Path,
        *,
        input_names: list[str],
        output_names: list[str],
    ) -> None:
        """Write ``module`` at ``args`` (dynamic axes as for ``torch.export``) as the graph file ``path``."""
        raise NotImplementedError

    def finish(self, folder: Path, graphs: dict[str, Any], *, fp16: bool) -> dict[str, Any]:
        """Anything built from the written graphs (TensorRT's engines), as manifest fields to add."""
        return {}

    def open_runner(self, bundle: EngineFolder, *, device: str = "cpu", threads: int | None = None) -> BundleRunner:
        """The runner for ``bundle``'s graphs on ``device``."""
        raise NotImplementedError
