import json

import numpy as np
import pytest
import torch

import rfcache
from rfcache.calibrate import StudyMismatchError, Trace, calibrate, fit_ratio_steps, fit_ratios, record_trace
from rfcache.calibrate.search import uniform_seeds
from rfcache.cli.main import main
from rfcache.schedules import load_profile
from rfcache.schedules.masks import interval_mask, warped_mask
from tests.calibrate.conftest import TINY_RUN
from tests.conftest import make_tiny_digits_pipeline

STEPS = 10


def test_trace_records_every_step_unit_and_lag(tiny_pipe, tmp_path):
    kwargs = {"class_labels": [1, 2], "num_inference_steps": STEPS, "guidance_scale": 2.0, "output_type": "pt"}
    trace, out = record_trace(tiny_pipe, {**kwargs, "generator": torch.Generator().manual_seed(0)}, max_lag=3)
    units = rfcache.get_adapter(tiny_pipe).units(tiny_pipe.transformer)
    assert trace.units == [u.path for u in units]
    assert trace.input_delta.shape == (STEPS, len(units), 3, 4)  # 2 samples x CFG
    assert np.isnan(trace.input_delta[0]).all() and np.isfinite(trace.input_delta[3]).all()
    plain = tiny_pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(out.images, plain)  # recording does not change the output
    trace.save(tmp_path / "t.npz")
    merged = Trace.merge([Trace.load(tmp_path / "t.npz"), trace])
    assert merged.input_delta.shape[-1] == 8


def test_ratio_fit_recovers_a_known_slope():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, size=(6, 2, 3, 4))
    y = np.stack([2.5 * x[:, 0], 0.5 * x[:, 1] + rng.normal(0, 0.2, size=x[:, 1].shape)], axis=1)
    fit = fit_ratios(Trace(["a", "b"], x, y), min_lag=1)
    assert fit.ratios[0] == pytest.approx(2.5) and fit.r2[0] == pytest.approx(1.0)
    assert fit.r2[1] < 0.5 and fit.poor() == [1]


def test_step_ratio_fit_recovers_a_known_step_linear_ratio():
    rng = np.random.default_rng(0)
    steps = 6
    position = np.arange(steps) / (steps - 1) - 0.5
    x = rng.uniform(0.1, 1.0, size=(steps, 2, 3, 4))
    # unit a: s = 2 + 1.5 position; unit b: s = 1 + 3 position turns negative, so its slope is clipped to 2
    s = np.stack([2 + 1.5 * position, 1 + 3 * position], axis=1)[:, :, None, None]
    fit = fit_ratio_steps(Trace(["a", "b"], x, s * x), min_lag=1)
    assert fit.intercepts == pytest.approx((2.0, 1.0)) and fit.slopes == pytest.approx((1.5, 2.0))
    assert fit.r2_linear[0] == pytest.approx(1.0) and fit.relative_change[1] == pytest.approx(3.0)
    np.testing.assert_allclose(fit.table(steps)[:, 0], 2 + 1.5 * position)
    assert (fit.table(steps) >= 0).all()


def test_seeds_and_warped_masks_fit_the_budget():
    for seed in uniform_seeds(50, 0.4):
        if seed["family"] == "interval":
            assert sum(interval_mask(50, seed["interval"], seed["warmup"])) / 50 <= 0.4
    for alpha in (0.0, 0.5, 1.0):
        mask = warped_mask(50, 14, 2, alpha)
        assert len(mask) == 50 and sum(mask) == 14 and mask[0] and mask[1]


