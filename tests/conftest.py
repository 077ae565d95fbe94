from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One core per xdist worker (``-n 2`` on the 2-core CI machine): torch's own threads on top
    # would oversubscribe the cores; spawned ranks and CLI subprocesses inherit the variable.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
from diffusers import DDIMScheduler, DiTTransformer2DModel

from rfcache.models.tiny import FAMILIES
from rfcache.models.toy import DigitsDiTPipeline, toy_scheduler_config
from rfcache.schedules import Budget, Expert, MethodSpec, Profile, Provenance, SamplingSetup

FULL = os.environ.get("RFCACHE_TEST_FULL") == "1"


def full_only(what: str) -> pytest.MarkDecorator:
    """Skip unless ``RFCACHE_TEST_FULL=1``: costly cases whose code path a cheaper default test
    already takes (they would push CI on 2 cores past its 20 minutes); ``what`` says which test does."""
    return pytest.mark.skipif(not FULL, reason=f"{what}; left out for CI time: set RFCACHE_TEST_FULL=1")


def families_param(core: tuple[str, ...], covered_by: str) -> list:
    """``FAMILIES`` as parameters, those outside ``core`` only with ``RFCACHE_TEST_FULL=1``."""
    return [f if f in core else pytest.param(f, marks=full_only(f"{f}: {covered_by}")) for f in FAMILIES]


def make_tiny_digits_pipeline(seed: int = 0) -> DigitsDiTPipeline:
    """The toy pipeline's structure with a tiny random transformer: fast enough for every test."""
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=1,
        out_channels=1,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    ).eval()
    # random adaLN weights so that every block really depends on the timestep and class
    pipe = DigitsDiTPipeline(transformer=transformer, scheduler=DDIMScheduler(**toy_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipe() -> DigitsDiTPipeline:
    return make_tiny_digits_pipeline()


def generate(pipe, *, steps: int = 12, labels=(1, 7), guidance: float = 2.0, seed: int = 0) -> torch.Tensor:
    out = pipe(
        class_labels=list(labels),
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    )
    return out.images


def make_profile(
    pipe,
    schedule: str,
    *,
    predictor: str = "relational",
    order: int = 2,
    ratios: tuple[float, ...] = (),
    **sampling,
) -> Profile:
    """A hand-made profile for ``pipe`` or a bare transformer (defaults: the tiny digits pipeline's
    DDIM, CFG and 1x8x8 inputs; ``sampling`` overrides them)."""
    from rfcache.models import get_adapter, get_transformer
    from rfcache.runtime.identity import model_identity

    setup = {
        "scheduler": "DDIMScheduler",
        "num_steps": len(schedule),
        "guidance": "cfg",
        "resolution": (1, 8, 8),
        **sampling,
    }
    return Profile(
        name="tiny",
        model=model_identity(get_transformer(pipe), get_adapter(get_transformer(pipe))),
        sampling=SamplingSetup(**setup),
        method=MethodSpec(predictor, order, "interval", {"calibrated": 1.0} if ratios else {}),
        schedule=schedule,
        budget=Budget(0.5, 0.4),
        provenance=Provenance("x", 0, 1, "now"),
        ratios=ratios,
    )


def make_expert_profile(pipe, schedule: str, *, ratios: tuple[tuple[float, ...], ...] = (), **sampling) -> Profile:
    """A hand-made two-expert profile for a two-expert Wan ``pipe`` (its boundary at ``len(schedule)`` steps)."""
    import dataclasses

    from rfcache.models import get_adapter
    from rfcache.runtime.experts import boundary_step, expert_models
    from rfcache.runtime.identity import model_identity

    num_steps = len(schedule)
    first = boundary_step(pipe, num_steps)
    setup = {"scheduler": type(pipe.scheduler).__name__, "guidance": "cfg", "resolution": (), **sampling}
    experts = tuple(
        Expert(
            component=name,
            model=model_identity(model, get_adapter(model)),
            steps=steps,
            ratios=ratios[i] if ratios else (),
        )
        for i, ((name, model), steps) in enumerate(
            zip(expert_models(pipe), [(0, first), (first, num_steps)], strict=True)
        )
    )
    base = make_profile(pipe, schedule, **setup)
    return dataclasses.replace(
        base,
        model=experts[0].model,
        sampling=dataclasses.replace(base.sampling, boundary_step=first),
        method=MethodSpec("relational", 2, "interval", {"calibrated": 1.0} if ratios else {}),
        experts=experts,
    )
