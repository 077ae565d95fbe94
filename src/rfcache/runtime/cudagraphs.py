"""CUDA graphs for a static schedule: capture a step function once per input shape, then replay it.

A static schedule has exactly two step functions (full step, cached step) whose shapes do not
change within a generation, so each is captured once per batch size and replayed at every step of
that kind. :class:`GraphedCall` holds the captured graph with its static input and output buffers:
a call copies the new inputs into the buffers (device to device), replays, and returns the static
outputs, which the next replay overwrites (callers that keep them clone them). The aoti runner uses
it per graph; the PyTorch runtime gets the same effect from ``torch.compile(mode="reduce-overhead")``
(compile.py), whose CUDA-graph trees capture each compiled variant.

CUDA only, and not verified on the development machines (no GPU there); tests are marked ``gpu``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rfcache.errors import RfcacheError

__all__ = ["GraphedCall"]

_WARMUP_CALLS = 3  # runs on a side stream before capture, as torch.cuda.graphs recommends


class GraphedCall:
    """``fn(*args) -> tuple of tensors`` captured as CUDA graphs, one per distinct input shape."""

    def __init__(self, fn: Callable[..., Sequence[torch.Tensor]], example: Sequence[torch.Tensor]) -> None:
        if not all(t.is_cuda for t in example):
            raise RfcacheError("CUDA graphs need every input on a CUDA device")
        self.fn = fn
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], tuple[torch.Tensor, ...]]] = {}

    def _capture(self, args: Sequence[torch.Tensor]) -> tuple:
        static_in = [a.clone() for a in args]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(_WARMUP_CALLS):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = tuple(self.fn(*static_in))
        return graph, static_in, static_out

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        graph, static_in, static_out = self._graphs[key]
        for buffer, value in zip(static_in, args, strict=True):
            buffer.copy_(value, non_blocking=True)
        graph.replay()
        return static_out

    @property
    def num_graphs(self) -> int:
        """Captured graphs so far (one per input shape)."""
        return len(self._graphs)
