"""What a benchmark generates: a pipeline and its per-sample inputs, as images in ``[0, 1]``.

``toy`` is the embedded digits DiT (class ``i % 10``, guidance 2); ``toy-flux`` the embedded Flux
digits model (sample ``i`` names digit ``i % 10`` in one of the templates 5-9 of
:data:`~rfcache.models.toy_flux.PROMPT_TEMPLATES`, its default guidance; a calibrated method
calibrates on templates 0-4, so no choice sees a test prompt); ``tiny:FAMILY`` a family's tiny
random pipeline from ``rfcache.models.tiny`` (its own call arguments, prompt ``"cat i"``); anything
else a local pipeline folder or hub id (class labels where the transformer is class-conditional,
else the calibration prompts). Sample ``i`` uses seed ``seed + i`` (``seed`` is 1000 unless the
benchmark's ``--seed`` says otherwise); tuning samples (only used to match costs) use indices from
500 on, so they never coincide with evaluated samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rfcache.errors import RfcacheError
from rfcache.models import get_transformer

__all__ = ["TUNE_OFFSET", "Workload", "load_workload"]

TUNE_OFFSET = 500


@dataclass
class Workload:
    """A pipeline and how to call it for sample ``i``."""

    name: str
    pipe: Any
    steps: int
    base_kwargs: dict[str, Any]
    input_kind: str  # "class" or "prompt"
    num_classes: int = 0
    prompts: list[str] = field(default_factory=list)
    calibration_prompts: list[str] = field(default_factory=list)  # what a calibrated method may see (default: prompts)
    device: str = "cpu"
    seed: int = 1000  # sample i uses seed + i

    @property
    def transformer(self) -> torch.nn.Module:
        return get_transformer(self.pipe)

    @property
    def is_digits(self) -> bool:
        return self.name in ("toy", "toy-flux")

    def label(self, index: int) -> int:
        return index % max(self.num_classes, 1)

    def kwargs(self, index: int) -> dict[str, Any]:
        kwargs = dict(self.base_kwargs)
        if self.input_kind == "class":
            kwargs["class_labels"] = [self.label(index)]
        else:
            kwargs["prompt"] = [self.prompts[index % len(self.prompts)]]
        return kwargs

    def generate(self, index: int) -> torch.Tensor:
        """Sample ``index`` as ``(N, C, H, W)`` float images in [0, 1] (video frames become the batch)."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed + index)
        out = self.pipe(**self.kwargs(index), num_inference_steps=self.steps, generator=generator, output_type="np")
        images = torch.from_numpy(np.asarray(out.images if hasattr(out, "images") else out.frames, dtype=np.float32))
        images = images.reshape(-1, *images.shape[-3:])  # (N[*F], H, W, C)
        return images.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def load_workload(
    model: str, *, steps: int, device: str = "cpu", dtype: torch.dtype = torch.float32, run: Any = None
) -> Workload:
    """The benchmark's workload for ``model`` (``toy``, ``tiny:FAMILY``, a folder or hub id); ``run``
    (a :class:`~rfcache.runtime.runspec.RunSpec`) replaces its prompts and pipeline arguments."""
    work = _load_workload(model, steps=steps, device=device, dtype=dtype)
    if run is not None:
        call = {k: v for k, v in run.call_kwargs(work.pipe).items() if k != "num_inference_steps"}
        work.base_kwargs.update(call)
        if work.input_kind == "prompt" and run.prompts:
            work.prompts = list(run.prompts)
        elif run.prompts or run.class_labels:
            run.inputs(work.pipe)  # a prompt for a class-conditional model (or the reverse): one line
    return work


def _load_workload(model: str, *, steps: int, device: str, dtype: torch.dtype) -> Workload:
    if model.startswith("tiny:"):
        from rfcache.models.tiny import FAMILIES, build_tiny_pipeline, tiny_pipeline_call_kwargs

        family = model.removeprefix("tiny:")
        if family not in FAMILIES:
            raise RfcacheError(f"--model {model}: unknown family; expected tiny:{{{','.join(FAMILIES)}}}")
        pipe = build_tiny_pipeline(family, device=device, dtype=dtype)
        base = tiny_pipeline_call_kwargs(family, batch=1)
        if "class_labels" in base:
            base.pop("class_labels")
            return Workload(model, pipe, steps, base, "class", num_classes=10, device=device)
        base.pop("prompt")
        return Workload(model, pipe, steps, base, "prompt", prompts=[f"cat {i}" for i in range(10)], device=device)

    from rfcache.calibrate.api import default_prompts
    from rfcache.pipelines import load_pipeline

    pipe = load_pipeline(model, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if model == "toy-flux":
        from rfcache.models.toy_flux import digit_prompts

        test, calibration = digit_prompts(range(5, 10)), digit_prompts(range(5))  # prompt j names digit j % 10
        prompts = [p for p, _ in test]
        return Workload(model, pipe, steps, {}, "prompt", 10, prompts, [p for p, _ in calibration], device=device)
    import inspect

    params = set(inspect.signature(type(pipe).__call__).parameters)
    num_classes = int(getattr(get_transformer(pipe).config, "num_embeds_ada_norm", 0) or 0)
    base: dict[str, Any] = {"guidance_scale": 2.0} if "guidance_scale" in params else {}
    if num_classes and "class_labels" in params:
        return Workload(model, pipe, steps, base, "class", num_classes=min(num_classes, 10), device=device)
    if "prompt" not in params:
        raise RfcacheError(f"--model {model}: the pipeline takes neither class_labels nor prompt")
    return Workload(model, pipe, steps, base, "prompt", prompts=default_prompts(), device=device)
