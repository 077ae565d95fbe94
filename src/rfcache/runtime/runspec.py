"""`RunSpec`: the run description every command and the Python API share.

A run is what a pipeline call needs besides the model: its inputs (prompts with an optional
negative prompt, or class labels), the size (height, width, frames), steps, guidance, seed and any
other keyword the pipeline takes (``call_args``). :meth:`RunSpec.call_kwargs` turns it into the
pipeline's keyword arguments, refusing with one line what the pipeline does not take;
:func:`run_setup` is the :class:`~rfcache.schedules.SamplingSetup` a profile records and is
checked against; :func:`pipeline_call` runs the pipeline and turns any failure inside it into one
line naming what to change.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rfcache.errors import RfcacheError
from rfcache.models import get_transformer
from rfcache.runtime.experts import boundary_step
from rfcache.runtime.identity import config_hash, input_resolution
from rfcache.schedules import SamplingSetup

__all__ = [
    "RunSpec",
    "captured_call",
    "conditioning",
    "guidance_mode",
    "pipeline_call",
    "pipeline_params",
    "run_setup",
]

# keywords a run description sets itself (or that would change what rfcache reads back)
_RESERVED = ("prompt", "class_labels", "negative_prompt", "generator", "output_type", "return_dict", "callback")
_FLAGS = {"height": "--height", "width": "--width", "num_frames": "--num-frames", "guidance_scale": "--guidance"}


@dataclass(frozen=True)
class RunSpec:
    """What one pipeline call is: inputs, size, steps, guidance, seed and other pipeline arguments.

    ``None`` means the pipeline's own default. ``call_args`` holds any other keyword the pipeline
    takes (``max_sequence_length``, ``use_resolution_binning``, ...).

    Example:
        >>> run = RunSpec(prompts=("a red fox",), height=512, width=768, steps=28, guidance=4.5)
        >>> images = pipe(**run.call_kwargs(pipe), generator=run.generator()).images
    """

    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = None
    class_labels: tuple[int, ...] = ()
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    steps: int = 50
    guidance: float | None = None
    seed: int = 0
    call_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise RfcacheError(f"--steps must be at least 1, got {self.steps}")
        for name in ("height", "width", "num_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RfcacheError(f"{_FLAGS[name]} must be at least 1, got {value}")
        reserved = sorted(set(self.call_args) & {*_RESERVED, "num_inference_steps", *_FLAGS})
        if reserved:
            raise RfcacheError(
                f"--call-args: {', '.join(reserved)} has its own flag (--prompt, --class, --steps, --height, ...)"
            )

    def inputs(self, pipe: Any, count: int | None = None) -> dict[str, list[Any]]:
        """The pipeline's input keyword (``prompt`` or ``class_labels``), ``count`` items cycling the given ones."""
        kind = conditioning(pipe)
        name = type(pipe).__name__
        if kind == "class":
            if self.prompts:
                raise RfcacheError(f"{name} is class-conditional: give --class N (a class label), not --prompt")
            values: list[Any] = list(self.class_labels) or [0]
            key = "class_labels"
        else:
            if self.class_labels:
                raise RfcacheError(f"{name} takes prompts: give --prompt TEXT or --prompts FILE, not --class")
            if not self.prompts:
                raise RfcacheError(f"{name} takes prompts: give --prompt TEXT or --prompts FILE")
            values, key = list(self.prompts), "prompt"
        n = len(values) if count is None else count
        return {key: [values[i % len(values)] for i in range(n)]}

    def call_kwargs(self, pipe: Any) -> dict[str, Any]:
        """Keyword arguments for ``pipe(...)`` other than the inputs and the generator, checked against
        the pipeline's signature; an argument it does not take is one line naming both."""
        params = pipeline_params(pipe)
        name = type(pipe).__name__
        wanted: dict[str, Any] = {
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "guidance_scale": self.guidance,
        }
        kwargs: dict[str, Any] = {"num_inference_steps": self.steps}
        for key, value in wanted.items():
            if value is None:
                continue
            if key not in params:
                raise RfcacheError(f"{_FLAGS[key]}: {name} takes no {key} (it takes {_takes(params)})")
            kwargs[key] = value
        if self.negative_prompt is not None:
            if "negative_prompt" not in params:
                raise RfcacheError(f"--negative-prompt: {name} takes no negative_prompt (it takes {_takes(params)})")
            kwargs["negative_prompt"] = self.negative_prompt
        open_kwargs = "kwargs" in params  # PixArt's __call__ takes **kwargs and ignores what it does not know
        for key, value in self.call_args.items():
            if key not in params or (open_kwargs and key not in _named(params)):
                raise RfcacheError(f"--call-args: {name} takes no {key!r} (it takes {_takes(params)})")
            kwargs[key] = value
        return kwargs

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)


def parse_call_args(text: str | None) -> dict[str, Any]:
    """``--call-args`` JSON: an object of pipeline keywords."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RfcacheError(
            f"--call-args must be a JSON object, e.g. '{{\"max_sequence_length\": 128}}' ({exc.msg})"
        ) from None
    if not isinstance(value, dict):
        raise RfcacheError(f"--call-args must be a JSON object, got {type(value).__name__}")
    return value


def conditioning(pipe: Any) -> str:
    """``"class"`` for class-conditional pipelines (a ``class_labels`` input), else ``"text"``."""
    params = pipeline_params(pipe)
    if "class_labels" in params:
        return "class"
    if "prompt" in params:
        return "text"
    raise RfcacheError(f"{type(pipe).__name__} takes neither prompts nor class labels; rfcache cannot drive it")


def pipeline_params(pipe: Any) -> dict[str, inspect.Parameter]:
    """The parameters of the pipeline's ``__call__`` by name (``kwargs`` for a ``**kwargs``)."""
    return _params(type(pipe))


