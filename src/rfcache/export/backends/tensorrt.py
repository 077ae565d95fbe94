"""The tensorrt backend: TensorRT engines built from a bundle's ONNX graphs, and a runner for them.

Optional: needs the ``tensorrt`` extra and a CUDA GPU, imported only inside these functions. The
engines are built from the very graphs ONNX Runtime runs (FP16 optional), with one optimisation
profile over the dynamic batch axis, and saved beside them as ``<graph>.plan``. The runner keeps
the cache state in two sets of CUDA tensors swapped after each full step, like the ONNX runner,
and everything else on the GPU too: inputs are torch tensors moved (or already) on the device,
the step's output stays there, and ``generate`` keeps latents and the scheduler's state there, so
no step goes through numpy or the host.

Unverified: never run, because TensorRT cannot be installed on the development or GPU machines;
where it is missing, using it fails with one line saying so. See the README.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rfcache.errors import RfcacheError
from rfcache.export.backends.onnx import OnnxBackend
from rfcache.export.bundle import EngineFolder
from rfcache.export.manifest import DECODER_INPUT, BundleError, first_line, resolve_shape
from rfcache.export.runner import BundleRunner, StepRunner

__all__ = ["TensorRTBackend", "TrtRunner", "build_engines", "require_tensorrt"]

logger = logging.getLogger(__name__)
MAX_BATCH = 64
MAX_STEPS = 1000  # the conditioning graph runs every step of a generation at once


class TensorRTBackend(OnnxBackend):
    """ONNX graphs (fp32; ``fp16`` builds FP16 engines from them) and the TensorRT engines built from them."""

    name: ClassVar[str] = "tensorrt"
    takes_threads: ClassVar[bool] = False
    half_graphs: ClassVar[bool] = False
    fixed_text: ClassVar[str | None] = "TensorRT engines are built for the exported text length"

    def require(self) -> None:
        require_tensorrt()

    def check_export(self, *, fp16: bool, device: Any) -> None:
        """Any device: the engines are built from the ONNX graphs, whatever device exported them."""

    def finish(self, folder: Path, graphs: dict[str, Any], *, fp16: bool) -> dict[str, Any]:
        return {"engines": build_engines(folder, graphs, fp16=fp16)}

    def open_runner(self, bundle: EngineFolder, *, device: str = "cpu", threads: int | None = None) -> BundleRunner:
        return TrtRunner(bundle, device=device)


def require_tensorrt() -> Any:
    """Import TensorRT or fail with one line naming the extra to install."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or the bindings present without their libraries
        raise RfcacheError(
            "the tensorrt backend needs TensorRT and a CUDA GPU: pip install 'rfcache[tensorrt]' "
            f"({type(exc).__name__}: {first_line(exc)}); note: this backend is unverified, TensorRT could not be "
            "installed where rfcache is tested"
        ) from None
    return tensorrt


