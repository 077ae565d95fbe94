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
