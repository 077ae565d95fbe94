import dataclasses

import pytest
import yaml

from rfcache.schedules import (
    Budget,
    MethodSpec,
    ModelIdentity,
    Profile,
    ProfileError,
    Provenance,
    SamplingSetup,
    load_profile,
)


def make_profile(**overrides) -> Profile:
    fields = {
        "name": "toy-test",
        "model": ModelIdentity("dit", "DiTTransformer2DModel", "abc123", 4),
        "sampling": SamplingSetup("DDIMScheduler", 6, "cfg", (8, 8)),
        "method": MethodSpec("relational", 2, "interval", {"interval": 3.0, "warmup": 2.0}),
        "schedule": "CCPPCP",
        "budget": Budget(0.4, 0.3712345678901234),
        "provenance": Provenance("deadbeef", 0, 10, "2026-11-24T00:00:00Z", {"rfcache": "0.1"}),
        "ratios": (0.1, 0.2, 1e-7, 3.0),
        "quality": {"heldout_rel_l2": 0.0123},
    }
    return Profile(**{**fields, **overrides})


def test_yaml_round_trip_is_lossless_and_canonical(tmp_path):
    p = make_profile()
    path = p.save(tmp_path / "p.yaml")
    text = path.read_text()
    assert text.startswith("schema_version: 1\nname: toy-test\n")
    assert "0.3712345678901234" in text and "schedule: CCPPCP" in text
    loaded = load_profile(path)
    assert loaded == p
    assert loaded.to_yaml() == text
    assert loaded.mask == (True, True, False, False, True, False) and loaded.nfc == 3
    assert [f.name for f in tmp_path.iterdir()] == ["p.yaml"]  # no temporary left behind


def _mutated(tmp_path, mutate):
    data = make_profile().to_dict()
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.update(schema_version=99), "schema_version must be 1"),
        (lambda d: d.pop("schedule"), "missing key schedule"),
        (lambda d: d.update(extra=1), "unknown key"),
        (lambda d: d["model"].update(num_units="four"), "model.num_units must be an integer"),
        (lambda d: d.update(schedule="CCPP"), "schedule has 4 steps"),
        (lambda d: d.update(schedule="CCXPCP"), "schedule must be"),
        (lambda d: d.update(ratios=[0.1]), "ratios has 1 entries"),
        (lambda d: d["budget"].update(target=1.5), r"budget.target must be in \(0, 1\]"),
        (lambda d: d["budget"].update(achieved=float("nan")), "budget.achieved must be finite"),
        (lambda d: d["sampling"].update(resolution="8x8"), "sampling.resolution must be a list"),
    ],
)
def test_bad_profiles_are_refused_with_the_file_and_field(tmp_path, mutate, message):
    path = _mutated(tmp_path, mutate)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_yaml_tags_that_construct_objects_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(path)


def test_truncated_and_missing_files(tmp_path):
    text = make_profile().to_yaml()
    path = tmp_path / "cut.yaml"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ProfileError):
        load_profile(path)
    with pytest.raises(ProfileError, match="no profile file or shipped profile"):
        load_profile("no-such-profile")


def test_mismatch_is_named():
    p = make_profile()
    with pytest.raises(ProfileError, match=r"model\.config_hash"):
        p.check_model(ModelIdentity("dit", "DiTTransformer2DModel", "other", 4))
    with pytest.raises(ProfileError, match=r"sampling\.num_steps=6, got 50"):
        p.check_sampling(scheduler="DDIMScheduler", num_steps=50, resolution=(8, 8))
    p.check_sampling(scheduler="DDIMScheduler", num_steps=6, resolution=(8, 8))


def test_provenance_inputs_round_trip_and_old_profiles_load(tmp_path):
    from rfcache.schedules import InputItem

    profile = make_profile()
    assert (
        Profile.from_yaml(profile.to_yaml().replace("  inputs: {}\n", "")).provenance.inputs == {}
    )  # profiles without the field still load
    inputs = {
        "calibration": (InputItem(seed=0, label=3), InputItem(seed=1, label=4)),
        "selection": (InputItem(seed=2, prompt="a cat"),),
        "test": (InputItem(seed=3, label=5),),
    }
    with_inputs = dataclasses.replace(profile, provenance=dataclasses.replace(profile.provenance, inputs=inputs))
    text = with_inputs.to_yaml()
    assert "- seed: 2\n      prompt: a cat" in text and "label: null" not in text and "prompt: null" not in text
    assert Profile.from_yaml(text) == with_inputs
    bad = dataclasses.replace(with_inputs.provenance, inputs={**inputs, "test": (InputItem(seed=0, label=1),)})
    with pytest.raises(ProfileError, match="a seed repeats"):
        dataclasses.replace(with_inputs, provenance=bad)
    with pytest.raises(ProfileError, match="exactly one of prompt and label"):
        InputItem(seed=1)


