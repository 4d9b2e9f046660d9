"""Seeds summaries and the paired comparison that says when a difference is noise."""

import math

import pytest
from scipy import stats

from spectral_ssl.science.report import mean_std, paired_difference


def test_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([math.nan]))


def test_a_consistent_shift_is_reported_and_noise_is_not():
    a = [0.50, 0.52, 0.49, 0.51, 0.50]
    shifted = paired_difference(a, [v + 0.05 + 0.001 * i for i, v in enumerate(a)])
    assert not shifted.noise and shifted.low > 0 and "higher" in str(shifted)
    assert shifted.p_value == pytest.approx(stats.ttest_rel([v + 0.05 + 0.001 * i for i, v in enumerate(a)], a).pvalue)
    noisy = paired_difference(a, [0.51, 0.50, 0.50, 0.50, 0.52])
    assert noisy.noise and "within noise" in str(noisy)
    assert paired_difference(a, a).noise and paired_difference(a, a).p_value == 1.0
    with pytest.raises(ValueError, match=">= 2 seeds"):
        paired_difference([0.5], [0.6])
