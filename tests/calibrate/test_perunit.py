"""The per-unit family of the search: its budget, its reduction to the step mask, its kind limit, and
the selection between the families (issue 18)."""

import numpy as np
import pytest
import torch

import rfcache
from rfcache.calibrate import calibrate, record_trace
from rfcache.calibrate.errormodel import ErrorModel, flops_fraction
from rfcache.calibrate.perunit import (
    limit_step_kinds,
    local_moves,
    unit_candidate,
    unit_candidates,
    unit_estimate,
    unit_flops_fraction,
    unit_layout,
)
from rfcache.calibrate.scoring import Scorer
from rfcache.calibrate.search import Candidate
from rfcache.cli.main import main
from rfcache.errors import RfcacheError
from rfcache.schedules import load_profile
from rfcache.schedules.masks import step_kinds, warmup_violation
from tests.calibrate.conftest import TINY_RUN

STEPS = 10
BUDGET = 0.5


@pytest.fixture(scope="module")
def scored():
    from tests.conftest import make_tiny_digits_pipeline

    pipe = make_tiny_digits_pipeline()
    call = {"class_labels": [1, 2], "num_inference_steps": STEPS, "guidance_scale": 2.0, "output_type": "pt"}
    trace, _ = record_trace(pipe, {**call, "generator": torch.Generator().manual_seed(0)}, sketch_width=64)
    scorer = Scorer(trace, ratios=None, max_nfc=int(BUDGET * STEPS))
    scorer.set_model(ErrorModel((1.0, 2.0), STEPS, 1.0, 0.0, 0))
    return pipe, scorer, unit_layout(pipe.transformer, trace)


SETTINGS = [{"predictor": "taylor", "order": 2, "calibrated": False}, {"predictor": "relational", "order": 1}]


def test_equal_rows_cost_and_score_exactly_as_the_step_mask(scored):
    _, scorer, layout = scored
    params = {**SETTINGS[1], "family": "unit-split", "depth": 0.0}
    pattern = "CCPCPPCPCP"
    rows = [pattern] * len(layout.paths)
    mask = tuple(c == "C" for c in pattern)
    assert unit_flops_fraction(scorer.trace, rows, "relational", 1) == pytest.approx(
        flops_fraction(scorer.trace, mask, "relational", 1), rel=1e-12
    )
    cand = unit_candidate(scorer, params, rows, max_step_kinds=None, budget=1.0)
    assert cand is not None and cand.rows is None and cand.pattern == pattern  # the step mask
    fe = scorer.errors(params)
    expected = scorer.model.estimate(fe.step_errors(mask)[0], mask)
    assert unit_estimate(scorer, params, rows) == pytest.approx(expected, rel=1e-9)


def test_candidates_keep_the_budget_as_the_session_counts_it(scored):
    pipe, scorer, layout = scored
    cands = unit_candidates(scorer, layout, SETTINGS, BUDGET)
    assert cands and {c.params["family"] for c in cands} >= {"unit-split", "unit-prefix"}
    for cand in cands:
        assert cand.rows is not None and len(set(cand.rows)) > 1 and cand.flops_fraction <= BUDGET
        analytic = unit_flops_fraction(scorer.trace, cand.rows, cand.params["predictor"], int(cand.params["order"]))
        assert cand.flops_fraction == analytic
    cand = cands[0]
    unit_masks = tuple(tuple(c == "C" for c in row) for row in cand.rows)
    mask = tuple(c == "C" for c in cand.pattern)
    rfcache.enable(
        pipe,
        method="static",
        mask=mask,
        unit_masks=unit_masks,
        predictor=cand.params["predictor"],
        order=int(cand.params["order"]),
    )
    try:
        call = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "generator": torch.Generator().manual_seed(0)}
        pipe(class_labels=[1, 2], **call)
        s = rfcache.summary(pipe)
    finally:
        rfcache.disable(pipe)
    assert s.flops_fraction == pytest.approx(cand.flops_fraction, rel=1e-9)  # the session's own count
    assert tuple(s.unit_patterns) == cand.rows