def test_calibrate_end_to_end_and_resume(tiny_pipe, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    kwargs = {"budget": 0.5, "num_inference_steps": STEPS, "samples": 2, "selection": 1, "test": 2, "storage": storage}
    kwargs["seed"] = 18  # seeds 18-22: the tiny random model's images are not all saturated to 0 or 1
    result = calibrate(tiny_pipe, trials=5, progress=False, name="tiny", **kwargs)
    p = result.profile
    assert len(p.schedule) == STEPS and p.budget.achieved <= 0.5 and p.provenance.trials == 5
    assert p.provenance.dtype == "float32"  # the transformer's, recorded
    assert p.quality["test_rel_l2"] == result.test_rel_l2 >= 0  # tiny random models saturate
    assert p.quality["taylorseer_rel_l2"] == result.taylorseer_rel_l2 and "selection_rel_l2" in p.quality
    # three disjoint input sets, recorded in the profile; seeds never repeat
    inputs = p.provenance.inputs
    assert [len(inputs[k]) for k in ("calibration", "selection", "test")] == [2, 1, 2]
    seeds = [item.seed for items in inputs.values() for item in items]
    assert len(set(seeds)) == len(seeds) and all(item.label is not None for item in inputs["test"])
    # the error model was fitted on real runs and its estimates were checked against real runs
    assert result.error_model.runs >= 3 and {
        "errmodel_r2_in_sample",
        "errmodel_spread_in_sample",
        "errmodel_in_sample_runs",
    } <= set(p.diagnostics)
    assert result.confirmed and all(c.estimate is not None and np.isfinite(c.estimate) for c in result.confirmed)
    assert all(c.flops_fraction <= 0.5 for c in result.confirmed)
    path = p.save(tmp_path / "tiny.yaml")
    rfcache.enable(tiny_pipe, path)
    tiny_pipe(class_labels=[1], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert rfcache.summary(tiny_pipe).pattern == p.schedule
    rfcache.disable(tiny_pipe)
    # the same command resumes the study: only the missing trials run
    again = calibrate(tiny_pipe, trials=6, progress=False, name="tiny", **kwargs)
    assert again.profile.provenance.trials == 6
    shared = {**kwargs, "study_name": "shared"}
    calibrate(tiny_pipe, trials=2, progress=False, name="tiny", **shared)
    with pytest.raises(StudyMismatchError, match="another calibration setup"):
        calibrate(tiny_pipe, trials=2, progress=False, name="tiny", **{**shared, "budget": 0.3})


@pytest.mark.parametrize(
    "args,message",
    [
        (["--budget", "1.5"], "--budget must be in (0, 1]"),
        (["--budget", "0"], "--budget must be in (0, 1]"),
        (["--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    code = main(["calibrate", *args, "--out", str(tmp_path / "p.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "p.yaml").exists()


def test_cli_refuses_a_prompt_file_too_short_for_three_disjoint_sets(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    from rfcache.models.tiny import build_tiny_pipeline

    build_tiny_pipeline("pixart").save_pretrained(tmp_path / "pixart")  # a text model (the toy takes no prompts)
    argv = ["calibrate", "--model", str(tmp_path / "pixart"), "--prompts", str(prompts)]
    assert main([*argv, "--out", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after diffusers' loading bars
    assert "3 distinct prompts cannot keep calibration (8), selection (4) and test (8) apart" in err
    assert "--allow-overlap" in err and "\n" not in err and not (tmp_path / "p.yaml").exists()


def test_cli_empty_prompt_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n  \n")
    assert main(["calibrate", "--prompts", str(prompts), "--out", str(tmp_path / "p.yaml")]) == 2
    assert "prompt file is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_calibrates_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "toy.yaml"
    # 20 steps, not the default 50 (CI's main job runs the zero-argument command)
    assert main(["calibrate", "--budget", "0.4", "--steps", "20", "--trials", "6", "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["flops_fraction"] <= 0.4 and record["profile"] == str(out)
    assert {"nfc", "test_rel_l2", "taylorseer_rel_l2", "seconds", "budget_target"} <= set(record)
    assert record["inputs"] == {"calibration": 8, "selection": 4, "test": 8}  # the zero-argument defaults
    low, high = record["ratio_to_taylorseer_ci95"]
    assert low <= record["ratio_to_taylorseer"] <= high and record["verdict"] in ("lower", "higher", "tie")
    assert rfcache.load_profile(out).nfc == record["nfc"]


def test_sharded_recording_merges_and_resumes(tiny_pipe, tmp_path):
    from rfcache.calibrate import load_shards, record_shard

    common = {"num_inference_steps": STEPS, "samples": 3, "out_dir": tmp_path, "seed": 18}  # unsaturated images
    with pytest.raises(rfcache.RfcacheError, match="shards 0/2, 1/2 are not recorded yet|no trace shards"):
        load_shards(tmp_path)
    first = record_shard(tiny_pipe, shard=0, num_shards=2, **common)
    with pytest.raises(rfcache.RfcacheError, match="shards 1/2 are not recorded yet"):
        load_shards(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert record_shard(tiny_pipe, shard=0, num_shards=2, **common).stat().st_mtime_ns == stamp  # kept
    record_shard(tiny_pipe, shard=1, num_shards=2, **common)
    trace = load_shards(tmp_path)
    assert trace.input_delta.shape[-1] == 2 * 3  # inputs 0, 2 and 1, each a CFG pair
    result = calibrate(
        tiny_pipe,
        budget=0.5,
        num_inference_steps=STEPS,
        samples=3,
        selection=1,
        test=2,
        trials=3,
        progress=False,
        trace=trace,
        seed=18,
    )
    assert len(result.fit.ratios) == len(trace.units)


def test_cli_shard_flags(tmp_path, capsys):
    assert main(["calibrate", "--shard", "2/2", "--trace-dir", str(tmp_path)]) == 2
    assert "0 <= i < n" in capsys.readouterr().err
    assert main(["calibrate", "--shard", "0/2"]) == 2
    assert "--shard needs --trace-dir" in capsys.readouterr().err
    assert main(["calibrate", "--trace-dir", str(tmp_path / "empty")]) == 2
    assert "no trace shards" in capsys.readouterr().err


def test_fit_ratio_steps_tells_a_constant_ratio_from_one_that_drifts_over_the_steps():
    from rfcache.calibrate import fit_ratio_steps

    rng = np.random.default_rng(0)
    steps, lags, samples = 20, 3, 2
    x = rng.uniform(0.5, 2.0, (steps, 2, lags, samples))
    tau = (np.arange(steps) / (steps - 1) - 0.5)[:, None, None]
    y = np.stack([3.0 * x[:, 0], 2.0 * (1 + 0.8 * tau) * x[:, 1]], axis=1)  # unit 0 constant, unit 1 drifts
    fit = fit_ratio_steps(Trace(["a", "b"], x, y))
    assert fit.r2_constant[0] == pytest.approx(1.0) and abs(fit.relative_change[0]) < 1e-9
    assert fit.r2_linear[1] == pytest.approx(1.0) and fit.r2_constant[1] < 0.99
    assert fit.relative_change[1] == pytest.approx(0.8)


@pytest.mark.slow
def test_cli_calibrates_in_the_dtype_asked_and_records_it(tmp_path, capsys):
    make_tiny_digits_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "p.yaml"
    argv = ["calibrate", "--model", str(tmp_path / "model"), "--dtype", "bfloat16", "--budget", "0.5", "--seed", "18"]
    argv += ["--trials", "3", "--storage", f"sqlite:///{tmp_path / 'study.db'}", *TINY_RUN, "--out", str(out)]
    assert main(argv) == 0
    assert load_profile(out).provenance.dtype == "bfloat16"
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert ", bfloat16" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("provenance"))