def test_step_linear_ratios_round_trip_and_give_the_ratio_per_step(tmp_path):
    p = make_profile(ratio_form="step-linear", ratio_slopes=(0.2, -0.1, 0.0, 6.0))
    loaded = load_profile(p.save(tmp_path / "p.yaml"))
    assert loaded == p and loaded.to_yaml() == p.to_yaml()
    assert "ratio_form: step-linear\n" in p.to_yaml()
    # 6 steps: position step/5 - 1/2, so -0.5 at the first step and +0.5 at the last
    assert loaded.step_ratios(0) == pytest.approx((0.0, 0.25, 1e-7, 0.0))
    assert loaded.step_ratios(5) == pytest.approx((0.2, 0.15, 1e-7, 6.0))
    assert make_profile().step_ratios(3) == make_profile().ratios  # constant: the same at every step
    assert "ratio_form: constant\n" in make_profile().to_yaml()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"ratio_form": "quadratic"}, "ratio_form must be one of constant, step-linear"),
        ({"ratio_slopes": (0.0, 0.0, 0.0, 0.0)}, "ratio_slopes must be empty when ratio_form is constant"),
        ({"ratio_form": "step-linear"}, "one ratio_slopes entry per ratio, got 0 slopes for 4 ratios"),
        ({"ratio_form": "step-linear", "ratio_slopes": (0.0, 0.5, 0.0, 0.0)}, "ratio_slopes[1]: the step-linear"),
    ],
)
def test_bad_ratio_forms_are_refused_on_load(tmp_path, overrides, message):
    data = make_profile().to_dict()
    data.update({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_yaml_is_read_strictly_where_it_would_be_misread(tmp_path, monkeypatch):
    import stat

    import rfcache.schedules.profile as profile_module
    from rfcache.outputs import file_mode

    path = make_profile().save(tmp_path / "p.yaml")
    assert stat.S_IMODE(path.stat().st_mode) == file_mode()  # the umask's, not mkstemp's 0600
    text = path.read_text()
    # a number without a dot or a signed exponent is still a number (YAML 1.1 would read a string)
    big = tmp_path / "big.yaml"
    big.write_text(
        text.replace("target: 0.4", "target: 1.0e-1").replace("guidance_scale: 0.0", "guidance_scale: 1e300")
    )
    loaded = load_profile(big)
    assert loaded.budget.target == 0.1 and loaded.sampling.guidance_scale == 1e300
    # a key given twice is refused, not silently the last one
    twice = tmp_path / "twice.yaml"
    twice.write_text(text.replace("schedule: CCPPCP", "schedule: CCPPCP\nschedule: CPPPPP"))
    with pytest.raises(ProfileError, match=r"twice\.yaml: line \d+: key 'schedule' appears twice"):
        load_profile(twice)
    # a schedule starting with P: refused (a run would compute its first step anyway)
    with pytest.raises(ProfileError, match="schedule must start with C"):
        make_profile(schedule="PCPPCP")
    # RFE's second step predicted before it has two full steps: refused, as the runtime would compute it
    with pytest.raises(ProfileError, match="schedule: step 1 is P before the relational predictor's 2 full steps"):
        make_profile(schedule="CPCPCP")
    assert make_profile(schedule="CPCPCP", method=MethodSpec("taylor", 2, "interval", {})).schedule == "CPCPCP"
    # not a regular file, or too large: refused without reading it all
    with pytest.raises(ProfileError, match="not a regular file"):
        load_profile(tmp_path)
    monkeypatch.setattr(profile_module, "MAX_PROFILE_BYTES", 100)
    with pytest.raises(ProfileError, match="larger than 100 bytes; not a profile"):
        load_profile(path)
