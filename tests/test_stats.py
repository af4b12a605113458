"""Paired differences against scipy's paired t-test, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ppma.stats import paired_difference, summarize


@pytest.mark.parametrize("n", [2, 3, 7])
def test_paired_interval_equals_scipy_ttest_rel(n):
    rng = np.random.default_rng()
    a = rng.normal(80, 1, n)
    b = a - rng.normal(0.3, 0.5, n)
    result = paired_difference(dict(enumerate(a)), dict(enumerate(b)), confidence=0.95)
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(confidence_level=0.95)
    assert result.n == n
    assert result.mean == pytest.approx(float(np.mean(a - b)), rel=1e-12)
    assert result.low == pytest.approx(ci.low, rel=1e-9) and result.high == pytest.approx(ci.high, rel=1e-9)


def test_only_common_seeds_are_paired():
    a = {0: 90.0, 1: 91.0, 2: 95.0, 5: 10.0}
    b = {0: 89.0, 1: 89.5, 2: 94.0, 7: 99.0}
    result = paired_difference(a, b)
    assert result.n == 3 and result.mean == pytest.approx((1.0 + 1.5 + 1.0) / 3)
    assert result.excludes_zero  # three positive differences with a small spread


def test_one_seed_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="at least two seeds.*got 1"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 0.5})
    with pytest.raises(ValueError, match="confidence"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 0.5, 1: 0.7}, confidence=95)


def test_summarize_median_and_spread():
    values = list(np.random.default_rng().normal(size=9))
    s = summarize(values)
    assert s["median"] == pytest.approx(float(np.median(values)))
    assert s["min"] == min(values) and s["max"] == max(values) and s["n"] == 9
    q1, q3 = np.percentile(values, [25, 75], method="weibull")  # statistics.quantiles' default method
    assert s["iqr"] == pytest.approx(q3 - q1)
    with pytest.raises(ValueError):
        summarize([])
