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


FLUX_SHIPPED = ["toy-flux-b0.25", "toy-flux-b0.4", "toy-flux-b0.6"]


@pytest.fixture(scope="module")
def toy_flux():
    pipe = rfcache.load_pipeline("toy-flux")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", FLUX_SHIPPED)
def test_shipped_toy_flux_profiles_load_by_name_and_match_the_toy_flux_model(name, toy_flux):
    from rfcache.models import get_adapter, get_transformer
    from rfcache.runtime.identity import model_identity

    profile = rfcache.load_profile(name)
    assert profile.name == name and profile.budget.achieved <= profile.budget.target
    assert profile.budget.target == float(name.removeprefix("toy-flux-b"))
    assert profile.model.family == "flux" and profile.model.class_name == "FluxTransformer2DModel"
    assert profile.sampling.num_steps == 50 and profile.sampling.scheduler == "FlowMatchEulerDiscreteScheduler"
    transformer = get_transformer(toy_flux)
    profile.check_model(model_identity(transformer, get_adapter(transformer), profile.model.granularity))
    assert profile.to_yaml() == rfcache.load_profile(name).to_yaml()


def test_a_shipped_toy_flux_profile_runs_its_schedule(toy_flux):
    profile = rfcache.load_profile("toy-flux-b0.4")
    rfcache.enable(toy_flux, "toy-flux-b0.4")
    try:
        toy_flux(prompt="a handwritten 3", num_inference_steps=50, generator=torch.Generator().manual_seed(0))
        s = rfcache.summary(toy_flux)
    finally:
        rfcache.disable(toy_flux)
    assert s.pattern == profile.schedule
    assert s.flops_fraction == pytest.approx(profile.budget.achieved, rel=1e-9)


@pytest.mark.parametrize("name", FLUX_SHIPPED)
def test_shipped_toy_flux_profiles_were_made_on_its_digit_prompts_kept_apart(name):
    from rfcache.models.toy_flux import CALIBRATION_TEMPLATES, digit_prompt

    template = {digit_prompt(d, t): t for t in range(10) for d in range(10)}
    profile = rfcache.load_profile(name)
    inputs = profile.provenance.inputs
    assert [len(inputs[k]) for k in ("calibration", "selection", "test")] == [8, 4, 8]
    items = [item for items in inputs.values() for item in items]
    assert len({i.seed for i in items}) == len({i.prompt for i in items}) == len(items)
    chosen = {template[i.prompt] for i in (*inputs["calibration"], *inputs["selection"])}
    assert chosen <= set(CALIBRATION_TEMPLATES)
    assert not {template[i.prompt] for i in inputs["test"]} & chosen  # test templates no choice saw
    q = profile.quality
    assert q["test_rel_l2_ci95_low"] <= q["test_rel_l2"] <= q["test_rel_l2_ci95_high"]
    assert q["ratio_to_taylorseer_ci95_low"] <= q["ratio_to_taylorseer"] <= q["ratio_to_taylorseer_ci95_high"]
    # TaylorSeer at the interval schedule nearest the profile's NFC, placed as its FLUX code places it
    # (warm-up 3 where it can; not every NFC has an interval schedule)
    _, warmup, nfc = interval_for_nfc(50, profile.nfc, warmup=3)
    assert q["taylorseer_warmup"] == warmup and q["taylorseer_nfc"] == nfc and abs(nfc - profile.nfc) <= 1
