"""The smallest feasible budget: counted before any recording, refused below, reached at it (issue 22)."""

import numpy as np
import pytest

from rfcache.calibrate import api as calibrate_api
from rfcache.calibrate import calibrate
from rfcache.calibrate.errormodel import costs_flops_fraction
from rfcache.calibrate.floor import check_budget_floor, smallest_budget
from rfcache.calibrate.search import search_schedules, uniform_seeds
from rfcache.cli.main import main
from rfcache.errors import RfcacheError
from rfcache.runtime.predictors import estimate_predictor_flops
from tests.calibrate.conftest import TINY_RUN
from tests.conftest import make_tiny_digits_pipeline

COSTS = np.array([[1000.0, 8.0, 8.0], [3000.0, 8.0, 16.0]])  # per unit: FLOPs, input and output elements


def _fraction(full_steps: int, steps: int) -> float:
    """TaylorSeer order 1 at ``full_steps`` of ``steps``, counted by hand from COSTS."""
    extra = sum(estimate_predictor_flops("taylor", 1, int(o), int(i), full=True) for _, i, o in COSTS)
    return (full_steps * 4000.0 + steps * extra) / (steps * 4000.0)


def test_the_floor_is_the_cheapest_schedule_the_search_reaches():
    # up to 11 steps the error model's one-full-step mask; beyond, the warped mask's two full steps
    assert smallest_budget(COSTS, 10) == (pytest.approx(_fraction(1, 10)), "C" + "P" * 9)
    assert smallest_budget(COSTS, 50) == (pytest.approx(_fraction(2, 50)), "CC" + "P" * 48)
    # a second expert starts without history: its first step is computed too
    floor, pattern = smallest_budget(COSTS, 50, expert_starts=(30,))
    assert pattern == "CC" + "P" * 28 + "C" + "P" * 19 and floor == pytest.approx(_fraction(3, 50))
    full = tuple(c == "C" for c in pattern)
    assert floor == costs_flops_fraction(COSTS, full, "taylor", 1)  # the search's own count
    check_budget_floor(floor, COSTS, 50, expert_starts=(30,))
    with pytest.raises(RfcacheError, match=r"below the smallest feasible budget 0\.0\d+ at 50 steps"):
        check_budget_floor(floor * 0.999, COSTS, 50, expert_starts=(30,))
    # the study is seeded with those schedules where the budget has room for fewer than three full steps
    assert {s["family"] for s in uniform_seeds(10, 0.15) if s["predictor"] == "taylor" and s["order"] == 1} == {
        "warped",
        "optimal",
    }
    assert not any(s["predictor"] == "taylor" and s["order"] == 1 for s in uniform_seeds(50, 0.4))


def test_calibrate_refuses_below_the_floor_before_recording_and_works_at_it(tiny_pipe, monkeypatch):
    run = {"num_inference_steps": 10, "samples": 2, "selection": 1, "test": 1, "seed": 18, "progress": False}
    recorded = []
    real_record = calibrate_api._record
    monkeypatch.setattr(calibrate_api, "_record", lambda *a: recorded.append(1) or real_record(*a))
    with pytest.raises(RfcacheError, match="below the smallest feasible budget") as refused:
        calibrate(tiny_pipe, budget=0.1, trials=3, **run)
    assert not recorded and "\n" not in str(refused.value)
    shown = float(str(refused.value).split("give budget ")[1].split()[0])
    floor = float(str(refused.value).split("TaylorSeer order 1: ")[1].split()[0])
    assert floor <= shown < floor + 1e-4
    exact, _ = smallest_budget(calibrate_api.step_unit_costs(tiny_pipe, lambda: tiny_pipe(**_one_step())), 10)
    profile = calibrate(tiny_pipe, budget=exact, trials=3, **run).profile
    assert profile.schedule == "C" + "P" * 9 and profile.budget.achieved <= exact
    assert (profile.method.predictor, profile.method.order) == ("taylor", 1)


def _one_step() -> dict:
    return {"class_labels": [1], "num_inference_steps": 10, "output_type": "np"}


def test_seeds_are_enqueued_within_the_ranges_the_search_draws_from(recwarn):
    # at 10 steps and budget 0.25 the error model's seeds ask for 3 full steps where at most 2 fit
    seeds = uniform_seeds(10, 0.25)
    search_schedules(
        lambda params: ("C" * 10, 0.2, 0.1),
        budget=0.25,
        num_steps=10,
        trials=len(seeds),
        storage=None,
        study_name="seeds",
        progress=False,
    )
    assert not [w for w in recwarn if "out of range" in str(w.message)]


def test_cli_refuses_below_the_floor_in_one_line_leaving_nothing(tmp_path, capsys):
    make_tiny_digits_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "p.yaml"
    argv = ["calibrate", "--model", str(tmp_path / "model"), "--budget", "0.1", *TINY_RUN, "--out", str(out)]
    assert main(argv) == 2  # 0.1 passes the one-full-step bound checked before loading (1/10)
    err = capsys.readouterr().err.strip().splitlines()
    assert "below the smallest feasible budget 0.1049 at 10 steps" in err[-1] and "give budget 0.1049" in err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no profile, no study database
