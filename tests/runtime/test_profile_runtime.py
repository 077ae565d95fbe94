import dataclasses

import pytest
import torch

import rfcache
from rfcache.runtime.api import get_session
from rfcache.schedules import MethodSpec, Profile, ProfileError
from tests.conftest import generate, make_profile

STEPS = 12


def _profile(pipe, schedule="CCCPPCPPCPPC", **sampling) -> Profile:
    return make_profile(pipe, schedule, **{"num_steps": STEPS, **sampling})


def test_profile_replays_its_static_schedule(tiny_pipe, tmp_path):
    profile = _profile(tiny_pipe)
    path = profile.save(tmp_path / "tiny.yaml")
    rfcache.enable(tiny_pipe, path)
    generate(tiny_pipe, steps=STEPS)
    s = rfcache.summary(tiny_pipe)
    assert s.pattern == profile.schedule and s.method == "static"


def test_all_compute_profile_is_bit_identical(tiny_pipe):
    reference = generate(tiny_pipe, steps=STEPS)
    rfcache.enable(tiny_pipe, _profile(tiny_pipe, schedule="C" * STEPS), share_conditioning=False)
    assert torch.equal(generate(tiny_pipe, steps=STEPS), reference)
    rfcache.disable(tiny_pipe)
    # shared conditioning (the default) differs only by the rounding of batched matmuls
    rfcache.enable(tiny_pipe, _profile(tiny_pipe, schedule="C" * STEPS))
    torch.testing.assert_close(generate(tiny_pipe, steps=STEPS), reference, rtol=0, atol=1e-4)
    assert rfcache.summary(tiny_pipe).shared_conditioning_calls == STEPS


def test_calibrated_ratios_replace_the_runtime_ratio(tiny_pipe):
    base = _profile(tiny_pipe)
    units = base.model.num_units
    outputs = []
    for ratios in ((), (0.0,) * units):
        method = MethodSpec("relational", 2, "interval", {"calibrated": 1.0})
        rfcache.enable(tiny_pipe, Profile(**{**base.__dict__, "ratios": ratios, "method": method}))
        outputs.append(generate(tiny_pipe, steps=STEPS))
        rfcache.disable(tiny_pipe)
    assert not torch.equal(outputs[0], outputs[1])  # s = 0 makes RFE reuse the cache instead


def test_mismatched_profiles_are_refused(tiny_pipe):
    wrong_model = _profile(tiny_pipe)
    wrong_model = Profile(
        **{
            **wrong_model.__dict__,
            "model": wrong_model.model.__class__(**{**wrong_model.model.__dict__, "num_units": 99}),
        }
    )
    with pytest.raises(ProfileError, match="model.num_units=99"):
        rfcache.enable(tiny_pipe, wrong_model)
    with pytest.raises(ProfileError, match="sampling.scheduler='EulerDiscreteScheduler'"):
        rfcache.enable(tiny_pipe, _profile(tiny_pipe, scheduler="EulerDiscreteScheduler"))
    rfcache.enable(tiny_pipe, _profile(tiny_pipe))
    with pytest.raises(ProfileError, match="sampling.num_steps=12, got 20"):
        generate(tiny_pipe, steps=20)
    rfcache.disable(tiny_pipe)
    rfcache.enable(tiny_pipe, _profile(tiny_pipe, resolution=(1, 16, 16)))
    with pytest.raises(ProfileError, match="sampling.resolution"):
        generate(tiny_pipe, steps=STEPS)


def test_step_linear_ratios_are_applied_per_step_as_written(tiny_pipe, monkeypatch):
    """The ratio each cached unit call receives is ``a + b (step / (S - 1) - 1/2)``, worked out by hand."""
    import rfcache.runtime.session as session_module

    units = _profile(tiny_pipe).model.num_units
    a = tuple(0.5 + 0.1 * u for u in range(units))
    b = tuple((-1) ** u * 0.4 for u in range(units))
    profile = dataclasses.replace(
        make_profile(tiny_pipe, "CCCPPCPPCPPC", ratios=a), ratio_form="step-linear", ratio_slopes=b
    )
    seen: list[tuple[int, float]] = []
    forecast = session_module.stacked_relational_forecast

    def spy(diffs, values, pairs, grams, ratio, x, input_at_full, **kwargs):
        seen.append((session._step, ratio.tolist()))
        return forecast(diffs, values, pairs, grams, ratio, x, input_at_full, **kwargs)

    monkeypatch.setattr(session_module, "stacked_relational_forecast", spy)
    rfcache.enable(tiny_pipe, profile)
    session = get_session(tiny_pipe)
    out = generate(tiny_pipe, steps=STEPS)
    cached_steps = [i for i, c in enumerate(profile.schedule) if c == "P"]
    assert [step for step, _ in seen] == [s for s in cached_steps for _ in range(units)]
    for i, (step, ratio) in enumerate(seen):
        u = i % units
        expected = a[u] + b[u] * (step / (STEPS - 1) - 0.5)
        assert ratio == pytest.approx([expected] * len(ratio), rel=1e-6)
    rfcache.disable(tiny_pipe)
    rfcache.enable(tiny_pipe, make_profile(tiny_pipe, "CCCPPCPPCPPC", ratios=a))
    assert not torch.equal(generate(tiny_pipe, steps=STEPS), out)  # the slopes change the result


def test_a_profile_and_a_method_or_schedule_parameter_contradict(tiny_pipe):
    profile = _profile(tiny_pipe, schedule="C" * STEPS)
    for params in ({"method": "fora"}, {"interval": 7}, {"method": "fora", "interval": 7}, {"tau": 0.1}):
        with pytest.raises(rfcache.RfcacheError, match="a profile fixes the method and its schedule"):
            rfcache.enable(tiny_pipe, profile, **params)
    rfcache.enable(tiny_pipe, profile, share_conditioning=False)  # not a schedule parameter
    rfcache.disable(tiny_pipe)
