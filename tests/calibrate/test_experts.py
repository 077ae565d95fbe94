"""Recording and scoring a two-expert pipeline: one trace, no history across the switch."""

from __future__ import annotations

import numpy as np
import torch

from rfcache.calibrate.errormodel import ForecastErrors
from rfcache.calibrate.search import uniform_seeds
from rfcache.calibrate.trace import fit_ratios, record_trace
from rfcache.models.tiny import build_tiny_pipeline, tiny_pipeline_call_kwargs


def test_two_experts_record_into_one_trace_with_no_change_across_the_switch():
    pipe = build_tiny_pipeline("wan", experts=2)
    call = {**tiny_pipeline_call_kwargs("wan"), "num_inference_steps": 6, "output_type": "np"}
    trace, _ = record_trace(pipe, {**call, "generator": torch.Generator().manual_seed(0)})
    assert trace.num_steps == 6 and list(trace.expert_starts) == [2]
    assert trace.expert_spans() == [(0, 2), (2, 6)]
    lag1 = trace.input_delta[:, :, 0]  # (steps, units, samples)
    assert np.isnan(lag1[0]).all() and np.isnan(lag1[2]).all()  # each expert's first step has no history
    assert np.isfinite(lag1[1]).all() and np.isfinite(lag1[3]).all()
    # each expert's view blanks the other's steps; the fits differ (other weights)
    first, second = (trace.only_steps(a, b) for a, b in trace.expert_spans())
    assert np.isnan(first.input_delta[2:]).all() and np.isnan(second.input_delta[:2]).all()
    assert fit_ratios(first).ratios != fit_ratios(second).ratios
    # the second expert's predictor needs its own first full steps again
    errors = ForecastErrors(trace, "relational", 1)
    assert errors.pattern([True, False, False, False, True, False]) == (True, True, True, True, True, False)


def test_seeds_leave_room_for_the_second_experts_first_full_steps():
    plain = uniform_seeds(12, 0.5)[0]
    seed = uniform_seeds(12, 0.5, expert_starts=(4,))[0]
    assert seed["interval"] > plain["interval"]
