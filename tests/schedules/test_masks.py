import numpy as np
import pytest

from rfcache.schedules.masks import (
    interval_for_nfc,
    interval_mask,
    optimal_masks,
    rcs_mask,
    step_kinds,
    warped_mask,
)


def _taylorseer_reference(num_steps: int, interval: int, first_enhance: int) -> tuple[bool, ...]:
    """TaylorSeer's own rule (its ``cal_type``), stated as its code states it: full while
    ``step < first_enhance``; afterwards a step is cached while the count of cached steps since
    the last full one is below ``interval - 1``, and full when it reaches it (the count resets)."""
    out, cached = [], 0
    for step in range(num_steps):
        if step < first_enhance or cached == interval - 1:
            out.append(True)
            cached = 0
        else:
            out.append(False)
            cached += 1
    return tuple(out)


@pytest.mark.parametrize("num_steps", [8, 20, 50])
@pytest.mark.parametrize("interval", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("warmup", [1, 2, 3])
def test_interval_mask_is_taylorseers_placement(num_steps, interval, warmup):
    assert interval_mask(num_steps, interval, warmup) == _taylorseer_reference(num_steps, interval, warmup)


def test_interval_mask_at_taylorseers_dit_setting():
    mask = interval_mask(50, 4, 2)
    full = [s for s, f in enumerate(mask) if f]
    assert full == [0, 1, *range(5, 50, 4)] and len(full) == 14 and mask[-1]  # NFC 14, the last step computed


def test_interval_mask_refuses_bad_parameters():
    with pytest.raises(ValueError, match="interval must be >= 1"):
        interval_mask(10, 0, 2)


def test_interval_for_nfc_matches_exactly_where_possible():
    for nfc in (7, 10, 14, 19, 26):
        interval, warmup, n = interval_for_nfc(50, nfc)
        assert n == nfc == sum(interval_mask(50, interval, warmup))
        assert warmup == 2 or nfc == 19  # TaylorSeer's DiT default, where it can give the NFC
    assert interval_for_nfc(50, 14)[:2] == (4, 2)  # TaylorSeer's own setting


def test_interval_for_nfc_prefers_the_given_warmup_and_never_fewer_full_steps():
    interval, warmup, n = interval_for_nfc(50, 14, warmup=3)
    assert warmup == 3 and n == 14 == sum(interval_mask(50, interval, 3))
    _, _, n = interval_for_nfc(50, 49)  # not reachable: the nearest with more full steps wins
    assert n >= 49


def test_warped_mask_counts_and_keeps_warmup():
    for alpha in (0.0, 0.5, 1.0):
        mask = warped_mask(50, 14, 2, alpha)
        assert sum(mask) == 14 and mask[:2] == (True, True)


def test_rcs_mask_replays_the_threshold_rule():
    # a first-unit input that changes linearly and then jumps: order-1 forecasts are exact until the jump
    x = np.ones((10, 1, 4)) * np.arange(10)[:, None, None]
    x[6:] += 5.0
    mask = rcs_mask(x, tau=0.01, order=1, warmup=2, max_cached=None, min_full=1)
    assert mask == (True, True, False, False, False, False, True, True, False, False)
    capped = rcs_mask(x, tau=10.0, order=1, warmup=2, max_cached=2, min_full=1)
    assert capped == (True, True, False, False, True, False, False, True, False, False)


def test_optimal_masks_spend_full_steps_where_the_error_is():
    # error per cached step grows with its distance from the last full step, weighted 10x in steps 6..9
    sens = np.array([1.0] * 6 + [10.0] * 4)
    segment = lambda fulls, n: np.arange(1.0, min(n, 9 - fulls[0]) + 1)  # noqa: E731  (steps left after the last full)
    best = optimal_masks(10, segment, sens, keep=0, warmup=1, max_nfc=4, max_gap=10)
    assert set(best) == {1, 2, 3, 4}
    assert all(sum(m) == n and m[0] for n, m in best.items())
    assert sum(best[4][6:]) >= 2  # most full steps where the sensitivity is high


def test_mask_error_by_hand_and_as_optimal_masks_rate_it():
    import numpy as np

    from rfcache.schedules.masks import interval_mask, mask_error, optimal_masks

    half = lambda fulls, length: np.full(length, 0.5)  # noqa: E731
    mask = tuple(c == "C" for c in "CPPCP")
    assert mask_error(mask, half, [1.0] * 5, keep=1) == 1.0**2 + 0.5**2  # runs of 2 and 1 cached steps

    def growing(fulls, length):  # up to the last step, as the trace's segments are
        return 0.1 * (1 + fulls[0] % 3) * np.arange(1, min(length, 11 - fulls[0]) + 1)

    w = np.linspace(1.0, 0.5, 12)
    best = optimal_masks(12, growing, w, keep=1, warmup=1, max_nfc=6)
    for nfc, found in best.items():
        uniform = [m for n in range(1, 13) if sum(m := interval_mask(12, n, 1)) == nfc]
        assert all(mask_error(found, growing, w, keep=1) <= mask_error(u, growing, w, keep=1) + 1e-12 for u in uniform)


def test_split_budget_meets_the_budget_and_is_exact_for_convex_tables():
    import itertools

    import numpy as np
    import pytest

    from rfcache.schedules.masks import split_budget

    rng = np.random.default_rng(0)
    for _ in range(20):  # convex tables, equal costs: the marginal split is the optimum
        tables = []
        for _ in range(3):
            drops = np.sort(rng.uniform(0.1, 5.0, size=4))[::-1]
            tables.append({2 + i: float(drops[i:].sum()) for i in range(5)})
        budget = float(rng.uniform(2.2, 5.8)) / 6
        choice = split_budget(tables, [1.0] * 3, budget, 6)
        assert sum(choice) <= budget * 18 + 1e-9
        feasible = [c for c in itertools.product(range(2, 7), repeat=3) if sum(c) <= budget * 18 + 1e-9]
        best = min(sum(t[n] for t, n in zip(tables, c, strict=True)) for c in feasible)
        assert sum(t[n] for t, n in zip(tables, choice, strict=True)) == pytest.approx(best)
    cheap_and_bad, dear_and_good = {1: 10.0, 2: 5.0, 3: 0.0}, {1: 1.0, 2: 0.5, 3: 0.0}
    assert split_budget([cheap_and_bad, dear_and_good], [1.0, 4.0], 0.5, 3) == (3, 1)  # 3 + 4 <= 7.5
    with pytest.raises(ValueError, match="below the fewest full steps"):
        split_budget([cheap_and_bad, dear_and_good], [1.0, 4.0], 0.1, 3)


def test_step_kinds_are_the_distinct_columns_in_order_of_first_use():
    rows = ["CCPCP", "CPPCP", "CCPPP"]
    assert step_kinds(rows) == ["CCC", "CPC", "PPP", "CCP"]
    assert step_kinds(["CPPC"] * 3) == ["CCC", "PPP"]  # a step mask: full and predicted steps only
    assert step_kinds([]) == []
