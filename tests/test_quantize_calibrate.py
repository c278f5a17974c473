"""Streaming calibrators: exact re-binning, fixed memory, and what each method's threshold does."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmopt.quantize.calibrate import (
    CalibrationResult,
    StreamingHistogram,
    _candidates,
    grid_steps,
    tensor_range,
)


def test_histogram_regrows_exactly():
    """Batches with growing range give the same counts as one histogram of all data at the final R."""
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(1000) * s for s in (0.1, 1.0, 7.0, 3.0, 50.0)]
    hist = StreamingHistogram(bins=256)
    for b in batches:
        hist.update(b)
    data = np.abs(np.concatenate(batches))
    edges = np.linspace(0, hist.limit, 257)
    expected = np.histogram(data, bins=edges)[0]
    # the only differences allowed are values sitting exactly on an edge (none with this data)
    np.testing.assert_array_equal(hist.counts, expected)
    assert hist.limit >= data.max()
    assert hist.count == data.size
    assert hist.min == pytest.approx(min(b.min() for b in batches))
    assert hist.max == pytest.approx(max(b.max() for b in batches))


def test_histogram_memory_does_not_grow():
    hist = StreamingHistogram()
    size = hist.nbytes
    rng = np.random.default_rng(1)
    for i in range(200):
        hist.update(rng.standard_normal(512) * (1 + i))
    assert hist.nbytes == size
    assert hist.count == 200 * 512


def test_zeros_and_non_finite_values():
    hist = StreamingHistogram(bins=64)
    hist.update(np.zeros(10))
    hist.update(np.array([0.0, 1.0, 2.0, np.inf, np.nan], np.float32))
    assert hist.zeros == 11
    assert hist.count == 13
    assert (hist.min, hist.max) == (0.0, 2.0)


def _relu_gaussian_with_outliers(n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal(n), 0).astype(np.float32)
    x[:20] = 40.0  # rare, huge outliers
    return x


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_percentile_and_entropy_clip_rare_outliers(method):
    x = _relu_gaussian_with_outliers()
    hist = StreamingHistogram()
    for chunk in np.array_split(x, 10):
        hist.update(chunk)
    lo, hi = tensor_range(hist, method, levels=127)
    assert lo == 0.0
    assert 2.5 < hi < 20.0, (method, hi)  # clipped, yet covers the bulk of N(0,1)+
    assert tensor_range(hist, "minmax") == (0.0, 40.0)


def _fake_quant_mse(x, t, levels=127):
    step = t / levels
    return float(np.mean((np.clip(np.round(x / step), -levels, levels) * step - x) ** 2))


def test_mse_threshold_beats_minmax_on_heavy_tails():
    x = np.random.default_rng(2).laplace(size=200_000).astype(np.float32)
    hist = StreamingHistogram()
    for chunk in np.array_split(x, 7):
        hist.update(chunk)
    t_mse = tensor_range(hist, "mse")[1]
    t_max = float(np.abs(x).max())
    brute = min(_fake_quant_mse(x, t) for t in np.linspace(1.0, t_max, 200))
    assert t_mse < 0.9 * t_max
    assert _fake_quant_mse(x, t_mse) < 0.8 * _fake_quant_mse(x, t_max)
    assert _fake_quant_mse(x, t_mse) <= 1.01 * brute  # the histogram finds the true optimum


def test_mse_keeps_outliers_that_cost_more_clipped():
    """Squared error: 20 values at 40 cost more clipped than the coarser step costs everything else."""
    hist = StreamingHistogram()
    hist.update(_relu_gaussian_with_outliers())
    assert tensor_range(hist, "mse", levels=255)[1] > 35.0


def test_percentile_of_uniform_data():
    hist = StreamingHistogram()
    hist.update(np.linspace(-1.0, 1.0, 100_001))
    lo, hi = tensor_range(hist, "percentile", percentile=99.0)
    assert hi == pytest.approx(0.99, abs=2e-3)
    assert lo == pytest.approx(-0.99, abs=2e-3)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_uniform_data_is_hardly_clipped(method):
    hist = StreamingHistogram()
    hist.update(np.random.default_rng(3).uniform(-1, 1, 100_000))
    lo, hi = tensor_range(hist, method)
    assert hi > 0.99 and lo < -0.99


def test_empty_and_constant_tensors():
    hist = StreamingHistogram()
    assert tensor_range(hist, "entropy") == (0.0, 0.0)
    hist.update(np.zeros(5, np.float32))
    assert tensor_range(hist, "percentile") == (0.0, 0.0)


# --------------------------------------------------------------------------------------------------
# entropy: the KL search (issue #14)


def _hardswish(x):
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _histogram(x, chunks: int = 8) -> StreamingHistogram:
    hist = StreamingHistogram()
    for chunk in np.array_split(np.asarray(x, np.float32), chunks):
        hist.update(chunk)
    return hist


def _textbook_kl_threshold(hist: StreamingHistogram, levels: int) -> float:
    """TensorRT's search as usually written: ``P`` (the first ``i`` bins, the rest folded into the
    last) and its quantized ``Q`` each normalized to 1, ``t`` minimizing ``KL(P || Q)``."""
    counts = hist._trimmed(without_zeros=True).astype(np.float64)
    n, nq = counts.size, levels + 1
    best_i, best = n, math.inf
    for i in _candidates(nq, n):
        inside = counts[:i]
        p = inside.copy()
        p[-1] += counts[i:].sum()
        support = p > 0
        level = (np.arange(i) * nq) // i
        mass = np.bincount(level, weights=inside, minlength=nq)
        filled = np.bincount(level, weights=support, minlength=nq)
        q = np.where(support, mass[level] / np.maximum(filled[level], 1), 0.0)
        if np.any(q[support] <= 0):
            continue
        p, q = p[support] / p.sum(), q[support] / q.sum()
        kl = float(np.sum(p * np.log(p / q)))
        if kl < best:
            best_i, best = i, kl
    return best_i * hist.width


_ZERO_ANCHORED = {
    "relu-with-outliers": lambda rng: _relu_gaussian_with_outliers(),
    "gaussian": lambda rng: rng.standard_normal(200_000),
    "laplace": lambda rng: rng.laplace(size=200_000),
    "hard-swish": lambda rng: _hardswish(rng.normal(-1.0, 2.0, 200_000)),
}


@pytest.mark.parametrize("levels", [127, 255])
@pytest.mark.parametrize("data", sorted(_ZERO_ANCHORED))
def test_entropy_is_the_textbook_kl_search_where_little_is_clipped(data, levels):
    """``D(P || Q)`` with the clipped mass missing from ``Q`` differs from the normalized KL only in
    the second order of the clipped fraction: on distributions that reach zero the two agree."""
    hist = _histogram(_ZERO_ANCHORED[data](np.random.default_rng(4)))
    assert hist.entropy_threshold(levels) == _textbook_kl_threshold(hist, levels)


def _away_from_zero(size: int, rng) -> np.ndarray:
    """A tensor that never comes near zero: squeeze-excite gates (one value per channel and sample),
    hard-sigmoid inputs, pooled features."""
    return rng.normal(0.6, 0.06, size)


@pytest.mark.parametrize("activations", ["uint8", "int8"])
@pytest.mark.parametrize("size", [2_000, 200_000])
def test_entropy_keeps_a_tensor_that_stays_away_from_zero(size, activations):
    """Regression, issue #14 (top-1 96.5% -> chance on an SE classifier with --method entropy): the
    textbook search scores the candidate just above the minimum a perfect 0, P and Q both one spike
    in the last bin, and clipped the whole tensor to one value."""
    x = _away_from_zero(size, np.random.default_rng(5))
    hist = _histogram(x)
    levels = 255 if activations == "uint8" else 127
    assert _textbook_kl_threshold(hist, levels) < x.min() + 0.01  # the failure: all clipped
    result = CalibrationResult({"x": hist}, samples=size, batches=8, seconds=0.0)
    lo, hi = result.ranges("entropy", unsigned=activations == "uint8")["x"]
    assert lo == pytest.approx(x.min())
    assert np.mean(x > hi) < 0.005 and hi > 0.9 * x.max()


def test_grid_steps():
    assert grid_steps(6.0, 254, math.inf) == 127  # int8, symmetric
    assert grid_steps(6.0, 255, 0.0) == 255  # uint8 on a tensor that never goes negative
    assert grid_steps(6.0, 255, 0.375) == pytest.approx(240.0)  # uint8 on [-0.375, 6]
    assert grid_steps(2.0, 255, 5.0) == 127.5  # uint8 on [-2, 2]: clipped inside the negative range
    np.testing.assert_allclose(grid_steps(np.array([1.0, 3.0]), 254, math.inf), [127, 127])


def _fake_quant_uint8(x, lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255
    zero_point = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


def test_uint8_hard_swish_tensor_is_searched_on_its_asymmetric_grid():
    """A hard-swish output reaches down to -0.375 only: in uint8 its grid ``[-0.375, t]`` has ~240
    steps over ``[0, t]``, not the 127 of a symmetric tensor; searched with 127 the threshold clips
    harder than the grid needs (4x the squared error here)."""
    x = _hardswish(np.random.default_rng(6).normal(-1.5, 2.0, 400_000))
    assert (x == 0).mean() > 0.2 and x.min() == pytest.approx(-0.375, abs=1e-3)
    hist = _histogram(x)
    result = CalibrationResult({"x": hist}, samples=x.size, batches=8, seconds=0.0)
    lo, hi = result.ranges("entropy", unsigned=True)["x"]
    assert (lo, hi) == tensor_range(hist, "entropy", levels=255, negative=-hist.min)
    t127 = tensor_range(hist, "entropy", levels=127)[1]
    assert hi > t127

    def error(t):
        return float(np.mean((_fake_quant_uint8(x, lo, t) - x) ** 2))

    assert error(hi) < 0.5 * error(t127)
    assert error(hi) < 5 * error(float(x.max()))  # close to the unclipped range's error