def build_engines(folder: Path, graphs: dict[str, Any], *, fp16: bool = False) -> dict[str, Any]:
    """Build one serialized engine per ONNX graph in ``folder``; returns the manifest's ``engines``."""
    trt = require_tensorrt()
    log = trt.Logger(trt.Logger.WARNING)
    engines = {}
    for name, graph in graphs.items():
        builder = trt.Builder(log)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, log)
        if not parser.parse_from_file(str(folder / graph["file"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RfcacheError(f"TensorRT could not parse {graph['file']}: {errors}")
        config = builder.create_builder_config()
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            if shape[:2] == [-1, -1]:  # the conditioning graph's (steps, batch) timesteps
                rest = shape[2:]
                profile.set_shape(tensor.name, [1, 1, *rest], [50, 2, *rest], [MAX_STEPS, MAX_BATCH, *rest])
            elif shape and shape[0] == -1:
                rest = shape[1:]
                profile.set_shape(tensor.name, [1, *rest], [2, *rest], [MAX_BATCH, *rest])
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RfcacheError(f"TensorRT failed to build an engine for {graph['file']}")
        plan = folder / f"{name}.plan"
        plan.write_bytes(bytes(serialized))
        engines[name] = {"file": plan.name, "fp16": fp16, "max_batch": MAX_BATCH, "tensorrt": trt.__version__}
    return engines


class TrtRunner(BundleRunner):
    """TensorRT execution contexts for a bundle's engines; same interface as the ONNX runner."""

    def __init__(self, bundle: EngineFolder, *, device: str = "cuda") -> None:
        trt = require_tensorrt()
        import torch

        if device != "cuda" or not torch.cuda.is_available():
            raise RfcacheError("TensorRT bundles run on a CUDA GPU (--device cuda)")
        super().__init__(bundle, device)
        engines = bundle.manifest.get("engines")
        if not isinstance(engines, dict) or set(engines) != set(bundle.graphs):
            raise BundleError(f"{bundle.path}: manifest has no TensorRT engine for every graph")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {
            n: runtime.deserialize_cuda_engine(bundle.file(e["file"]).read_bytes()) for n, e in engines.items()
        }
        self.contexts = {n: e.create_execution_context() for n, e in self.engines.items()}
        self.torch = torch
        logger.warning("the TensorRT runner is unverified (never run where rfcache is tested)")

    @property
    def input_device(self) -> Any:
        return self.torch.device("cuda")

    def decode_latents(self, latents: Any) -> np.ndarray:
        image = self.bundle.graphs["decoder"].outputs[0]
        z = self.to_device(latents, self.bundle.graphs["decoder"].inputs[0].dtype)
        out = self.zeros(image.shape, image.dtype, {"batch": z.shape[0]})
        self.execute("decoder", {DECODER_INPUT: z, image.name: out})
        return out.cpu().numpy()  # once, at the end of a generation

    def to_device(self, value: Any, dtype: str) -> Any:
        """An input (numpy array or tensor) as a contiguous CUDA tensor of ``dtype``; a no-op when it is one."""
        torch = self.torch
        return torch.as_tensor(value).to("cuda", getattr(torch, dtype), non_blocking=True).contiguous()

    def zeros(self, shape: Sequence[int | str], dtype: str, sizes: dict[str, int]) -> Any:
        """A CUDA tensor of zeros of a manifest shape, its symbols resolved by ``sizes``."""
        return self.torch.zeros(resolve_shape(shape, sizes), dtype=getattr(self.torch, dtype), device="cuda")

    def execute(self, graph: str, tensors: dict[str, Any]) -> None:
        """Bind every input and output tensor by name and enqueue ``graph``'s engine on torch's stream."""
        context = self.contexts[graph]
        engine = self.engines[graph]
        for name, tensor in tensors.items():
            if engine.get_tensor_mode(name).name == "INPUT":
                context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        # torch's current stream: ordered with the torch ops that made the inputs, no host sync
        if not context.execute_async_v3(self.torch.cuda.current_stream().cuda_stream):
            raise RfcacheError(f"TensorRT failed to run the {graph} engine")


class _TrtSteps(StepRunner):
    """State in two sets of CUDA tensors; the tensors a step wrote are swapped in when it is committed."""

    def __init__(self, runner: TrtRunner, *args: Any, **kwargs: Any) -> None:
        super().__init__(runner, *args, **kwargs)
        self.trt = runner
        state = runner.bundle.manifest["state"]
        self._current = {s["name"]: runner.zeros(s["shape"], s["dtype"], self.sizes) for s in state}
        self._next = {s["name"]: runner.zeros(s["shape"], s["dtype"], self.sizes) for s in state}
        graphs = runner.bundle.graphs
        full = graphs[runner.bundle.full_graph]
        self._sample_name = full.outputs[0].name
        self._sample = runner.zeros(full.outputs[0].shape, full.outputs[0].dtype, self.sizes)
        self._dtypes = {t.name: t.dtype for g in self.graph_io for t in graphs[g].inputs}

    def run_conditioning(self, inputs: dict[str, Any]) -> dict[str, Any]:
        graph = self.trt.bundle.graphs["conditioning"]
        tensors = {t.name: self.trt.to_device(inputs[t.name], t.dtype) for t in graph.inputs}
        steps = tensors[graph.inputs[0].name].shape[0]
        outputs = {t.name: self.trt.zeros(t.shape, t.dtype, {**self.sizes, "steps": steps}) for t in graph.outputs}
        self.trt.execute("conditioning", {**tensors, **outputs})
        return outputs

    def run_graph(self, graph: str, inputs: dict[str, Any], constant: str, value: Any) -> Any:
        to_device = self.trt.to_device
        reads, writes = self.graph_io[graph]
        tensors = {n: to_device(a, self._dtypes[n]) for n, a in inputs.items()}
        tensors[constant] = to_device(value, self._dtypes[constant])  # a few floats: the step's only upload
        tensors[self._sample_name] = self._sample
        tensors.update({name: self._current[state] for name, state in reads})
        tensors.update({state: self._next[state] for state in writes})
        self.trt.execute(graph, tensors)
        return self._sample.clone()  # stays on the GPU; the buffer is reused by the next step

    def commit(self, graph: str) -> None:
        for state in self.graph_io[graph][1]:
            self._current[state], self._next[state] = self._next[state], self._current[state]


TrtRunner.step_runner = _TrtSteps
