"""Loading pipelines: the embedded toy model, a local folder, or a hub id."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from rfcache.devices import check_device
from rfcache.errors import RfcacheError
from rfcache.models import get_adapter

__all__ = ["load_pipeline"]

logger = logging.getLogger(__name__)


def load_pipeline(
    name_or_path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A diffusers pipeline whose transformer rfcache supports, on ``device`` in ``dtype``.

    ``"toy"`` is the embedded digits DiT (DDIM, 50 steps by default, classifier-free guidance);
    ``"toy-flux"`` the embedded Flux text-to-image digits model (``rfcache.models.toy_flux``); a
    folder goes through ``DiffusionPipeline.from_pretrained``; anything else is taken as a hub id.
    """
    device = check_device(device)
    embedded = {"toy": _load_toy, "toy-flux": _load_toy_flux}.get(str(name_or_path))
    pipe = embedded(dtype) if embedded is not None else _load_pretrained(name_or_path, dtype)
    get_adapter(pipe)  # fail now, with the list of supported families, rather than at enable time
    pipe.transformer.eval()
    return pipe.to(device)


def _load_toy(dtype: torch.dtype) -> Any:
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    from rfcache.models.toy import TOY_WEIGHTS_DIR, DigitsDiTPipeline

    if not (TOY_WEIGHTS_DIR / "transformer").is_dir():
        raise RfcacheError(f"embedded weights missing at {TOY_WEIGHTS_DIR}; reinstall rfcache")
    transformer = DiTTransformer2DModel.from_pretrained(TOY_WEIGHTS_DIR / "transformer", **_dtype_kwargs(dtype))
    scheduler = DDIMScheduler.from_pretrained(TOY_WEIGHTS_DIR / "scheduler")
    return DigitsDiTPipeline(transformer=transformer, scheduler=scheduler)


def _load_toy_flux(dtype: torch.dtype) -> Any:
    from rfcache.models.toy_flux import TOY_FLUX_WEIGHTS_DIR, load_toy_flux_pipeline

    if not (TOY_FLUX_WEIGHTS_DIR / "model_index.json").is_file():
        raise RfcacheError(f"embedded weights missing at {TOY_FLUX_WEIGHTS_DIR}; reinstall rfcache")
    return load_toy_flux_pipeline(TOY_FLUX_WEIGHTS_DIR, dtype=dtype)


def _load_pretrained(name_or_path: str | Path, dtype: torch.dtype) -> Any:
    from diffusers import DiffusionPipeline

    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or str(name_or_path).startswith((".", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise RfcacheError(f"model folder {path} does not exist")
    if looks_local and not (path / "model_index.json").is_file():
        raise RfcacheError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    pipeline_cls: Any = DiffusionPipeline
    if looks_local and _model_index(path).get("_class_name") == "DigitsDiTPipeline":
        from rfcache.models.toy import DigitsDiTPipeline

        pipeline_cls = DigitsDiTPipeline
    try:
        return pipeline_cls.from_pretrained(str(path) if looks_local else str(name_or_path), **_dtype_kwargs(dtype))
    except (OSError, ValueError, AttributeError, ImportError, TypeError, KeyError) as exc:
        # a class diffusers lacks, a broken component folder, an unreachable hub: one line
        raise RfcacheError(f"cannot load pipeline {name_or_path!r}: {_first_sentence(exc)}") from None


def _model_index(path: Path) -> dict[str, Any]:
    """A pipeline folder's ``model_index.json`` as a JSON object; a truncated or other file is one line."""
    index = path / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RfcacheError(f"{index}: not valid JSON ({why})") from None
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise RfcacheError(f"{index}: expected a JSON object naming its pipeline in _class_name")
    return data


def _first_sentence(exc: BaseException) -> str:
    """The first line of a loading error, without advice that does not apply offline (``local_files_only=False``,
    a stack trace that is not shown)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if any(m in text for m in ("not fully cached locally", "outgoing traffic has been disabled", "fetch metadata")):
        return "not in the local Hugging Face cache, and the hub cannot be reached; give a local pipeline folder"
    for advice in (" Check your internet connection", " If you were trying to load", " Please check"):
        if advice in text:
            text = text[: text.index(advice)].rstrip()
    return text


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` where diffusers reads it (it warns that ``torch_dtype`` is deprecated), else ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 -- present where `dtype` is read
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}
