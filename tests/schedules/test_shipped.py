import pytest
import torch

import rfcache
from rfcache.schedules.masks import interval_for_nfc

SHIPPED = ["toy-b0.25", "toy-b0.4", "toy-b0.6"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_by_name_and_fit_the_toy_model(name):
    profile = rfcache.load_profile(name)
    assert profile.name == name and profile.budget.achieved <= profile.budget.target
    assert profile.sampling.num_steps == 50 and profile.model.family == "dit"
    pipe = rfcache.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    rfcache.enable(pipe, name)
    pipe(class_labels=[3], generator=torch.Generator().manual_seed(0))
    s = rfcache.summary(pipe)
    assert s.pattern == profile.schedule
    assert s.flops_fraction == pytest.approx(profile.budget.achieved, rel=1e-9)
    assert profile.to_yaml() == rfcache.load_profile(name).to_yaml()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_were_made_on_three_disjoint_input_sets(name):
    profile = rfcache.load_profile(name)
    inputs = profile.provenance.inputs
    assert [len(inputs[k]) for k in ("calibration", "selection", "test")] == [8, 4, 8]
    seeds = [item.seed for items in inputs.values() for item in items]
    assert len(set(seeds)) == len(seeds)
    q = profile.quality
    assert q["test_rel_l2_ci95_low"] <= q["test_rel_l2"] <= q["test_rel_l2_ci95_high"]
    assert q["ratio_to_taylorseer_ci95_low"] <= q["ratio_to_taylorseer"] <= q["ratio_to_taylorseer_ci95_high"]
    # TaylorSeer at the profile's NFC, placed as interval_for_nfc places it (DiT warm-up 2 where it can)
    _, warmup, nfc = interval_for_nfc(50, profile.nfc, warmup=2)
    assert q["taylorseer_warmup"] == warmup and q["taylorseer_nfc"] == nfc == profile.nfc
