"""What every backend's runner shares: the pattern's coefficients, one generation step by step, the sampler.

A runner (:class:`BundleRunner`, one subclass per backend in ``backends/``) holds a bundle's loaded
graphs; ``runner.steps(batch)`` gives a :class:`StepRunner` that executes one denoising step per
call, in order: the full graph at ``C`` steps (reading the previous state, writing the new one) and
the cached graph at ``P`` steps (reading the state, fed the step's coefficients). A cached step
whose output is not finite is run again as a full step and counted. A per-unit bundle runs each
step's kind graph instead, fed each unit's own distance or coefficients (``unit_coeffs``, from the
unit's own computed steps); its fallback is the kind with every unit computed. Backends implement
the graph call (:meth:`StepRunner.run_graph`: the state it reads, what it writes kept pending) and
:meth:`StepRunner.commit` (a finite step's state becomes the current one), and keep the cache state
on their device.

Where the bundle has a conditioning graph (every step's timestep embedding and adaLN modulation from
the timestep and the per-sample condition), the step graphs read its rows (``c.*`` inputs) instead
of holding the modulation weights. Given the generation's timesteps (``steps(batch, timesteps=...)``,
as :meth:`BundleRunner.generate` does), it runs once, at the first step, for every step; a step
whose timestep or condition inputs differ from that prediction, or a runner given no timesteps,
runs it for that step alone.

:meth:`BundleRunner.generate` is the sampler loop of class-conditional bundles (the embedded model,
DiT): diffusers' scheduler, classifier-free guidance as the pipeline does it, and the bundle's
decoder graph where there is one. No model code is needed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rfcache.errors import RfcacheError
from rfcache.export.bundle import EngineFolder
from rfcache.export.manifest import (
    COEFFS,
    CONDITIONING_PREFIX,
    DISTANCE,
    PREVIOUS,
    UNIT_COEFFS,
    BundleError,
    GraphSpec,
    decode_config,
    kind_graph,
    resolve_shape,
)
from rfcache.runtime.predictors import kept_differences, padded_taylor_coefficients
from rfcache.schedules import ratio_position

__all__ = [
    "BundleRunner",
    "GenerationResult",
    "StepRunner",
    "host_array",
    "pattern_coefficients",
    "state_io",
    "unit_coefficients",
]

logger = logging.getLogger(__name__)


def pattern_coefficients(
    pattern: str, keep: int, *, step_position: bool = False, first_step: int = 0
) -> list[list[float] | None]:
    """Per step: ``None`` at a full step, else the cached graph's ``coeffs``: ``k^i / i!`` up to the
    order the full steps so far allow and 0 above it, as the PyTorch runtime predicts; with
    ``step_position`` (a step-linear calibrated ratio), then the step's ``ratio_position``.
    ``first_step``: the step a two-expert pipeline's second engine starts at (its history starts
    there; earlier steps are not its own)."""
    out: list[list[float] | None] = []
    full, last = 0, -1
    for step, letter in enumerate(pattern):
        if step < first_step:  # not this engine's step
            out.append(None)
            continue
        if letter == "C":
            full, last = full + 1, step
            out.append(None)
            continue
        coeffs = padded_taylor_coefficients(step - last, min(keep, full - 1), keep)
        out.append([*coeffs, ratio_position(step, len(pattern))] if step_position else coeffs)
    return out


def unit_coefficients(
    kind: str, step: int, last: Sequence[int], full: Sequence[int], keep: int, position: float | None = None
) -> list[list[float]]:
    """A per-unit step kind's ``unit_coeffs`` at ``step``: per unit, computed (``C`` in ``kind``): its
    distance to its previous computation ``last[u]`` (1 at its first) in column 0; predicted: ``k^i / i!``
    for its own ``k`` and the order its ``full[u]`` computations allow (then ``position``, a step-linear
    ratio's), as the PyTorch runtime predicts each unit from its own history."""
    width = keep + 1 + (position is not None)
    rows = []
    for letter, u_last, u_full in zip(kind, last, full, strict=True):
        if letter == "C":
            rows.append([float(step - u_last if u_last >= 0 else 1)] + [0.0] * (width - 1))
            continue
        coeffs = padded_taylor_coefficients(step - u_last, min(keep, u_full - 1), keep)
        rows.append([*coeffs, position] if position is not None else coeffs)
    return rows


def state_io(spec: GraphSpec, state: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """A step graph's state inputs as (input name, state tensor) and the state tensors it writes: the
    previous state (``prev.*``) and the state read as it is, in the graph's order."""
    names = set(state)
    reads = [
        (t.name, t.name.removeprefix(PREVIOUS)) for t in spec.inputs if t.name.startswith(PREVIOUS) or t.name in names
    ]
    return reads, [t.name for t in spec.outputs[1:]]


@dataclass(frozen=True)
class GenerationResult:
    """Images (``(B, H, W, C)`` in [0, 1]) and what the run did."""

    images: np.ndarray
    pattern: str
    seconds: float
    nonfinite_fallbacks: int


class BundleRunner:
    """What every backend shares: the pattern's coefficients and the class-conditional sampler.

    Backends name their :class:`StepRunner` subclass (``step_runner``) and implement :meth:`decode_latents`.
    """

    step_runner: type[StepRunner]

    def __init__(self, bundle: EngineFolder, device: str) -> None:
        self.bundle, self.device = bundle, device
        predictor = bundle.manifest["predictor"]
        self.keep = kept_differences(predictor["kind"], int(predictor["order"]))
        self.start_at(0)

    def start_at(self, first_step: int) -> None:
        """Run the steps from ``first_step`` on (a two-expert pipeline's second engine): the
        predictor's history, the coefficients and each generation's step count start there."""
        self.first_step = first_step
        step_linear = self.bundle.manifest["predictor"].get("ratio_form") == "step-linear"
        self.coefficients = pattern_coefficients(
            self.bundle.pattern, self.keep, step_position=step_linear, first_step=first_step
        )

    @property
    def input_device(self) -> torch.device:
        """Where :meth:`generate` keeps latents and scheduler state: the host for ONNX Runtime (it binds
        host inputs), the GPU for runners whose graphs read device tensors (aoti, TensorRT)."""
        return torch.device("cpu")

    def steps(
        self, batch: int, timesteps: Sequence[float] | None = None, *, text_tokens: int | None = None
    ) -> StepRunner:
        """A fresh generation of ``batch`` samples (CFG doubles the batch the transformer sees).

        ``timesteps``: the timestep input's value at each step, when known (the scheduler's), so the
        conditioning graph runs once for the whole generation. ``text_tokens``: the length of the
        text inputs (the bundle's own when not given); another length than the bundle's is refused
        where its text axis is fixed.
        """
        return self.step_runner(self, batch, timesteps, text_tokens=text_tokens)

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Run the bundle's decoder graph on final latents."""
        raise NotImplementedError

    def generate(
        self,
        class_labels: Sequence[int],
        *,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
    ) -> GenerationResult:
        """Sample images for ``class_labels`` as the exported pipeline would, from the bundle alone."""
        sampling = self.bundle.sampling
        if sampling.get("recipe") != "class-conditional":
            raise RfcacheError(
                f"{self.bundle.path}: a {sampling.get('recipe')!r} bundle holds the transformer's step graphs "
                "only; run them step by step with runner.steps(batch)"
            )
        steps = sampling["num_steps"]
        if num_inference_steps is not None and num_inference_steps != steps:
            raise BundleError(f"{self.bundle.path}: bundle is for {steps} steps, asked for {num_inference_steps}")
        labels = [int(c) for c in class_labels]
        bad = [c for c in labels if not 0 <= c < sampling["num_classes"]]
        if bad or not labels:
            raise RfcacheError(f"class label(s) {bad or labels} outside 0..{sampling['num_classes'] - 1}")
        scale = sampling["guidance_scale"] if guidance_scale is None else float(guidance_scale)
        use_cfg = scale > 1
        if use_cfg != (self.bundle.profile.sampling.guidance == "cfg"):
            raise BundleError(
                f"{self.bundle.path}: bundle is for guidance {self.bundle.profile.sampling.guidance!r}, "
                f"guidance_scale {scale} does not match"
            )
        from diffusers.utils.torch_utils import randn_tensor

        started = time.perf_counter()
        scheduler = _scheduler(sampling["scheduler"])
        channels, size = sampling["in_channels"], sampling["sample_size"]
        dev = self.input_device  # latents and the scheduler's state stay there: no host round trip per step
        noise = randn_tensor((len(labels), channels, size, size), generator=torch.Generator().manual_seed(seed))
        latents = noise.to(dev)  # drawn on the CPU so that every device starts from the same noise
        y = torch.tensor(labels + [sampling["null_class"]] * len(labels) if use_cfg else labels, device=dev)
        scheduler.set_timesteps(steps, device=dev)
        runner = self.steps(len(y), [int(t) for t in scheduler.timesteps])
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if use_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            timestep = torch.full((len(y),), int(t), dtype=torch.int64, device=dev)
            out = runner({"hidden_states": model_input, "timestep": timestep, "class_labels": y})
            eps = torch.as_tensor(out, device=dev)[:, :channels]  # a learned-sigma half is dropped, as DiTPipeline does
            if use_cfg:
                cond, uncond = eps.chunk(2)
                eps = uncond + scale * (cond - uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        images = latents.float().cpu().numpy()
        if "decoder" in self.bundle.graphs:
            images = self.decode_latents(images)
        images = np.clip(images.astype(np.float32) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
        return GenerationResult(images, runner.executed, time.perf_counter() - started, runner.fallbacks)


class StepRunner:
    """One generation: call it once per step, in order, with the transformer's inputs.

    Inputs are numpy arrays or torch tensors; the output is a numpy array (ONNX Runtime) or a torch
    tensor on the runner's device (aoti, TensorRT), which stays there.

    Runs the full graph at ``C`` steps and the cached graph at ``P`` steps (a per-unit bundle: the
    step's kind graph); a cached step whose output is not finite is run again in full and counted.
    Backends implement :meth:`run_graph` and :meth:`commit`.
    """

    def __init__(
        self,
        runner: BundleRunner,
        batch: int,
        timesteps: Sequence[float] | None = None,
        *,
        text_tokens: int | None = None,
    ) -> None:
        self.runner, self.batch = runner, batch
        bundle = runner.bundle
        self.sizes = {"batch": batch}  # what each symbolic axis of the manifest's shapes is in this generation
        text = bundle.text_axis
        if text is not None:
            tokens = text.tokens if text_tokens is None else text_tokens
            text.check(tokens, bundle.path, bundle.setup.get("text_tokens") or None)
            self.sizes["text"] = tokens
        graphs = bundle.graphs
        full = graphs[bundle.full_graph]
        self._shapes = {t.name: t.shape for t in full.inputs if not t.name.startswith(CONDITIONING_PREFIX)}
        state = [s["name"] for s in bundle.manifest["state"]]
        steps = ["full", "cached"] if bundle.kinds is None else [kind_graph(i) for i in range(len(bundle.kinds))]
        self.graph_io = {name: state_io(graphs[name], state) for name in steps}  # reads, writes per step graph
        self.step = self.first_step = runner.first_step  # a two-expert pipeline's second engine starts later
        self.last_full = -1
        units = len(bundle.kinds[0]) if bundle.kinds is not None else 0
        self._unit_last, self._unit_full = [-1] * units, [0] * units  # a per-unit bundle's own histories
        self.executed = ""
        self.fallbacks = 0
        self.conditioning_runs = 0  # how many times the conditioning graph ran (1 when shared)
        conditioning = runner.bundle.graphs.get("conditioning")
        self._condition_names = [t.name for t in conditioning.inputs] if conditioning is not None else []
        self._schedule = None if timesteps is None else [float(t) for t in timesteps]
        self._shared: dict[str, Any] | None = None  # every step's conditioning rows, (steps, batch, ...)
        self._first: dict[str, Any] = {}  # the condition inputs the shared rows were computed for

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        pattern = self.runner.bundle.pattern
        if self.step >= len(pattern):
            raise BundleError(
                f"{self.runner.bundle.path}: bundle is for {len(pattern)} steps; step {self.step + 1} was asked for"
            )
        for name, value in inputs.items():
            expected = self._shapes.get(name)
            if expected is None:
                raise BundleError(f"input {name!r} is not an input of this bundle's graphs")
            wanted = tuple(resolve_shape(expected, self.sizes))
            if tuple(value.shape) != wanted:
                raise BundleError(f"input {name!r} has shape {tuple(value.shape)}; this bundle runs {wanted}")
        if self._condition_names:
            inputs = {**inputs, **self._conditioning(inputs)}
        graph, constant, value = self._step_call(full=False)
        out = self.run_graph(graph, inputs, constant, value)
        if graph != self.runner.bundle.full_graph and not _all_finite(out):
            logger.warning("non-finite output at cached step %d; running it in full", self.step)
            self.fallbacks += 1
            graph, constant, value = self._step_call(full=True)
            out = self.run_graph(graph, inputs, constant, value)
        self.commit(graph)
        self._advance(graph)
        self.step += 1
        return out

    def _step_call(self, *, full: bool) -> tuple[str, str, Any]:
        """The graph this step runs (``full``: the one computing every unit), its constant input and value."""
        bundle, step = self.runner.bundle, self.step
        kinds, steps = bundle.kinds, bundle.step_kinds
        if kinds is None or steps is None:
            coeffs = self.runner.coefficients[step]
            if full or coeffs is None:
                return "full", DISTANCE, step - self.last_full if self.last_full >= 0 else 1
            return "cached", COEFFS, coeffs
        kind = 0 if full else steps[step]
        step_linear = bundle.manifest["predictor"].get("ratio_form") == "step-linear"
        position = ratio_position(step, len(bundle.pattern)) if step_linear else None
        value = unit_coefficients(kinds[kind], step, self._unit_last, self._unit_full, self.runner.keep, position)
        return kind_graph(kind), UNIT_COEFFS, value

    def _advance(self, graph: str) -> None:
        """The histories after ``graph`` ran: the step's letter, the computed units' latest computation."""
        bundle = self.runner.bundle
        full = graph == bundle.full_graph
        self.executed += "C" if full else "P"
        self.last_full = self.step if full else self.last_full
        if bundle.kinds is not None:
            kind = bundle.kinds[int(graph.removeprefix("kind"))]
            for u, letter in enumerate(kind):
                if letter == "C":
                    self._unit_last[u], self._unit_full[u] = self.step, self._unit_full[u] + 1

    def _conditioning(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """This step's ``c.*`` rows: from the generation's shared pass where it predicted this call."""
        timestep, *conditions = self._condition_names
        t = inputs[timestep]
        remaining = len(self.runner.bundle.pattern) - self.first_step
        if self.step == self.first_step and self._schedule is not None and len(self._schedule) == remaining:
            everything = np.asarray(self._schedule)[:, None].repeat(self.batch, axis=1)  # (steps, batch)
            self._first = {n: inputs[n] for n in conditions}
            self._shared = self._run_conditioning({timestep: everything, **self._first})
        if self._shared is not None and self._predicted(t, inputs, conditions):
            return {n: v[self.step - self.first_step] for n, v in self._shared.items()}
        rows = self._run_conditioning({timestep: t[None], **{n: inputs[n] for n in conditions}})
        return {n: v[0] for n, v in rows.items()}

    def _predicted(self, t: Any, inputs: dict[str, Any], conditions: list[str]) -> bool:
        assert self._schedule is not None
        if not bool((host_array(t) == self._schedule[self.step - self.first_step]).all()):
            return False
        return all(
            inputs[n] is self._first[n] or np.array_equal(host_array(inputs[n]), host_array(self._first[n]))
            for n in conditions
        )

    def _run_conditioning(self, inputs: dict[str, Any]) -> dict[str, Any]:
        self.conditioning_runs += 1
        return self.run_conditioning(inputs)

    def run_conditioning(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The conditioning graph: timesteps ``(steps, batch)`` and the condition inputs -> every ``c.*``
        output, ``(steps, batch, ...)``, indexable by step."""
        raise NotImplementedError

    def run_graph(self, graph: str, inputs: dict[str, Any], constant: str, value: Any) -> Any:
        """Step graph ``graph`` on the step's inputs and its ``constant`` (``distance``, ``coeffs`` or
        ``unit_coeffs``) ``value``: reads the current state (:attr:`graph_io`), keeps what it writes
        pending until :meth:`commit`; returns the model output."""
        raise NotImplementedError

    def commit(self, graph: str) -> None:
        """The state ``graph`` wrote in its last run becomes the current state (a no-op for none)."""
        raise NotImplementedError


def host_array(value: Any) -> np.ndarray:
    """A step input (numpy array or torch tensor, on any device) as a host array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _all_finite(out: Any) -> bool:
    """One reduction over the step's output (a host array, or a device tensor: one sync per step)."""
    if isinstance(out, torch.Tensor):
        return bool(torch.isfinite(out).all())
    return bool(np.isfinite(out).all())


def _scheduler(spec: dict[str, Any]) -> Any:
    """A diffusers scheduler from its class name and config (only scheduler classes are accepted)."""
    import diffusers

    cls = getattr(diffusers, str(spec.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise BundleError(f"sampling.scheduler.class {spec.get('class')!r} is not a diffusers scheduler")
    return cls.from_config(decode_config(spec["config"]))
