"""Output comparison: the tolerance, and the few outliers a quantized model may have."""

from __future__ import annotations

import numpy as np

from mmopt.runtime.verify import allowed_outliers, compare


def _pair(size: int, errors: dict[int, float]):
    ref = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    cand = ref.copy()
    for index, error in errors.items():
        cand[index] += error
    return {"y": ref}, {"y": cand}


def test_without_outliers_one_element_beyond_the_tolerance_fails():
    ref, cand = _pair(200_000, {5: 0.15})
    out = compare(ref, cand, atol=0.1, rtol=0.0).outputs[0]
    assert not out.passed and out.beyond == 1


def test_a_few_outliers_within_the_factor_pass_and_are_counted():
    ref, cand = _pair(200_000, {5: 0.15, 70_000: -0.3})  # allowed: 2 of 200,000 at 1e-5
    out = compare(ref, cand, atol=0.1, rtol=0.0, outliers=1e-5, outlier_factor=4.0).outputs[0]
    assert out.passed and out.beyond == 2 and 2.9 < out.worst_ratio < 3.1


def test_too_many_or_too_large_outliers_fail():
    ref, cand = _pair(200_000, {5: 0.15, 6: 0.15, 7: 0.15})
    assert not compare(ref, cand, atol=0.1, rtol=0.0, outliers=1e-5,
                       outlier_factor=4.0).outputs[0].passed
    ref, cand = _pair(200_000, {5: 0.45})
    assert not compare(ref, cand, atol=0.1, rtol=0.0, outliers=1e-5,
                       outlier_factor=4.0).outputs[0].passed


def test_allowed_outliers():
    assert allowed_outliers(705_600, 1e-5) == 7
    assert allowed_outliers(1000, 1e-5) == 1
    assert allowed_outliers(1000, 0.0) == 0
