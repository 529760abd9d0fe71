import math

import numpy as np
import pytest

from codec.evaluate.bdrate import bd_quality, bd_rate, msssim_db


def test_same_quality_at_70_percent_of_the_rate_is_minus_30_percent():
    rates = [0.05, 0.1, 0.2, 0.4]
    psnr = [26.0, 28.5, 30.2, 33.0]
    assert bd_rate(rates, psnr, [0.7 * r for r in rates], psnr) == pytest.approx(-30.0, abs=1e-9)
    assert bd_rate([0.7 * r for r in rates], psnr, rates, psnr) == pytest.approx(100 / 0.7 - 100, abs=1e-9)
    assert bd_rate(rates, psnr, rates, psnr) == pytest.approx(0.0, abs=1e-12)


def test_log_linear_curves_sampled_at_different_points():
    # Quality = 5 log2(rate) + 40 for the anchor; the test reaches it at half the rate, sampled
    # at other rates. Monotone cubic interpolation is exact on these curves: BD-rate = -50 %.
    def anchor(r):
        return 5 * np.log2(r) + 40

    def test(r):
        return 5 * np.log2(2 * r) + 40

    ra = np.array([0.06, 0.11, 0.23, 0.5])
    rt = np.array([0.04, 0.09, 0.13, 0.3, 0.45])
    assert bd_rate(ra, anchor(ra), rt, test(rt)) == pytest.approx(-50.0, abs=1e-9)
    # At equal rate the test is 5 dB better (one octave of rate at 5 dB per octave).
    assert bd_quality(ra, anchor(ra), rt, test(rt)) == pytest.approx(5.0, abs=1e-9)


def test_only_the_overlap_counts_and_bad_curves_are_refused():
    rates, psnr = [0.1, 0.2, 0.4], [28.0, 30.0, 32.0]
    # The test curve extends further; only the common quality range is integrated.
    assert bd_rate(rates, psnr, [0.05, 0.1, 0.2, 0.4, 0.8], [26.0, 28.0, 30.0, 32.0, 34.0]) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="overlap"):
        bd_rate(rates, psnr, rates, [40.0, 41.0, 42.0])
    with pytest.raises(ValueError, match="two points"):
        bd_rate([0.1], [30.0], rates, psnr)
    with pytest.raises(ValueError, match="differ"):
        bd_rate([0.1, 0.2], [30.0, 30.0], rates, psnr)


def test_msssim_db():
    assert msssim_db(0.9) == pytest.approx(10.0)
    assert msssim_db(0.99) == pytest.approx(20.0)
    assert math.isinf(msssim_db(1.0))
