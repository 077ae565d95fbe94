import math

import pytest
import torch

from rfcache.runtime.predictors import (
    difference_gram,
    gram_pair_weights,
    relation_ratio,
    relational_forecast,
    stack_gram,
    stacked_relational_forecast,
    taylor_coefficients,
    taylor_forecast,
    update_differences,
    weighted_sum,
)


def _differences(trajectory, full_steps, order):
    diffs, last = [], None
    for s in full_steps:
        diffs = update_differences(diffs, trajectory(s), 1 if last is None else s - last, order)
        last = s
    return diffs


@pytest.fixture
def coeffs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3)]


def test_reuse_and_order_zero_return_the_cache(coeffs):
    diffs = _differences(lambda s: coeffs[0] + s * coeffs[1], [0, 3], order=0)
    assert len(diffs) == 1
    assert torch.equal(taylor_forecast(diffs, 2), coeffs[0] + 3 * coeffs[1])


def test_order_one_is_exact_on_lines(coeffs):
    line = lambda s: coeffs[0] + s * coeffs[1]  # noqa: E731
    diffs = _differences(line, [0, 2, 5], order=1)  # unequal distances are handled
    for k in (1, 2, 4):
        torch.testing.assert_close(taylor_forecast(diffs, k), line(5 + k), rtol=0, atol=1e-12)


def test_order_two_follows_the_taylorseer_formula_on_parabolas(coeffs):
    # D_1 is a backward difference, D_2 the exact second derivative; TaylorSeer's k^i/i! weights
    # then miss the parabola by exactly D_2 * k * N / 2 (docs/method.md's formula, kept as published)
    para = lambda s: coeffs[0] + s * coeffs[1] + s * s * coeffs[2]  # noqa: E731
    n = 3
    diffs = _differences(para, [0, n, 2 * n], order=2)
    torch.testing.assert_close(diffs[2], 2 * coeffs[2], rtol=0, atol=1e-12)
    for k in (1, 2):
        expected = para(2 * n + k) - diffs[2] * k * n / 2
        torch.testing.assert_close(taylor_forecast(diffs, k), expected, rtol=0, atol=1e-12)


def test_relational_is_exact_for_a_linear_module_on_a_line():
    # Proposition 1: O = W I with I moving along a line, at any speed: RFE recovers O exactly
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    a, b = (torch.randn(2, 6, 4, generator=g, dtype=torch.float64) for _ in range(2))
    speed = lambda s: s**2 / 7  # noqa: E731  - non-uniform in time: TaylorSeer cannot follow it
    inp = lambda s: a + speed(s) * b  # noqa: E731
    out = lambda s: inp(s) @ w.T  # noqa: E731
    t0, t1 = 4, 8
    diffs = _differences(out, [t0, t1], order=1)
    ratio = relation_ratio(out(t1), out(t0), inp(t1), inp(t0))
    for k in (1, 3):
        pred = relational_forecast(diffs, k, ratio, inp(t1 + k), inp(t1))
        torch.testing.assert_close(pred, out(t1 + k), rtol=0, atol=1e-10)
        taylor_error = (taylor_forecast(diffs, k) - out(t1 + k)).norm()
        assert taylor_error > 1e-3


def test_relational_norms_are_per_sample():
    g = torch.Generator().manual_seed(2)
    before, now = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    inp_before, inp_now = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    ratio = relation_ratio(now, before, inp_now, inp_before)
    assert ratio.shape == (2,)
    for i in range(2):
        expected = (now[i] - before[i]).norm() / (inp_now[i] - inp_before[i]).norm()
        assert math.isclose(float(ratio[i]), float(expected), rel_tol=1e-5)


def test_ratio_is_zero_when_the_input_did_not_move():
    x = torch.ones(1, 2, 3)
    assert float(relation_ratio(x * 2, x, x, x)[0]) == 0.0


def test_relational_needs_two_full_steps():
    with pytest.raises(ValueError, match="two full steps"):
        relational_forecast([torch.zeros(1, 2)], 1, torch.ones(1), torch.zeros(1, 2), torch.zeros(1, 2))


def test_gram_form_of_rfe_matches_the_direct_one():
    from rfcache.runtime.predictors import gram_relational_forecast

    g = torch.Generator().manual_seed(0)
    diffs = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    x, x_full = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    ratio = torch.tensor([0.7, 1.3])
    for k in (1, 2, 5):
        direct = relational_forecast(diffs, k, ratio, x, x_full)
        gram = gram_relational_forecast(diffs, taylor_coefficients(k, 3), difference_gram(diffs), ratio, x, x_full)
        torch.testing.assert_close(gram, direct, rtol=1e-5, atol=1e-6)
        values = torch.tensor(taylor_coefficients(k, 3))
        stacked = stacked_relational_forecast(
            diffs, values, gram_pair_weights(values), stack_gram(difference_gram(diffs)), ratio, x, x_full
        )
        torch.testing.assert_close(stacked, direct, rtol=1e-5, atol=1e-6)


def test_fused_weighted_sum_leaves_the_differences_alone():
    g = torch.Generator().manual_seed(0)
    diffs = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    before = [d.clone() for d in diffs]
    for coeffs in ([1.0, 2.0, 2.0], [1.0, torch.tensor(2.0, dtype=torch.float64), torch.tensor(2.0)]):
        out = weighted_sum(diffs, coeffs)
        torch.testing.assert_close(out, diffs[0] + 2 * diffs[1] + 2 * diffs[2], rtol=0, atol=1e-12)
        assert all(torch.equal(d, b) for d, b in zip(diffs, before, strict=True))  # in place only on a temporary
    assert weighted_sum(diffs[:1], [1.0]) is diffs[0]  # reuse: no copy