@functools.lru_cache(maxsize=32)
def _params(cls: type) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(cls.__call__).parameters.items() if n != "self"}


def _named(params: dict[str, inspect.Parameter]) -> set[str]:
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _takes(params: dict[str, inspect.Parameter]) -> str:
    return ", ".join(sorted(_named(params) - set(_RESERVED)))


def guidance_mode(pipe: Any, scale: float) -> str:
    """``"embedded"`` (the scale is a transformer input, FLUX.1-dev), ``"cfg"`` (scale > 1) or ``"none"``."""
    models = [get_transformer(pipe), getattr(pipe, "transformer_2", None)]
    if any(getattr(getattr(m, "config", None), "guidance_embeds", False) for m in models if m is not None):
        return "embedded"
    return "cfg" if scale > 1 else "none"


def default_guidance(pipe: Any) -> float:
    """The pipeline's own default guidance scale (0.0 if it has none)."""
    param = pipeline_params(pipe).get("guidance_scale")
    default = None if param is None else param.default
    return float(default) if isinstance(default, (int, float)) else 0.0


def run_setup(pipe: Any, run: RunSpec, resolution: Sequence[int] = ()) -> SamplingSetup:
    """The sampling setup ``run`` gives on ``pipe``: what a profile records and is checked against.

    ``resolution`` is the transformer input's shape without the batch axis (known once a call ran).
    """
    scale = run.guidance if run.guidance is not None else default_guidance(pipe)
    text_tokens = run.call_args.get("max_sequence_length", 0)
    return SamplingSetup(
        scheduler=type(pipe.scheduler).__name__,
        num_steps=run.steps,
        guidance=guidance_mode(pipe, scale),
        resolution=tuple(int(d) for d in resolution),
        scheduler_config_hash=config_hash(pipe.scheduler.config),
        guidance_scale=float(scale),
        height=run.height or 0,
        width=run.width or 0,
        num_frames=run.num_frames or 0,
        text_tokens=int(text_tokens) if isinstance(text_tokens, int) else 0,
        call_args={k: json.dumps(v, sort_keys=True) for k, v in sorted(run.call_args.items())},
        boundary_step=boundary_step(pipe, run.steps),
    )


def run_from_setup(setup: SamplingSetup, **inputs: Any) -> RunSpec:
    """The run description a profile (or bundle) was made for, with new ``inputs`` (prompts, seed, ...)."""
    return RunSpec(
        height=setup.height or None,
        width=setup.width or None,
        num_frames=setup.num_frames or None,
        steps=setup.num_steps,
        guidance=setup.guidance_scale if setup.guidance_scale else None,
        call_args={k: json.loads(v) for k, v in setup.call_args.items()},
        **inputs,
    )


def pipeline_call(pipe: Any, kwargs: dict[str, Any], *, what: str = "the pipeline call") -> Any:
    """``pipe(**kwargs)``, with any failure inside it as one :class:`RfcacheError` line naming the arguments."""
    try:
        return pipe(**kwargs)
    except RfcacheError:
        raise
    except torch.OutOfMemoryError as exc:
        raise RfcacheError(
            f"{what} ran out of memory ({_first(exc)}); use a smaller --height/--width/--num-frames or fewer inputs"
        ) from exc
    except (ValueError, TypeError, RuntimeError, AttributeError, IndexError, KeyError, OSError) as exc:
        shown = {k: v for k, v in kwargs.items() if k not in ("generator", "prompt", "class_labels", "output_type")}
        raise RfcacheError(
            f"{what} failed in {type(pipe).__name__} with {_describe(shown)}: {type(exc).__name__}: {_first(exc)}; "
            "change the size (--height/--width/--num-frames), steps or --call-args"
        ) from exc


class _Captured(Exception):
    """Raised from a hook to stop a pipeline call once the transformer's first call is captured."""


@contextlib.contextmanager
def captured_call(pipe: Any) -> Iterator[dict[str, Any]]:
    """Within the block, the transformer's first call stops the pipeline; its keyword arguments
    (positional ones bound by name) and the wall time of one forward land in the yielded dict.

    Example:
        >>> with captured_call(pipe) as call:
        ...     pipeline_call(pipe, kwargs)
        >>> call["kwargs"]["hidden_states"].shape
    """
    model = get_transformer(pipe)
    found: dict[str, Any] = {}
    names = [n for n in inspect.signature(model.forward).parameters if n != "self"]

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        bound = {**dict(zip(names, args, strict=False)), **kwargs}
        started = time.perf_counter()
        with torch.no_grad():
            module.forward(*args, **kwargs)  # hooks do not run again: forward, not __call__
        found["seconds"] = time.perf_counter() - started
        found["kwargs"] = bound
        found["resolution"] = input_resolution(bound["hidden_states"])
        raise _Captured

    handle = model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        yield found
    except _Captured:
        pass
    finally:
        handle.remove()
    if "kwargs" not in found:
        raise RfcacheError(f"{type(pipe).__name__} finished without calling its transformer")


def _describe(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
