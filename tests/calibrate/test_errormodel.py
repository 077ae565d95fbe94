import itertools
import logging

import numpy as np
import pytest
import torch

import rfcache
from rfcache.calibrate import Trace, record_trace
from rfcache.calibrate.errormodel import (
    ErrorModel,
    ForecastErrors,
    fit_error_model,
    fit_input_proxy,
    flops_fraction,
    optimal_masks,
    rcs_mask,
)
from rfcache.calibrate.scoring import Scorer, pattern_text
from rfcache.calibrate.sketch import count_sketch
from rfcache.runtime.policies import DynamicPolicy
from rfcache.schedules.masks import interval_mask

STEPS = 10


@pytest.fixture(scope="module")
def tiny_trace():
    from tests.conftest import make_tiny_digits_pipeline

    pipe = make_tiny_digits_pipeline()
    kwargs = {"class_labels": [1, 2], "num_inference_steps": STEPS, "guidance_scale": 2.0, "output_type": "pt"}
    trace, out = record_trace(pipe, {**kwargs, "generator": torch.Generator().manual_seed(0)}, sketch_width=64)
    return pipe, trace, out.images


def _synthetic(outputs: np.ndarray, inputs: np.ndarray | None = None) -> Trace:
    """A trace whose sketches are the given arrays (steps, units, samples, width)."""
    steps, units, samples = outputs.shape[:3]
    nan = np.full((steps, units, 1, samples), np.nan)
    return Trace([f"u{i}" for i in range(units)], nan, nan, inputs if inputs is not None else outputs, outputs)


def test_count_sketch_is_linear_and_keeps_norms():
    x, y = torch.randn(3, 4000, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4000)
    assert torch.allclose(count_sketch(2 * x - y, 256), 2 * count_sketch(x, 256) - count_sketch(y, 256), atol=1e-4)
    ratio = count_sketch(x, 256).norm(dim=1) / x.norm(dim=1)
    assert ((ratio > 0.8) & (ratio < 1.2)).all()


def test_trace_keeps_sketches_first_inputs_and_costs(tiny_pipe, tiny_trace, tmp_path):
    _, trace, _ = tiny_trace
    units = rfcache.get_adapter(tiny_pipe).units(tiny_pipe.transformer)
    assert trace.input_sketch.shape == (STEPS, len(units), 4, 64) == trace.output_sketch.shape
    assert trace.first_input.shape[:2] == (STEPS, 4) and trace.unit_costs.shape == (len(units), 3)
    trace.save(tmp_path / "t.npz")
    merged = Trace.merge([Trace.load(tmp_path / "t.npz"), trace])
    assert merged.output_sketch.shape[2] == 8 and merged.first_input.shape[1] == 8


def test_taylor_errors_vanish_on_linear_trajectories_and_reuse_errors_grow():
    rng = np.random.default_rng(0)
    start, slope = rng.normal(size=(1, 2, 3, 16)), rng.normal(size=(1, 2, 3, 16))
    outputs = start + slope * np.arange(8)[:, None, None, None]  # O(t) = a + b t
    trace = _synthetic(outputs)
    mask = [True, True, False, False, True, False, False, False]
    taylor, _ = ForecastErrors(trace, "taylor", 1).unit_errors(mask)
    assert np.abs(taylor).max() < 1e-5  # first-order forecast of a straight line is exact (float32 replay)
    reuse, pattern = ForecastErrors(trace, "reuse", 0).unit_errors(mask)
    per_step = np.linalg.norm(slope, axis=-1).sum(axis=-1)[0]  # (units,): ||b|| summed over samples
    assert reuse[2] == pytest.approx(per_step) and reuse[3] == pytest.approx(2 * per_step)
    assert reuse[7] == pytest.approx(3 * per_step) and pattern == tuple(mask)
    # relational with the input moving exactly like the output: also exact
    relational, _ = ForecastErrors(_synthetic(outputs, 3 * outputs), "relational", 1).unit_errors(mask)
    assert np.abs(relational).max() < 1e-5


def test_error_model_fit_recovers_known_sensitivity():
    rng = np.random.default_rng(1)
    truth = ErrorModel((1.0, 3.0, 0.5), 20, 1.0, 0.0, 0)
    errors, patterns, measured = [], [], []
    for _ in range(12):
        pattern = tuple(bool(b) for b in rng.random(20) < 0.4)
        e = rng.uniform(0.01, 0.1, 20) * ~np.array(pattern)
        errors.append(e)
        patterns.append(pattern)
        measured.append(truth.estimate(e, pattern))
    fitted = fit_error_model(errors, patterns, measured, smoothness=0.0)
    assert fitted.knots == pytest.approx(truth.knots, rel=1e-3) and fitted.r2 > 0.999 and fitted.runs == 12


