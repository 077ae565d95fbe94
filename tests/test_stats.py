import math

import numpy as np
import pytest

from rfcache.stats import mean_interval, paired_ratio


def test_mean_interval_brackets_the_mean_and_narrows_with_samples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 0.2, 8), rng.normal(1.0, 0.2, 200)
    a, b = mean_interval(small), mean_interval(large)
    assert a.low < a.value < a.high and b.low < b.value < b.high
    assert a.value == pytest.approx(small.mean())
    assert (b.high - b.low) < (a.high - a.low)
    assert 0.9 < b.low < 1.0 < b.high < 1.1


def test_mean_interval_of_one_sample_has_no_bounds():
    one = mean_interval([0.5])
    assert one.value == 0.5 and math.isnan(one.low) and one.ci95 == [None, None]
    assert one.format() == "0.5"


def test_paired_ratio_sees_a_consistent_gain_that_an_unpaired_comparison_misses():
    rng = np.random.default_rng(1)
    base = rng.lognormal(-3, 1.0, 12)  # samples differ by a lot ...
    better = base * 0.8 * rng.lognormal(0, 0.02, 12)  # ... but A is 0.8x B on every one
    ratio = paired_ratio(better, base)
    assert ratio.value == pytest.approx(0.8, rel=0.02) and ratio.high < 1 and ratio.verdict() == "lower"
    a, b = mean_interval(better), mean_interval(base)
    assert a.high > b.low  # the unpaired intervals overlap
    assert paired_ratio(base, base).verdict() == "tie"
    assert paired_ratio(base / 0.8, base).verdict() == "higher"


def test_paired_ratio_needs_matching_samples():
    with pytest.raises(ValueError, match="one shape"):
        paired_ratio([1.0, 2.0], [1.0])
