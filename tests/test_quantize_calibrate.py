"""Streaming calibrators: exact re-binning, fixed memory, and what each method's threshold does."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.quantize.calibrate import StreamingHistogram, tensor_range


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
