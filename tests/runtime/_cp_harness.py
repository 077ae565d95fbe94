"""Test harness for diffusers' context parallelism on CPU: two gloo processes on loopback.

diffusers 0.42.1's context parallelism is written for accelerators; on CPU-only torch it needs three
workarounds, which live here and nowhere in the package:

1. ``torch.accelerator.device_count()`` is 0 on CPU torch, and ``ModelMixin._resolve_parallel_config``
   takes ``rank % device_count()``: it is made 1 around ``enable_parallelism`` (:func:`_one_device`).
2. Ring attention merges the partial attentions of each key/value chunk with their log-sum-exp,
   which no built-in attention backend returns on CPU: the native backend's forward op is wrapped
   so that it computes attention and its log-sum-exp explicitly (:func:`_native_attention_with_lse`).
3. gloo's ``all_gather`` rejects uneven shards, which the ``ulysses_anything`` / ``ring_anything``
   modes produce: those modes are left out; plain Ulysses and Ring need the sequence length
   divisible by the world size (Ulysses: the head count too), which the tiny configs are.

:func:`start_ranks` starts ``fn(rank, world, *args)`` in ``world`` spawned processes (the caller
can work meanwhile) and ``.results()`` returns what each returned; a process that does not finish
within ``timeout`` seconds is killed and the call fails, so a deadlock fails the test instead of
hanging it. :func:`run_ranks` does both.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world: int, port: int) -> None:
    """Join a gloo process group on loopback (never another address)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)


@contextlib.contextmanager
def _one_device() -> Iterator[None]:
    # workaround 1: CPU torch reports 0 accelerators and diffusers takes `rank % device_count()`
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _native_attention_with_lse(original: Callable[..., Any]) -> Callable[..., Any]:
    # workaround 2: Ring attention asks the forward op for the log-sum-exp, which the native
    # (SDPA) op refuses on CPU; compute attention and its log-sum-exp explicitly when asked
    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):  # fmt: skip
        if not return_lse:
            return original(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, False,
                            _save_ctx=_save_ctx, _parallel_config=_parallel_config)  # fmt: skip
        q, k, v = (x.permute(0, 2, 1, 3).float() for x in (query, key, value))  # (B, H, S, D)
        scores = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)  # (B, H, S, S')
        if attn_mask is not None:
            scores = (
                scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            )
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, S)
        out = torch.softmax(scores, dim=-1) @ v  # (B, H, S, D)
        return out.permute(0, 2, 1, 3).to(query.dtype), lse.permute(0, 2, 1)  # (B, S, H, D), (B, S, H)

    return forward_op


def enable_context_parallel(model: torch.nn.Module, mode: str, world: int = 2) -> None:
    """``model.enable_parallelism`` with Ulysses or Ring over all ``world`` ranks, on CPU."""
    from diffusers import ContextParallelConfig
    from diffusers.models import attention_dispatch

    if mode == "ring" and not getattr(attention_dispatch._native_attention_forward_op, "_with_lse", False):
        op = _native_attention_with_lse(attention_dispatch._native_attention_forward_op)
        op._with_lse = True
        attention_dispatch._native_attention_forward_op = op
    degree = {"ulysses_degree": world} if mode == "ulysses" else {"ring_degree": world}
    with _one_device():
        model.enable_parallelism(config=ContextParallelConfig(**degree))


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, out: str, args: tuple) -> None:
    torch.set_num_threads(1)  # two processes on a 2-core machine
    init_gloo(rank, world, port)
    try:
        result = fn(rank, world, *args)
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()
    torch.save(result, Path(out) / f"rank{rank}.pt")


class Ranks:
    """Ranks started by :func:`start_ranks`; :meth:`results` waits for them (or kills them at the deadline)."""

    def __init__(self, fn: Callable[..., Any], args: tuple, world: int, timeout: float) -> None:
        import torch.multiprocessing as mp

        self._dir = tempfile.TemporaryDirectory()
        self.world, self.timeout = world, timeout
        self._deadline = time.monotonic() + timeout
        self._context = mp.start_processes(
            _entry, args=(fn, world, free_port(), self._dir.name, args), nprocs=world, join=False, start_method="spawn"
        )

    def results(self) -> list[Any]:
        try:
            while not self._context.join(timeout=max(0.1, min(5.0, self._deadline - time.monotonic()))):
                if time.monotonic() > self._deadline:
                    raise TimeoutError(f"context-parallel ranks still running after {self.timeout:.0f} s (a deadlock?)")
            return [torch.load(Path(self._dir.name) / f"rank{r}.pt", weights_only=False) for r in range(self.world)]
        finally:
            self.close()

    def close(self) -> None:
        """Kill the ranks still running and remove their results."""
        for process in self._context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
        self._dir.cleanup()


def start_ranks(fn: Callable[..., Any], *args: Any, world: int = 2, timeout: float = 240.0) -> Ranks:
    """``fn(rank, world, *args)`` started on ``world`` spawned gloo ranks; collect with ``.results()``.

    ``fn`` must be importable (a module-level function). A rank that fails fails ``results``; ranks
    still running ``timeout`` seconds after the start are killed and ``results`` fails (a hang never blocks).
    """
    return Ranks(fn, args, world, timeout)


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2, timeout: float = 240.0) -> list[Any]:
    """:func:`start_ranks` and wait: the ranks' results, in rank order."""
    return start_ranks(fn, *args, world=world, timeout=timeout).results()
