"""Devices: refuse a device this torch cannot use, in one line, before anything is loaded or written.

Every command and :func:`rfcache.load_pipeline` call :func:`check_device` first, so ``--device cuda``
on a CPU-only build is ``RfcacheError`` (exit 2 from the CLI) rather than a traceback from deep
inside torch after a study database or a bundle folder was already created.
"""

from __future__ import annotations

import torch

from rfcache.errors import RfcacheError

__all__ = ["check_device", "cuda_available"]


def cuda_available() -> bool:
    """Whether this torch was built with CUDA and sees at least one GPU."""
    return torch.backends.cuda.is_built() and torch.cuda.is_available()


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, or one :class:`RfcacheError` line saying why it cannot run here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RfcacheError(f"device {str(device)!r} is not a torch device (expected cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise RfcacheError(
                f"device {str(device)!r}: this torch ({torch.__version__}) was built without CUDA; "
                "install a CUDA build of torch or use --device cpu"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RfcacheError(f"device {str(device)!r}: no CUDA GPU is visible (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= count:
            raise RfcacheError(f"device {str(device)!r}: only {count} CUDA GPU(s) visible (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RfcacheError(f"device {str(device)!r}: MPS is not available in this torch or on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise RfcacheError(f"device {str(device)!r}: rfcache runs on cpu, cuda or mps")
    return dev