def test_max_step_kinds_bounds_the_kinds_and_keeps_full_steps(scored):
    _, scorer, layout = scored
    for k in (2, 3):
        for cand in unit_candidates(scorer, layout, SETTINGS, BUDGET, max_step_kinds=k):
            rows = cand.rows or (cand.pattern,)
            assert len(step_kinds(rows)) <= k and cand.flops_fraction <= BUDGET
    rows = ("CCPCPCPCCP", "CCCPPCPPCP", "CCPPCPCPPC")
    costs = [1.0, 1.0, 1.0]
    limited = limit_step_kinds(rows, 2, costs, fits=lambda r: True)
    assert len(step_kinds(limited)) <= 2 and all(r.startswith("CC") for r in limited)
    assert all(limited[u][s] == "C" for s in range(10) for u in range(3) if all(r[s] == "C" for r in rows))
    tight = limit_step_kinds(rows, 2, costs, fits=lambda r: False)  # no union fits: intersections
    assert len(step_kinds(tight)) <= 2 and sum(r.count("C") for r in tight) <= sum(r.count("C") for r in rows)


def test_calibration_chooses_the_family_with_the_lower_selection_error_and_records_both(tiny_pipe, tmp_path):
    kwargs = {"budget": BUDGET, "num_inference_steps": STEPS, "samples": 2, "selection": 1, "test": 1, "seed": 18}
    result = calibrate(tiny_pipe, trials=6, confirm=2, progress=False, name="tiny", **kwargs)
    p, other = result.profile, result.alternative
    assert result.unit_confirmed and other is not None and p.per_unit != other.per_unit
    step_err, unit_err = p.diagnostics["selection_rel_l2_step_mask"], p.diagnostics["selection_rel_l2_per_unit"]
    assert p.quality["selection_rel_l2"] == min(step_err, unit_err) <= other.quality["selection_rel_l2"]
    assert p.per_unit == (unit_err < step_err) and p.diagnostics["per_unit_won"] == float(p.per_unit)
    assert p.budget.achieved <= BUDGET and other.budget.achieved <= BUDGET
    for profile in (p, other):  # both valid, round-trip and run
        path = profile.save(tmp_path / f"{'unit' if profile.per_unit else 'step'}.yaml")
        loaded = load_profile(path)
        assert loaded == profile
        rfcache.enable(tiny_pipe, path)
        tiny_pipe(class_labels=[1], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
        s = rfcache.summary(tiny_pipe)
        rfcache.disable(tiny_pipe)
        assert s.pattern == profile.schedule
        if profile.per_unit:
            assert profile.method.schedule_family.startswith("unit-") and profile.unit_costs
            assert dict(zip(s.unit_paths, s.unit_patterns, strict=True)) == profile.unit_rows()
    only_steps = calibrate(tiny_pipe, trials=6, confirm=2, progress=False, per_unit=False, name="tiny", **kwargs)
    assert not only_steps.profile.per_unit and only_steps.alternative is None and not only_steps.unit_confirmed
    assert "selection_rel_l2_per_unit" not in only_steps.profile.diagnostics
    with pytest.raises(RfcacheError, match="max_step_kinds must be >= 2"):
        calibrate(tiny_pipe, trials=1, max_step_kinds=1, progress=False, **kwargs)


def test_cli_writes_a_kind_limited_profile_and_refuses_a_limit_below_two(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["calibrate", *TINY_RUN, "--trials", "4", "--max-step-kinds", "2", "--out", str(out)]) == 0
    profile = load_profile(out)
    rows = list(profile.unit_rows().values()) or [profile.schedule]
    assert len(step_kinds(rows)) <= 2
    assert "selection_rel_l2_step_mask" in profile.diagnostics
    capsys.readouterr()
    assert main(["calibrate", *TINY_RUN, "--max-step-kinds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-step-kinds" in err[0]


def test_per_unit_candidates_are_refused_on_two_expert_traces(scored):
    _, scorer, layout = scored
    trace = scorer.trace
    two = Scorer(
        type(trace)(**{**trace.__dict__, "expert_starts": np.array([5])}), ratios=None, max_nfc=int(BUDGET * STEPS)
    )
    two.set_model(scorer.model)
    with pytest.raises(RfcacheError, match="two-expert"):
        unit_candidates(two, layout, SETTINGS, BUDGET)


def test_a_kind_candidate_is_written_as_groups_with_every_unit_and_its_cost(scored):
    from rfcache.calibrate.api import _unit_fields

    _, scorer, layout = scored
    cands = unit_candidates(scorer, layout, SETTINGS, BUDGET)
    picked = [next(c for c in cands if c.params["family"] == f) for f in ("unit-kind", "unit-split")]
    for cand in picked:
        fields = _unit_fields(cand, layout, scorer.trace)
        groups = fields.get("unit_groups") or {path: (path,) for path in fields["unit_schedules"]}
        rows = {unit: fields["unit_schedules"][key] for key, units in groups.items() for unit in units}
        assert rows == dict(zip(layout.paths, cand.rows, strict=True))
        assert set(fields["unit_costs"]) == set(layout.paths) and min(fields["unit_costs"].values()) > 0


def test_local_moves_keep_each_units_full_steps_the_warm_up_and_the_kind_limit():
    """``unit-local`` with a hand-computable error: unit 2 computed late lowers it, unit 0 computed late
    raises it; every kept proposal moved one full step, so each row keeps its count (the budget)."""
    start = Candidate({"predictor": "relational", "order": 2}, "CCPPCPPCPP", 0.4, 1.0, 0)
    runs = []

    def real_error(params, pattern, *, rows):
        runs.append(rows)
        assert pattern == "".join("C" if all(r[s] == "C" for r in rows) else "P" for s in range(len(pattern)))
        late = [sum(s for s, c in enumerate(row) if c == "C") for row in rows]
        return 1.0 + 0.01 * late[0] - 0.01 * late[2]

    moved = local_moves(start, 3, real_error, moves=40, min_full=2, max_step_kinds=4, seed=0)
    assert moved is not None and moved.params["family"] == "unit-local" and moved.rows is not None
    assert 0 < len(runs) <= 40 and all(len(step_kinds(rows)) <= 4 for rows in runs)
    assert moved.error < start.error and moved.flops_fraction == start.flops_fraction
    assert moved.error == real_error(None, moved.pattern, rows=moved.rows)  # the kept rows' own real run
    assert [row.count("C") for row in moved.rows] == [start.pattern.count("C")] * 3
    assert all(warmup_violation(row, 2) is None for row in moved.rows)
    late = [sum(s for s, c in enumerate(row) if c == "C") for row in (start.pattern, *moved.rows)]
    assert late[1] < late[0] or late[3] > late[0]  # unit 0's full steps earlier or unit 2's later


def test_local_moves_that_never_help_give_nothing():
    start = Candidate({"predictor": "taylor", "order": 1}, "CPPCPPCPPP", 0.3, 0.5, 0)
    assert local_moves(start, 2, lambda params, pattern, *, rows: 0.5, moves=10, min_full=1) is None


def test_cli_local_moves_add_a_measured_candidate_within_the_budget(tmp_path, capsys):
    """``--local-moves`` on the embedded model's tiny run: a valid profile either way; where ``unit-local``
    won, its rows keep the step mask's per-unit counts and it carries no estimate."""
    out = tmp_path / "p.yaml"
    args = ["calibrate", *TINY_RUN, "--trials", "4", "--local-moves", "6", "--max-step-kinds", "4", "--out", str(out)]
    assert main(args) == 0
    profile = load_profile(out)
    assert profile.budget.achieved <= profile.budget.target + 1e-9
    rows = list(profile.unit_rows().values()) or [profile.schedule]
    assert len(step_kinds(rows)) <= 4
    if profile.method.schedule_family == "unit-local":
        assert len({row.count("C") for row in rows}) == 1 and "estimated_rel_l2" not in profile.quality
