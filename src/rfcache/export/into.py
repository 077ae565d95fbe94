"""Putting a bundle into a pipeline: :class:`EngineTransformer` in place of its transformer.

:func:`load_bundle` opens a bundle folder as a :class:`Bundle` (one engine) or an
:class:`ExpertBundle` (a two-expert pipeline's, Wan 2.2); ``bundle.into(pipe)`` replaces the
pipeline's transformer (both, for two experts, the second counting steps from its boundary) by
an engine that runs the bundle's graphs with the backend's runner.

The pipeline's own text encoders, scheduler loop, guidance and VAE run unchanged; each call of
``pipe.transformer`` runs one step of the bundle's graphs with its baked schedule. Steps and
guidance branches are told apart by the timestep with the PyTorch runtime's own rule
(:func:`rfcache.runtime.session.call_kind`): a lower timestep is the next step, the same one again
is the next branch of sequential guidance (own cache state), a higher one or new scheduler
timesteps start a new generation.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rfcache.export.backends import open_runner
from rfcache.export.bundle import EngineFolder, ExpertFolder, read_folder
from rfcache.export.manifest import CONDITIONING_PREFIX, DISTANCE, PREVIOUS, UNIT_COEFFS, BundleError
from rfcache.export.runner import BundleRunner, StepRunner
from rfcache.models import get_adapter
from rfcache.runtime.conditioning import predicted_timesteps
from rfcache.runtime.experts import check_profile_experts
from rfcache.runtime.identity import config_hash
from rfcache.runtime.parallel import SINGLE_DEVICE_BUNDLES, refuse_context_parallel
from rfcache.runtime.session import call_kind

__all__ = ["Bundle", "EngineTransformer", "ExpertBundle", "load_bundle", "put_bundle"]


@dataclass(frozen=True)
class Bundle(EngineFolder):
    """A verified single-engine bundle (bundle.py), ready for a runner or for a pipeline."""

    def into(self, pipe: Any, *, device: str = "cpu", threads: int | None = None) -> Any:
        """Put the bundle in place of ``pipe.transformer``: the pipeline's text encoders, scheduler loop
        and VAE run as usual, each transformer step runs from the engine with the baked schedule.

        Example:
            >>> pipe = rfcache.load_pipeline("./my-flux")
            >>> rfcache.load_bundle("flux-bundle/").into(pipe)
            >>> image = pipe("a red fox", generator=torch.Generator().manual_seed(0)).images[0]
        """
        return put_bundle(self, pipe, device=device, threads=threads)


@dataclass(frozen=True)
class ExpertBundle(ExpertFolder):
    """A verified two-expert bundle (Wan 2.2): one :class:`Bundle` per transformer."""

    member: ClassVar[type[EngineFolder]] = Bundle

    def into(self, pipe: Any, *, device: str = "cpu", threads: int | None = None) -> Any:
        """Replace ``pipe.transformer`` and ``pipe.transformer_2``, each by its expert's engine."""
        check_profile_experts(self.profile, pipe)
        for component, first_step, bundle in self.experts:
            put_bundle(bundle, pipe, device=device, threads=threads, component=component, first_step=first_step)
        return pipe


def load_bundle(path: str | os.PathLike[str]) -> Bundle | ExpertBundle:
    """Open a bundle folder, verifying every file's hash; refuses a missing, altered or extra file."""
    return read_folder(path, engine=Bundle, experts=ExpertBundle)  # type: ignore[return-value]