def test_poor_error_model_fit_warns(caplog):
    rng = np.random.default_rng(2)
    patterns = [tuple(bool(b) for b in rng.random(20) < 0.4) for _ in range(8)]
    errors = [rng.uniform(0.01, 0.1, 20) * ~np.array(p) for p in patterns]
    with caplog.at_level(logging.WARNING, logger="rfcache.calibrate.errormodel"):
        fitted = fit_error_model(errors, patterns, rng.uniform(0.001, 1.0, 8))  # unrelated to the errors
    assert fitted.poor() and "fits the real runs poorly" in caplog.text


def test_estimates_on_a_real_trace_rank_full_compute_first(tiny_trace):
    _, trace, _ = tiny_trace
    fe = ForecastErrors(trace, "relational", 1)
    model = ErrorModel((1.0, 1.0), STEPS, 1.0, 0.0, 0)
    estimates = {}
    for name, mask in {
        "full": [True] * STEPS,
        "every 2": interval_mask(STEPS, 2, 2),
        "every 4": interval_mask(STEPS, 4, 2),
        "sparse": [True, True] + [False] * (STEPS - 2),
    }.items():
        errors, pattern = fe.step_errors(mask)
        assert np.isfinite(errors).all()
        estimates[name] = model.estimate(errors, pattern)
    assert estimates["full"] == 0 < estimates["every 2"] < estimates["every 4"] < estimates["sparse"]


