"""Per-unit profiles: one C/P row per unit or group, strictly validated, lossless in YAML."""

import dataclasses

import pytest
import yaml

from rfcache.schedules import Expert, Profile, ProfileError, load_profile
from tests.schedules.test_profile import make_profile

# make_profile: 4 units, 6 steps, the relational predictor (two full steps before any prediction)
ROWS = {"b.0.attn1": "CCPPCP", "b.0.ff": "CCCPCP", "late": "CCPCCC"}
GROUPS = {"late": ("b.1.attn1", "b.1.ff")}
COSTS = {"b.0.attn1": 3.0, "b.0.ff": 1.0, "b.1.attn1": 3.0, "b.1.ff": 1.0}
PATHS = ["b.0.attn1", "b.0.ff", "b.1.attn1", "b.1.ff"]


def make_per_unit(**overrides) -> Profile:
    fields = {"schedule": "CCPPCP", "unit_schedules": ROWS, "unit_groups": GROUPS, "unit_costs": COSTS}
    return make_profile(**{**fields, **overrides})


def test_per_unit_yaml_round_trips_and_reads_in_a_diff(tmp_path):
    p = make_per_unit()
    path = p.save(tmp_path / "p.yaml")
    text = path.read_text()
    assert "schedule: CCPPCP\nunit_schedules:\n  b.0.attn1: CCPPCP\n  b.0.ff: CCCPCP\n  late: CCPCCC\n" in text
    assert "unit_groups:\n  late: [b.1.attn1, b.1.ff]\n" in text
    loaded = load_profile(path)
    assert loaded == p and loaded.to_yaml() == text and loaded.per_unit
    assert loaded.unit_rows() == {"b.0.attn1": "CCPPCP", "b.0.ff": "CCCPCP", "b.1.attn1": "CCPCCC", "b.1.ff": "CCPCCC"}
    # FLOPs from per-unit costs: (3*3 + 4*1 + 5*3 + 5*1) / (8 * 6)
    assert loaded.computed_fraction() == pytest.approx(33 / 48)
    assert dataclasses.replace(loaded, unit_costs=None).computed_fraction() == pytest.approx(17 / 24)
    assert loaded.unit_masks(PATHS)[1] == (True, True, True, False, True, False)


def test_one_mask_profiles_are_unchanged():
    p = make_profile()
    assert not p.per_unit and "unit_" not in p.to_yaml() and p.unit_rows() == {}
    assert p.unit_masks(PATHS) == (p.mask,) * 4 and p.computed_fraction() == 0.5
    for name in ("toy-b0.25", "toy-b0.4", "toy-b0.6"):
        shipped = load_profile(name)
        assert not shipped.per_unit and Profile.from_yaml(shipped.to_yaml()) == shipped


def test_unit_names_must_match_the_model():
    p = make_per_unit()
    with pytest.raises(ProfileError, match="names 'b.1.ff', not a unit of this model"):
        p.unit_masks(["b.0.attn1", "b.0.ff", "b.1.attn1", "b.1.mlp"])
    with pytest.raises(ProfileError, match="lacks unit 'b.2.ff'"):
        p.unit_masks([*PATHS, "b.2.ff"])


def _set(data, path, value):
    *parents, last = path
    for key in parents:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    "edit,message",
    [
        ((("unit_schedules", "b.0.ff"), "CCCPC"), "unit_schedules.b.0.ff has 5 steps, sampling.num_steps is 6"),
        ((("unit_schedules", "b.0.ff"), "CCXPCP"), "unit_schedules.b.0.ff must be a string of C and P"),
        ((("unit_schedules", "b.0.ff"), "PCCPCP"), "unit_schedules.b.0.ff: step 0, the first step"),
        ((("unit_schedules", "b.0.ff"), "CPCPCP"), "step 1 is P before the relational predictor's 2 full steps"),
        ((("unit_schedules", "b.0.ff"), 7), "unit_schedules.b.0.ff must be a string"),
        ((("unit_schedules", "b.1.ff"), "CCPCCC"), "unit 'b.1.ff' is named twice"),
        ((("unit_schedules", "b.0.ff"), _DELETE), "unit_schedules names 3 units, model.num_units is 4"),
        ((("unit_schedules", "extra"), "CCCCCC"), "unit_schedules names 5 units"),
        ((("unit_groups", "spare"), ["b.2.ff"]), "unit_groups.spare has no row in unit_schedules"),
        ((("unit_groups", "late"), []), "unit_groups.late must name at least one unit"),
        ((("unit_groups", "late"), "b.1.ff"), "unit_groups.late must be a list"),
        ((("unit_costs", "b.0.ff"), 0.0), "unit_costs.b.0.ff must be > 0"),
        ((("unit_costs", "b.0.ff"), _DELETE), "unit_costs lacks 'b.0.ff'"),
        ((("unit_costs", "b.9.ff"), 1.0), "unit_costs names 'b.9.ff', not a unit"),
        ((("unit_costs", "b.0.ff"), float("inf")), "unit_costs.b.0.ff must be finite"),
        ((("schedule",), "CCCPCP"), r"schedule must be the steps every unit computes \(CCPPCP\)"),
        ((("unit_schedules",), {}), "unit_groups and unit_costs need unit_schedules"),
        ((("unit_schedules",), ["CCPPCP"]), "unit_schedules must be a mapping"),
        ((("unit_typo",), {}), "unknown key"),
    ],
)
def test_bad_per_unit_profiles_are_refused_in_one_line(tmp_path, edit, message):
    data = make_per_unit().to_dict()
    _set(data, *edit)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_two_expert_rows_compute_each_experts_first_step():
    rows = {"b.0.attn1": "CCPPCC", "b.0.ff": "CCCPCC", "b.1.attn1": "CCPCCC", "b.1.ff": "CCPPCC"}
    p = make_per_unit(schedule="CCPPCC", unit_schedules=rows, unit_groups=None, unit_costs=None)
    experts = (Expert("transformer", p.model, (0, 4)), Expert("transformer_2", p.model, (4, 6)))
    sampling = dataclasses.replace(p.sampling, boundary_step=4)
    two = dataclasses.replace(p, unit_schedules=rows, experts=experts, sampling=sampling, ratios=())
    assert two.for_expert(1).unit_rows() == rows
    with pytest.raises(ProfileError, match="unit_schedules.b.1.ff: step 4, the first step of its transformer"):
        dataclasses.replace(two, unit_schedules={**rows, "b.1.ff": "CCPPPC"})
    with pytest.raises(ProfileError, match="unit_schedules.b.1.ff: step 5 is P before"):
        dataclasses.replace(two, unit_schedules={**rows, "b.1.ff": "CCPPCP"})
