"""The aoti backend: AOTInductor packages (``.pt2``) of a bundle's step graphs, and a runner for them.

The same step modules as the ONNX graphs (graphs.py: same inputs, outputs and state, in the same
order, with the same dynamic batch axis) go through ``torch.export`` and
``torch._inductor.aoti_compile_and_package`` into one package per graph, compiled for the device
the model is on (gcc on CPU, CUDA kernels on a GPU). The bundle format is unchanged: the manifest
names ``full.pt2``, ``cached.pt2`` (``conditioning.pt2``, ``decoder.pt2``), every file is hashed and
checked on load.

:class:`AotiRunner` loads the packages with ``torch._inductor.aoti_load_package``: no model code,
no diffusers import to run steps. Inputs, the cache state and the output stay torch tensors on
the runner's device; nothing goes through numpy between steps. On CUDA a runner can replay each
graph as a CUDA graph (``cuda_graphs=True``; runtime/cudagraphs.py), captured once per batch size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from rfcache.devices import check_device
from rfcache.errors import RfcacheError
from rfcache.export.backends.base import Backend
from rfcache.export.bundle import EngineFolder
from rfcache.export.manifest import DECODER_INPUT, BundleError, first_line, resolve_shape
from rfcache.export.runner import BundleRunner, StepRunner
from rfcache.runtime.cudagraphs import GraphedCall

__all__ = ["AotiBackend", "AotiRunner", "save_package"]

logger = logging.getLogger(__name__)


class AotiBackend(Backend):
    """AOTInductor packages compiled for the model's device kind; they run only on that kind."""

    name: ClassVar[str] = "aoti"
    extension: ClassVar[str] = ".pt2"

    def save_graph(self, module: torch.nn.Module, args: tuple, dynamic_shapes: Any, path: Path, **names: Any) -> None:
        save_package(module, args, dynamic_shapes, path)  # a package's inputs are positional: no names

    def open_runner(self, bundle: EngineFolder, *, device: str = "cpu", threads: int | None = None) -> BundleRunner:
        return AotiRunner(bundle, device=device)


def save_package(module: torch.nn.Module, args: tuple, dynamic_shapes: Any, path: Path) -> None:
    """``torch.export`` ``module`` at ``args`` (``dynamic_shapes`` as for ONNX) and compile it into ``path``."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        except Exception as exc:  # torch raises many types from export and inductor
            raise RfcacheError(f"AOTInductor could not compile {path.name}: {first_line(exc)}") from exc


class AotiRunner(BundleRunner):
    """AOTInductor packages of a bundle on ``device``; same interface as the ONNX runner."""

    def __init__(self, bundle: EngineFolder, *, device: str = "cpu", cuda_graphs: bool = False) -> None:
        dev = check_device(device)
        built = bundle.manifest.get("device", "cpu")
        if dev.type != torch.device(built).type:
            raise BundleError(f"{bundle.path}: aoti packages were compiled for {built}; they cannot run on {device}")
        if cuda_graphs and dev.type != "cuda":
            raise RfcacheError("CUDA graphs need --device cuda")
        super().__init__(bundle, str(dev))
        self.torch_device = dev
        self.cuda_graphs = cuda_graphs
        self.packages: dict[str, Any] = {}
        for name, spec in bundle.graphs.items():
            try:
                self.packages[name] = torch._inductor.aoti_load_package(str(bundle.file(spec.file)))
            except Exception as exc:  # a corrupt or foreign package
                raise BundleError(f"{bundle.file(spec.file)}: AOTInductor cannot load it ({first_line(exc)})") from None

    @property
    def input_device(self) -> torch.device:
        return self.torch_device

    def decode_latents(self, latents: Any) -> Any:
        z = torch.as_tensor(latents).to(self.torch_device, self._dtype("decoder", DECODER_INPUT))
        with torch.no_grad():
            return self.packages["decoder"](z)[0].cpu().numpy()

    def _dtype(self, graph: str, name: str) -> torch.dtype:
        spec = next(t for t in self.bundle.graphs[graph].inputs if t.name == name)
        return getattr(torch, spec.dtype)


class _AotiSteps(StepRunner):
    """The state is the step graphs' outputs, kept as device tensors by name until a step rewrites them."""

    def __init__(self, runner: AotiRunner, *args: Any, **kwargs: Any) -> None:
        super().__init__(runner, *args, **kwargs)
        self.aoti = runner
        graphs = runner.bundle.graphs
        # each step graph's inputs in order: (name, dtype, the state tensor it reads or None)
        self._args = {
            g: [(t.name, getattr(torch, t.dtype), dict(self.graph_io[g][0]).get(t.name)) for t in graphs[g].inputs]
            for g in self.graph_io
        }
        if "conditioning" in graphs:
            self._condition_dtypes = {t.name: getattr(torch, t.dtype) for t in graphs["conditioning"].inputs}
            self._condition_outputs = [t.name for t in graphs["conditioning"].outputs]
        dev = runner.torch_device
        self._state = {
            s["name"]: torch.zeros(resolve_shape(s["shape"], self.sizes), dtype=getattr(torch, s["dtype"]), device=dev)
            for s in runner.bundle.manifest["state"]
        }
        self._pending: dict[str, torch.Tensor] = {}
        self._graphed: dict[str, GraphedCall] = {}

    def _tensors(self, graph: str, inputs: dict[str, Any], constant: str, value: Any) -> list[torch.Tensor]:
        """The graph's inputs in its order: the transformer's, the constant, ``c.*``, the state it reads."""
        dev = self.aoti.torch_device
        out = []
        for name, dtype, state in self._args[graph]:
            if state is not None:
                out.append(self._state[state])
            elif name == constant:
                out.append(torch.as_tensor(value, dtype=dtype, device=dev))
            elif name in inputs:
                # packages assume the dense strides they were compiled with (an expanded timestep has stride 0)
                out.append(torch.as_tensor(inputs[name]).to(dev, dtype).contiguous())
            else:
                raise BundleError(f"{self.aoti.bundle.path}: the step was not given {name!r}, an input of {graph}")
        return out

    def run_conditioning(self, inputs: dict[str, Any]) -> dict[str, Any]:
        # outputs stay device tensors; a step's rows are contiguous views of them
        dev = self.aoti.torch_device
        args = [torch.as_tensor(inputs[n]).to(dev, d).contiguous() for n, d in self._condition_dtypes.items()]
        with torch.no_grad():
            outs = self.aoti.packages["conditioning"](*args)
        return dict(zip(self._condition_outputs, outs, strict=True))

    def _call(self, graph: str, args: list[torch.Tensor]) -> list[torch.Tensor]:
        package = self.aoti.packages[graph]
        with torch.no_grad():
            if not self.aoti.cuda_graphs:
                return list(package(*args))
            if graph not in self._graphed:
                self._graphed[graph] = GraphedCall(lambda *a: tuple(package(*a)), args)
            return list(self._graphed[graph](*args))

    def run_graph(self, graph: str, inputs: dict[str, Any], constant: str, value: Any) -> torch.Tensor:
        outs = self._call(graph, self._tensors(graph, inputs, constant, value))
        if self.aoti.cuda_graphs:  # a replayed graph's outputs are reused by its next replay
            outs = [o.clone() for o in outs]
        self._pending = dict(zip(self.graph_io[graph][1], outs[1:], strict=True))
        return outs[0]

    def commit(self, graph: str) -> None:
        self._state.update(self._pending)
        self._pending = {}


AotiRunner.step_runner = _AotiSteps