class EngineTransformer(torch.nn.Module):
    """Called like the transformer it replaces (same config, dtype and device); runs the bundle."""

    def __init__(
        self,
        bundle: EngineFolder,
        runner: BundleRunner,
        original: torch.nn.Module,
        scheduler: Any = None,
    ) -> None:
        super().__init__()
        self.bundle, self.runner = bundle, runner
        # the pipeline's scheduler predicts a generation's timesteps: the conditioning graph then runs once
        self._scheduler = scheduler
        self._adapter = get_adapter(original)
        self.config = original.config
        param = next(original.parameters())
        self.register_buffer("_anchor", torch.zeros((), dtype=param.dtype, device=param.device), persistent=False)
        self._names = [n for n in inspect.signature(original.forward).parameters if n != "self"]
        full = bundle.graphs[bundle.full_graph].inputs
        skip = {DISTANCE, UNIT_COEFFS}
        self._inputs = [
            t.name for t in full if t.name not in skip and not t.name.startswith((PREVIOUS, CONDITIONING_PREFIX))
        ]
        self._timestep: float | None = None
        self._run: Any = None  # the scheduler's timesteps of the current generation
        self._branch = 0
        self._steps: list[StepRunner] = []

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs: Any) -> Iterator[None]:
        """Pipelines with diffusers' cache mixin name their guidance branches; the timestep already tells."""
        yield

    @property
    def executed(self) -> str:
        """The pattern the last generation ran (its first guidance branch)."""
        return self._steps[0].executed if self._steps else ""

    @property
    def conditioning_runs(self) -> int:
        """Conditioning-graph passes of the last generation: one per guidance branch where the
        scheduler predicted every step's timestep, one per step and branch otherwise."""
        return sum(s.conditioning_runs for s in self._steps)

    @property
    def fallbacks(self) -> int:
        """Cached steps of the last generation rerun in full because their output was not finite."""
        return sum(s.fallbacks for s in self._steps)

    def forward(self, *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        bound = {**dict(zip(self._names, args, strict=False)), **kwargs}
        hidden = bound["hidden_states"]
        t = float(torch.as_tensor(bound["timestep"]).flatten()[0])
        run = getattr(self._scheduler, "timesteps", None)
        call = call_kind(t, self._timestep, run, self._run)
        if call == "generation":
            self._steps, self._branch, self._run = [], 0, run
        elif call == "branch":
            self._branch += 1
        else:
            self._branch = 0
        self._timestep = t
        if self._branch >= len(self._steps):
            batch, timesteps = int(hidden.shape[0]), self._timesteps(bound["timestep"])
            self._steps.append(self.runner.steps(batch, timesteps, text_tokens=self._text_tokens(bound)))
        arrays = {}
        for name in self._inputs:
            value = bound.get(name)
            if not isinstance(value, torch.Tensor):
                raise BundleError(f"{self.bundle.path}: the pipeline did not pass {name!r}, an input of the graphs")
            arrays[name] = value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
        out = self._steps[self._branch](arrays)
        # a numpy array (ONNX Runtime) or a tensor (aoti, TensorRT)
        sample = torch.as_tensor(out).to(device=hidden.device, dtype=hidden.dtype)
        if not return_dict:
            return (sample,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)

    def _text_tokens(self, bound: dict[str, Any]) -> int | None:
        """The length of the text inputs the pipeline passed (its ``max_sequence_length`` and more)."""
        text = self.bundle.text_axis
        if text is None:
            return None
        name, axis = next(iter(text.inputs.items()))
        value = bound.get(name)
        return int(value.shape[axis]) if isinstance(value, torch.Tensor) else None

    def _timesteps(self, first: Any) -> list[float] | None:
        """The timestep input at every step of the generation starting now, where the scheduler predicts it."""
        predicted = predicted_timesteps(self._adapter, self._scheduler, torch.as_tensor(first).flatten())
        if predicted is None or len(predicted) != len(self.bundle.pattern) - self.runner.first_step:
            return None
        return [float(v) for v in predicted]


def put_bundle(
    bundle: EngineFolder,
    pipe: Any,
    *,
    device: str = "cpu",
    threads: int | None = None,
    component: str = "transformer",
    first_step: int = 0,
) -> Any:
    """Replace ``pipe.transformer`` (or another ``component``, starting at ``first_step``) by the
    bundle's engine; refuses a bundle made for another model."""
    original = getattr(pipe, component, None)
    if not isinstance(original, torch.nn.Module) or isinstance(original, EngineTransformer):
        raise BundleError(f"{type(pipe).__name__} has no transformer of its own to replace")
    refuse_context_parallel(
        original, "putting a bundle into a pipeline", f"{SINGLE_DEVICE_BUNDLES}; run it in one process"
    )
    model = bundle.manifest["model"]
    found = (type(original).__name__, config_hash(original.config))
    if found != (model["class_name"], model["config_hash"]):
        raise BundleError(
            f"{bundle.path}: bundle is for a {model['class_name']} with config hash {model['config_hash']}; "
            f"this pipeline's transformer is a {found[0]} with config hash {found[1]}"
        )
    runner = open_runner(bundle, device=device, threads=threads)
    runner.start_at(first_step)  # the second expert's engine: its history starts at its first step
    engine = EngineTransformer(bundle, runner, original, getattr(pipe, "scheduler", None))
    setattr(pipe, component, engine)
    return pipe
