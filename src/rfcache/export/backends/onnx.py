"""The ONNX backend: step graphs exported by torch.onnx's dynamo exporter, run by ONNX Runtime.

Write side: each graph goes through ``torch.export`` (ordinary guards), then the dynamo exporter at
opset 18 (opset 17 from this exporter wrote a Split node ONNX Runtime refuses), weights as external
data; no-op ``Squeeze`` nodes the exporter writes are turned into ``Identity``.

Run side: :class:`OrtRunner` holds one ONNX Runtime session per graph; its step runner keeps the
state in two preallocated sets of OrtValues on the device, bound with I/O binding and swapped after
each full step, so between steps they never leave the device; only the transformer's inputs and its
output cross.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rfcache.errors import RfcacheError
from rfcache.export.backends.base import Backend
from rfcache.export.bundle import EngineFolder
from rfcache.export.manifest import DECODER_INPUT, BundleError, first_line, resolve_shape
from rfcache.export.runner import BundleRunner, StepRunner, host_array

__all__ = ["OPSET", "OnnxBackend", "OrtRunner", "save_onnx"]

logger = logging.getLogger(__name__)
OPSET = 18
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxBackend(Backend):
    """ONNX graphs run by ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)."""

    name: ClassVar[str] = "onnx"
    takes_threads: ClassVar[bool] = True  # ONNX Runtime's intra-op threads

    def check_export(self, *, fp16: bool, device: torch.device) -> None:
        if fp16 and device.type != "cuda":
            raise RfcacheError(
                f"an fp16 ONNX bundle runs on cuda only (rfc-run would refuse it on {device.type}); "
                "export on cuda, in float32, or with the tensorrt backend"
            )

    def save_graph(self, module: torch.nn.Module, args: tuple, dynamic_shapes: Any, path: Path, **names: Any) -> None:
        save_onnx(module, args, dynamic_shapes, path, **names)

    def open_runner(self, bundle: EngineFolder, *, device: str = "cpu", threads: int | None = None) -> BundleRunner:
        return OrtRunner(bundle, device=device, threads=threads)


def save_onnx(
    module: torch.nn.Module,
    args: tuple,
    dynamic_shapes: Any,
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
) -> None:
    """Write ``module`` at ``args`` as the ONNX graph ``path`` (weights beside it, ``path.data``)."""
    program = _onnx_export(
        module, args, dynamic_shapes=dynamic_shapes, input_names=input_names, output_names=output_names
    )
    program.save(str(path), external_data=True)
    _drop_noop_squeezes(path)


def _onnx_export(module: torch.nn.Module, args: tuple, **kwargs: Any) -> Any:
    """torch.onnx's dynamo exporter at our opset, its progress chatter sent to the debug log."""
    import contextlib
    import io
    import warnings

    chatter = io.StringIO()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision missing"
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # torch.export first, with ordinary guards: the ONNX exporter's own capture reasons
            # "size-obliviously" and then cannot see that an attention mask repeated per head
            # (PixArt's cross-attention) still has the batch's size
            try:
                module = torch.export.export(module, args, dynamic_shapes=kwargs["dynamic_shapes"], strict=False)
                args, kwargs = (), {k: v for k, v in kwargs.items() if k != "dynamic_shapes"}
            except Exception as exc:  # the ONNX exporter's own capture strategies get their turn
                logger.debug("torch.export failed (%s); the ONNX exporter captures the graph itself", exc)
            program = torch.onnx.export(
                module, args, opset_version=OPSET, dynamo=True, external_data=True, verbose=False, **kwargs
            )
    finally:
        registration.setLevel(level)
    logger.debug("%s", chatter.getvalue())
    return program


