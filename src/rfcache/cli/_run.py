"""The run flags every command shares (``--prompt``, ``--height``, ``--steps``, ...) and the
`RunSpec` they describe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.cli._args import option

__all__ = ["RunFlags", "read_prompts", "run_spec"]


@dataclass(frozen=True)
class RunFlags:
    """Flags one-to-one with :class:`~rfcache.runtime.runspec.RunSpec`; a command's config inherits them."""

    prompt: tuple[str, ...] = option((), "a prompt; repeat the flag for several", repeat=True, metavar="TEXT")
    prompts: Path | None = option(None, "text file, one prompt per line", metavar="FILE")
    negative_prompt: str | None = option(None, "negative prompt (pipelines with classifier-free guidance)")
    class_labels: tuple[int, ...] = option(
        (), "class label(s) of class-conditional models, comma-separated", flag="--class", metavar="N"
    )
    height: int | None = option(
        None, "image height in pixels (default: the profile's, else the pipeline's)", at_least=1
    )
    width: int | None = option(None, "image width in pixels (default: the profile's, else the pipeline's)", at_least=1)
    num_frames: int | None = option(
        None, "video frames (video pipelines; default: the profile's, else the pipeline's)", at_least=1
    )
    steps: int | None = option(None, "number of inference steps (default: the profile's, else 50)", at_least=1)
    guidance: float | None = option(None, "guidance scale (default: the profile's, else the pipeline's)", at_least=0)
    seed: int = option(0, "seed of the initial noise")
    call_args: str | None = option(
        None, "JSON object of other pipeline arguments, e.g. '{\"max_sequence_length\": 128}'", metavar="JSON"
    )


def run_spec(flags: RunFlags, setup: Any = None) -> Any:
    """The run the flags describe; what they leave unset comes from ``setup`` (a profile's
    :class:`~rfcache.schedules.SamplingSetup`), else the pipeline's defaults."""
    from rfcache.runtime.runspec import RunSpec, parse_call_args, run_from_setup

    prompts = (*flags.prompt, *(read_prompts(flags.prompts) if flags.prompts is not None else ()))
    base = run_from_setup(setup) if setup is not None else RunSpec()
    call_args = {**base.call_args, **parse_call_args(flags.call_args)}
    return RunSpec(
        prompts=prompts,
        negative_prompt=flags.negative_prompt,
        class_labels=tuple(flags.class_labels),
        height=flags.height if flags.height is not None else base.height,
        width=flags.width if flags.width is not None else base.width,
        num_frames=flags.num_frames if flags.num_frames is not None else base.num_frames,
        steps=flags.steps if flags.steps is not None else base.steps,
        guidance=flags.guidance if flags.guidance is not None else base.guidance,
        seed=flags.seed,
        call_args=call_args,
    )


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of a prompt file; an unreadable or empty file is one line."""
    from rfcache.errors import RfcacheError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RfcacheError(f"{path}: cannot read prompt file ({type(exc).__name__})") from exc
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise RfcacheError(f"{path}: prompt file is empty (expected one prompt per line)")
    return prompts
