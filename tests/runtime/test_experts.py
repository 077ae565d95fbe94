"""Two-expert pipelines (Wan 2.2): one profile, a schedule per expert, sessions counting global steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import rfcache
from rfcache.errors import RfcacheError
from rfcache.models.tiny import build_tiny_pipeline, tiny_pipeline_call_kwargs
from rfcache.runtime.experts import boundary_step, check_both_experts_run, expert_models
from rfcache.runtime.runspec import RunSpec
from rfcache.schedules import Profile, ProfileError
from tests.conftest import make_expert_profile, make_profile

STEPS = 6  # the tiny two-expert Wan switches at step 2 of 6
UNITS = 6  # its cacheable units per expert (attention, cross-attention, feed-forward of 2 blocks)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline("wan", experts=2)


def _frames(pipe, seed: int = 0) -> np.ndarray:
    kwargs = {**tiny_pipeline_call_kwargs("wan"), "num_inference_steps": STEPS, "output_type": "np"}
    return np.asarray(pipe(**kwargs, generator=torch.Generator().manual_seed(seed)).frames)


def test_boundary_step_follows_the_pipelines_switch(pipe):
    assert [name for name, _ in expert_models(pipe)] == ["transformer", "transformer_2"]
    assert boundary_step(pipe, STEPS) == 2
    assert boundary_step(pipe, 10) == 3  # timesteps >= 875 of 1000 at shift 3: 1000, 960, 913
    assert boundary_step(build_tiny_pipeline("wan"), STEPS) is None
    assert boundary_step(pipe, 1) == 1  # 1000 only: the first expert runs every step
    with pytest.raises(RfcacheError, match="at 1 steps one expert runs every step"):
        check_both_experts_run(pipe, 1)


def test_all_compute_two_expert_profile_is_bit_exact(pipe):
    reference = _frames(pipe)
    rfcache.enable(pipe, make_expert_profile(pipe, "C" * STEPS), share_conditioning=False)
    try:
        out = _frames(pipe)
        s = rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)
    assert np.array_equal(out, reference)
    assert s.pattern == "C" * STEPS and s.num_calls == 2 * STEPS  # CFG: two calls per step, over both experts
    assert np.array_equal(_frames(pipe), reference)  # disable restored both transformers


def test_each_expert_replays_its_own_steps_from_the_boundary(pipe):
    profile = make_expert_profile(pipe, "CCCCPP", ratios=((1.0,) * UNITS, (0.5,) * UNITS))
    session = rfcache.enable(pipe, profile)
    try:
        _frames(pipe)
        second = pipe.transformer_2._rfcache_session
        assert (session.first_step, second.first_step) == (0, 2)
        assert session.summary().pattern == "CC" and second.summary().pattern == "CCPP"
        assert rfcache.summary(pipe).pattern == "CCCCPP"
        assert second.config.ratios == (0.5,) * UNITS and session.config.ratios == (1.0,) * UNITS
        _frames(pipe, seed=1)  # the next generation starts each expert afresh
        assert rfcache.summary(pipe).pattern == "CCCCPP"
    finally:
        rfcache.disable(pipe)


def test_second_expert_started_elsewhere_than_the_profiles_boundary_is_refused(pipe):
    profile = make_expert_profile(pipe, "C" * STEPS)
    first = profile.experts[0]
    moved = dataclasses.replace(
        profile,
        sampling=dataclasses.replace(profile.sampling, boundary_step=3),
        experts=(dataclasses.replace(first, steps=(0, 3)), dataclasses.replace(profile.experts[1], steps=(3, STEPS))),
    )
    rfcache.enable(pipe, moved)
    try:
        with pytest.raises(RfcacheError, match="starts at step 4, but it was first called at step 3"):
            _frames(pipe)
    finally:
        rfcache.disable(pipe)


def test_methods_run_on_both_experts_each_from_its_first_step(pipe):
    rfcache.enable(pipe, method="taylorseer", interval=3, order=1)
    try:
        _frames(pipe)
        patterns = [m._rfcache_session.summary().pattern for _, m in expert_models(pipe)]
    finally:
        rfcache.disable(pipe)
    assert patterns[0][0] == "C" and patterns[1][0] == "C"  # no history crosses the switch
    assert "P" in patterns[1]


def test_one_transformer_profile_and_two_expert_profile_are_refused_on_the_other(pipe):
    single = make_profile(pipe, "C" * STEPS, scheduler=type(pipe.scheduler).__name__, resolution=())
    with pytest.raises(ProfileError, match="is for one transformer; this WanPipeline has two experts"):
        rfcache.enable(pipe, single)
    one = build_tiny_pipeline("wan")
    with pytest.raises(ProfileError, match=r"two experts \(transformer, transformer_2\); this WanPipeline has one"):
        rfcache.enable(one, make_expert_profile(pipe, "C" * STEPS))
    assert not hasattr(pipe.transformer, "_rfcache_session") and not hasattr(one.transformer, "_rfcache_session")


def test_run_setup_records_and_checks_the_boundary(pipe):
    profile = make_expert_profile(pipe, "C" * 8)
    with pytest.raises(ProfileError, match="sampling.num_steps=8, got 6"):
        profile.check_setup(rfcache.runtime.runspec.run_setup(pipe, RunSpec(steps=STEPS)))
    setup = rfcache.runtime.runspec.run_setup(pipe, RunSpec(steps=8))
    assert setup.boundary_step == profile.sampling.boundary_step == 3  # 1000, 948, 883 >= 875
    with pytest.raises(ProfileError, match="two experts switching at step 3.*this pipeline has one transformer"):
        profile.check_setup(dataclasses.replace(setup, boundary_step=None))


def test_two_expert_profile_round_trips_and_single_profiles_are_unchanged(pipe, tmp_path):
    profile = make_expert_profile(pipe, "CCCCPC", ratios=((1.0, 2.0, 0.5, 0.25, 3.0, 1.5), (0.125,) * UNITS))
    text = profile.to_yaml()
    assert Profile.from_yaml(text) == profile and Profile.from_yaml(text).to_yaml() == text
    assert "experts:" in text and "boundary_step: 2" in text
    assert profile.for_expert(1).ratios == (0.125,) * UNITS and profile.for_expert(1).experts is None
    single = make_profile(pipe, "CCCCPC").to_yaml()
    assert "experts" not in single and "boundary_step" not in single


def _broken(profile: Profile, **changes) -> dict:
    data = profile.to_dict()
    for path, value in changes.items():
        node = data
        *parents, last = path.split("/")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"experts/1/steps": [3, 6]}, r"experts\[1\]\.steps must be \[2, 6\]"),
        ({"schedule": "CCPCCC"}, "step 2, expert transformer_2's first step, must be C"),
        ({"experts/1/component": "transformer"}, "a component repeats"),
        ({"sampling/boundary_step": None}, "needs sampling.boundary_step and two experts"),
        ({"ratios": [1.0] * UNITS}, "belong in each expert"),
        ({"experts/1/ratios": [1.0]}, r"experts\[1\]: ratios has 1 entries, model.num_units is 6"),
        ({"experts/0/model/config_hash": "other"}, "model must be experts\\[0\\].model"),
        ({"experts/0/stepz": [0, 2]}, r"unknown key\(s\) stepz in experts\[0\]"),
    ],
)
def test_bad_experts_section_is_one_line(pipe, changes, message):
    profile = make_expert_profile(pipe, "CCCCPP", ratios=((1.0,) * UNITS, (1.0,) * UNITS))
    data = _broken(profile, **changes)
    with pytest.raises(ProfileError, match=message) as info:
        Profile.from_dict(data, source="p.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("p.yaml: ")


def test_a_second_expert_running_one_step_starts_each_generation_afresh():
    """Its first call of a generation has the timestep of its last call of the one before; the
    scheduler's new timesteps, not the timestep, tell the generations apart."""
    pipe = build_tiny_pipeline("wan", experts=2)
    pipe.scheduler.set_timesteps(STEPS)
    *_, before, last = (float(t) for t in pipe.scheduler.timesteps)
    pipe.register_to_config(boundary_ratio=(last + before) / 2 / pipe.scheduler.config.num_train_timesteps)
    assert boundary_step(pipe, STEPS) == STEPS - 1
    rfcache.enable(pipe, method="fora", interval=2)
    try:
        first = _frames(pipe)
        summaries = [rfcache.summary(pipe)]
        second = _frames(pipe)
        summaries.append(rfcache.summary(pipe))
    finally:
        rfcache.disable(pipe)
    assert np.array_equal(first, second)
    assert [len(s.patterns) for s in summaries] == [2, 2]  # the two CFG branches, not four
    assert [s.num_calls for s in summaries] == [2 * STEPS] * 2