def _drop_noop_squeezes(path: Path) -> None:
    """Turn ``Squeeze`` nodes on an axis whose size is known and not 1 into ``Identity``.

    ``aten.squeeze(x, d)`` is a no-op when ``x.shape[d] != 1`` (PixArt calls ``squeeze(1)`` on its
    token axis), but the exporter writes an ONNX ``Squeeze``, which ONNX Runtime then refuses.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if not i.external_data}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    changed = False
    for node in model.graph.node:
        if node.op_type != "Squeeze" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape = shapes.get(node.input[0])
        axes = [int(a) for a in constants[node.input[1]].reshape(-1)]
        if shape and all(shape[a] is not None and shape[a] != 1 for a in axes):
            node.op_type = "Identity"
            del node.input[1:]
            changed = True
    if changed:
        onnx.save(model, str(path))


class OrtRunner(BundleRunner):
    """ONNX Runtime sessions for a bundle's graphs on ``device`` (``"cpu"`` or ``"cuda"``)."""

    def __init__(self, bundle: EngineFolder, *, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(bundle, device)
        if bundle.precision == "fp16" and device != "cuda":
            raise RfcacheError(f"{bundle.path}: an fp16 bundle runs on cuda only")
        provider = _PROVIDERS.get(device)
        if provider is None:
            raise RfcacheError(f"device {device!r} is not one of {', '.join(_PROVIDERS)}")
        if provider not in ort.get_available_providers():
            raise RfcacheError(f"ONNX Runtime here has no {provider}; install onnxruntime-gpu for --device cuda")
        self.ort = ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [provider] if device == "cpu" else [provider, "CPUExecutionProvider"]
        self.sessions: dict[str, Any] = {}
        for name, spec in bundle.graphs.items():
            try:
                session = ort.InferenceSession(str(bundle.file(spec.file)), options, providers=providers)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BundleError(
                    f"{bundle.file(spec.file)}: ONNX Runtime cannot load it ({first_line(exc)})"
                ) from None
            found = [i.name for i in session.get_inputs()]
            if found != [t.name for t in spec.inputs]:
                raise BundleError(f"{bundle.file(spec.file)}: graph inputs {found} differ from the manifest's")
            self.sessions[name] = session

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        return self.sessions["decoder"].run(None, {DECODER_INPUT: latents})[0]


class _OrtSteps(StepRunner):
    """State in two preallocated sets of OrtValues on the device; the tensors a step wrote are swapped in."""

    def __init__(self, runner: OrtRunner, *args: Any, **kwargs: Any) -> None:
        super().__init__(runner, *args, **kwargs)
        self.sessions = runner.sessions
        device = runner.device
        graphs = runner.bundle.graphs
        self._dtypes = {t.name: np.dtype(t.dtype) for g in self.graph_io for t in graphs[g].inputs}
        sample = graphs[runner.bundle.full_graph].outputs[0]

        def alloc(shape: Sequence[int | str], dtype: str) -> Any:
            dims = resolve_shape(shape, self.sizes)
            return runner.ort.OrtValue.ortvalue_from_numpy(np.zeros(dims, dtype=np.dtype(dtype)), device, 0)

        state = runner.bundle.manifest["state"]
        self._current = {s["name"]: alloc(s["shape"], s["dtype"]) for s in state}
        self._next = {s["name"]: alloc(s["shape"], s["dtype"]) for s in state}
        self._sample_name = sample.name
        self._sample = alloc(sample.shape, sample.dtype)
        if "conditioning" in graphs:
            self._dtypes.update({t.name: np.dtype(t.dtype) for t in graphs["conditioning"].inputs})
            self._condition_outputs = [t.name for t in graphs["conditioning"].outputs]

    def run_conditioning(self, inputs: dict[str, Any]) -> dict[str, Any]:
        # on the host: the step graphs bind each step's rows (a view) as inputs
        feeds = {n: np.ascontiguousarray(host_array(a), dtype=self._dtypes[n]) for n, a in inputs.items()}
        return dict(zip(self._condition_outputs, self.sessions["conditioning"].run(None, feeds), strict=True))

    def run_graph(self, graph: str, inputs: dict[str, Any], constant: str, value: Any) -> np.ndarray:
        reads, writes = self.graph_io[graph]
        binding = self.sessions[graph].io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array, dtype=self._dtypes[name]))
        binding.bind_cpu_input(constant, np.asarray(value, dtype=self._dtypes[constant]))
        binding.bind_ortvalue_output(self._sample_name, self._sample)
        for name, state in reads:
            binding.bind_ortvalue_input(name, self._current[state])
        for state in writes:  # into the spare set: the current one stays until the step is committed
            binding.bind_ortvalue_output(state, self._next[state])
        self.sessions[graph].run_with_iobinding(binding)
        return self._sample.numpy()

    def commit(self, graph: str) -> None:
        for state in self.graph_io[graph][1]:
            self._current[state], self._next[state] = self._next[state], self._current[state]


OrtRunner.step_runner = _OrtSteps
