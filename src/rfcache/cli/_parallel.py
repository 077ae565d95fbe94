"""Commands launched by ``torchrun``: ``--context-parallel ulysses|ring`` and the ranks' roles.

``torchrun --nproc_per_node N $(which rfc-generate) ... --context-parallel ulysses`` splits each
generation's sequence over the N ranks (diffusers' context parallelism, Flux and Wan) with caching
on every rank (rfcache.runtime.parallel). Rank 0 writes the one output and prints; the other ranks
are silent; an error is one line from rank 0 and a non-zero exit on every rank. Commands that
cannot run split are refused in one line under torchrun: bundles are single-device (``rfc-export``,
``rfc-run``), calibration records on one device (``rfc-calibrate``), ``rfc-bench`` compares methods
in one process.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from rfcache.cli._args import option

__all__ = [
    "MODES",
    "check_launch",
    "context_parallel_option",
    "is_lead",
    "rank_device",
    "report_error",
    "split_pipeline",
    "world",
]

MODES = ("ulysses", "ring")
_SPLIT_COMMANDS = ("generate",)
_WHY = {
    "export": "{bundles}; export in one process",  # {bundles}: the library's own reason (runtime/parallel.py)
    "run": "{bundles}; run them in one process",
    "calibrate": "record the calibration on one device (its profile then runs split unchanged)",
    "bench": "the benchmark times methods in one process",
    "show": "it reads a file; run it in one process",
}


def context_parallel_option() -> Any:
    return option(
        None, "ulysses or ring: split each generation over the ranks torchrun starts (Flux, Wan)", metavar="MODE"
    )


def world() -> int:
    """How many ranks ``torchrun`` started (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_lead() -> bool:
    """Rank 0 (or no torchrun): the one rank that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def check_launch(command: str, cfg: Any) -> None:
    """Refuse, in one line, a command that cannot run as launched; silence the other ranks."""
    from rfcache.errors import RfcacheError

    mode = getattr(cfg, "context_parallel", None)
    if world() > 1:
        if not is_lead():
            _silence()
        if command not in _SPLIT_COMMANDS:
            from rfcache.runtime.parallel import SINGLE_DEVICE_BUNDLES

            why = _WHY[command].format(bundles=SINGLE_DEVICE_BUNDLES)
            raise RfcacheError(f"rfc-{command} under torchrun ({world()} ranks) is refused: {why}")
        if mode is None:
            raise RfcacheError(
                f"launched by torchrun with {world()} ranks: pass --context-parallel ulysses or ring "
                "(or run in one process)"
            )
    if mode is not None:
        if mode not in MODES:
            raise RfcacheError(f"--context-parallel must be one of {', '.join(MODES)}, got {mode!r}")
        if world() < 2:
            raise RfcacheError(
                f"--context-parallel {mode} needs several ranks: launch with torchrun --nproc_per_node N"
            )


def report_error(line: str) -> None:
    """Rank 0 prints the one error line; the others wait a moment, silent, so that torchrun, which stops
    every rank when the first one exits, does not stop rank 0 before its line is out."""
    import sys
    import time

    if is_lead():
        print(line, file=sys.stderr)
    else:
        time.sleep(2.0)


def rank_device(device: str) -> str:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if world() > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def split_pipeline(pipe: Any, mode: str, device: str) -> None:
    """Join the torchrun group and enable diffusers' context parallelism on ``pipe``'s transformer(s)."""
    import torch
    import torch.distributed as dist

    from rfcache.errors import RfcacheError
    from rfcache.runtime.experts import expert_models

    models = [m for _, m in expert_models(pipe)]  # both experts of a two-expert Wan
    model = models[0]
    if getattr(type(model), "_cp_plan", None) is None:
        raise RfcacheError(f"{type(model).__name__} has no context-parallel plan in diffusers (Flux and Wan do)")
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and torch.accelerator.device_count() == 0:
        # diffusers 0.42's enable_parallelism takes `rank % torch.accelerator.device_count()`, 0 on CPU torch
        raise RfcacheError("--context-parallel needs accelerators: diffusers' context parallelism fails on CPU torch")
    if not dist.is_initialized():
        if not on_cpu:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("gloo" if on_cpu else "nccl")
    from diffusers import ContextParallelConfig

    degree = {"ulysses_degree": world()} if mode == "ulysses" else {"ring_degree": world()}
    try:
        for m in models:
            m.enable_parallelism(config=ContextParallelConfig(**degree))
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RfcacheError(f"context parallelism ({mode}, {world()} ranks) refused by diffusers: {first}") from exc


def _silence() -> None:
    """The other ranks print nothing: no warnings, no progress bars, no log lines."""
    import logging

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - diffusers is a dependency
        pass
