import pytest
import torch

import rfcache

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