def test_flops_fraction_matches_the_session(tiny_pipe, tiny_trace):
    _, trace, _ = tiny_trace
    mask = tuple(interval_mask(STEPS, 3, 2))
    for predictor, order in [("relational", 2), ("taylor", 1)]:
        rfcache.enable(tiny_pipe, method="static", mask=mask, predictor=predictor, order=order)
        tiny_pipe(class_labels=[1, 2], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
        measured = rfcache.summary(tiny_pipe).flops_fraction
        rfcache.disable(tiny_pipe)
        assert flops_fraction(trace, mask, predictor, order) == pytest.approx(measured, rel=1e-12)


def test_rcs_replay_matches_the_runtime_policy(tiny_trace):
    _, trace, _ = tiny_trace
    for tau, order, max_cached in [(0.05, 1, None), (0.2, 2, 3), (10.0, 1, 2)]:
        policy = DynamicPolicy(tau=tau, order=order, warmup=2, max_cached=max_cached)
        expected, last = [], -1
        for step, x in enumerate(torch.from_numpy(trace.first_input).double()):
            since = step - last if last >= 0 else step + 1
            full = policy.decide(step, since, x) or step < 1
            if full:
                policy.observe_full(step, x)
                last = step
            expected.append(full)
        got = rcs_mask(trace, tau=tau, order=order, warmup=2, max_cached=max_cached, min_full=1)
        assert got == tuple(expected)


def test_optimal_masks_match_brute_force():
    rng = np.random.default_rng(3)
    outputs = np.cumsum(rng.normal(size=(9, 2, 2, 8)), axis=0) ** 2  # a bumpy trajectory
    fe = ForecastErrors(_synthetic(outputs), "taylor", 1)
    model = ErrorModel((1.0, 0.2, 2.0), 9, 1.0, 0.0, 0)
    best = optimal_masks(fe, model, warmup=2, max_nfc=5, max_gap=9)
    for nfc in range(3, 6):
        brute = min(
            (model.estimate(*fe.step_errors(m)), m)
            for rest in itertools.combinations(range(2, 9), nfc - 2)
            for m in [tuple(i < 2 or i in rest for i in range(9))]
        )
        assert model.estimate(*fe.step_errors(best[nfc])) == pytest.approx(brute[0])
        assert sum(best[nfc]) == nfc
    # a budget below the forced full steps (4 steps at budget 0.4: max_nfc 1) still yields their mask
    assert optimal_masks(fe, model, warmup=2, max_nfc=1, max_gap=9) == {2: (True, True) + (False,) * 7}


def test_scorer_and_input_proxy_on_a_real_trace(tiny_trace):
    _, trace, _ = tiny_trace
    scorer = Scorer(trace, ratios=[0.5] * len(trace.units), max_nfc=5)
    scorer.set_model(ErrorModel((1.0, 2.0), STEPS, 1.0, 0.0, 0))
    base = {"predictor": "relational", "order": 1, "calibrated": True, "warmup": 2}
    for params in [
        {**base, "family": "interval", "interval": 3},
        {**base, "family": "warped", "nfc": 4, "alpha": 0.5},
        {**base, "family": "rcs", "tau": 0.1, "max_cached": 3},
        {**base, "family": "optimal", "nfc": 4},
    ]:
        pattern, fraction, error = scorer.estimate(params)
        assert len(pattern) == STEPS and pattern.startswith("CC") and 0 < fraction < 1 and np.isfinite(error)
    assert pattern_text(scorer.optimal({**base, "nfc": 4})).count("C") == 4
    proxy = fit_input_proxy(trace, scorer.errors(base), [interval_mask(STEPS, 3, 2), interval_mask(STEPS, 4, 1)])
    assert len(proxy.unit_r2) == len(trace.units) and all(r <= 1 for r in proxy.unit_r2)


def test_a_per_step_ratio_is_read_at_each_predicted_step(tiny_trace):
    """Replaying with a (steps, units) ratio table equals replaying, step by step, with that step's row."""
    _, trace, _ = tiny_trace
    units = len(trace.units)
    table = 0.2 + 0.1 * np.arange(STEPS)[:, None] + 0.01 * np.arange(units)[None, :]  # (S, U)
    mask = interval_mask(STEPS, 3, 2)
    per_step, pattern = ForecastErrors(trace, "relational", 2, table).unit_errors(mask)
    for c in range(STEPS):
        constant, _ = ForecastErrors(trace, "relational", 2, table[c]).unit_errors(mask)
        np.testing.assert_allclose(per_step[c], constant[c], rtol=1e-6)
    assert not pattern[2] and per_step[2].sum() > 0
    with pytest.raises(ValueError, match=r"ratios must have shape"):
        ForecastErrors(trace, "relational", 2, table[:, :2])


def test_scorer_scores_each_ratio_choice(tiny_trace):
    _, trace, _ = tiny_trace
    units = len(trace.units)
    base = {"predictor": "relational", "order": 2, "family": "interval", "interval": 3, "warmup": 2}
    scorer = Scorer(trace, ratios=[0.5] * units, step_ratios=np.full((STEPS, units), 0.5), max_nfc=5)
    scorer.set_model(ErrorModel((1.0, 2.0), STEPS, 1.0, 0.0, 0))
    constant = scorer.estimate({**base, "calibrated": True})
    assert scorer.estimate({**base, "calibrated": True, "ratio_form": "step-linear"}) == pytest.approx(constant)
    assert scorer.estimate({**base, "calibrated": False})[2] != constant[2]  # the run-time ratio differs
    no_table = Scorer(trace, ratios=[0.5] * units, max_nfc=5)
    with pytest.raises(ValueError, match="no step-linear calibrated ratios"):
        no_table.errors({**base, "calibrated": True, "ratio_form": "step-linear"})


def test_per_unit_rows_give_the_changing_unit_the_full_steps():
    """Two units, a toy trace: unit 0's output never changes (every forecast exact), unit 1's swings
    each step. Under a budget of half the FLOPs the split leaves unit 0 the fewest full steps it may
    have and spends the rest on unit 1; both rows keep RFE's and TaylorSeer's warm-up."""
    from types import SimpleNamespace

    import numpy as np

    from rfcache.calibrate.errormodel import ForecastErrors, per_unit_rows
    from rfcache.schedules.masks import warmup_violation

    steps = 12
    outputs = np.ones((steps, 2, 1, 4))  # (S, U, B, W)
    outputs[:, 1, 0, 0] = np.cos(np.arange(steps) * 2.0) * 3.0
    trace = SimpleNamespace(input_sketch=outputs.copy(), output_sketch=outputs, expert_starts=None)
    for predictor, order in (("taylor", 1), ("relational", 1)):
        fe = ForecastErrors(trace, predictor, order)
        rows = per_unit_rows(fe, [1.0, 1.0], 0.5)
        # at most 9 cached steps in a row (max_gap 10): unit 0 needs two full steps at most
        assert rows[0].count("C") <= 2 < 8 <= rows[1].count("C") and rows[0].count("C") + rows[1].count("C") <= 12
        assert all(warmup_violation(r, fe.min_full) is None for r in rows)
