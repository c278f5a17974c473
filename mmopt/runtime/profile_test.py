"""The profile's arithmetic on made-up timings (no model, no TVM): what one inference's kernels
take, and what is left between them."""

from __future__ import annotations

import random
import statistics

import pytest

from mmopt.runtime.profile import _assemble


def _raw(kernel_runs, totals, overhead=0.0):
    return {"totals": totals, "runs": kernel_runs, "outputs": [], "workspace_bytes": None,
            "peak": None, "instrument_overhead": overhead}


def _profile(raw):
    return _assemble("m.onnx", "m.so", "x86", 1, len(raw["runs"]), 0, raw, {}, None, None, {}, [])


def test_between_is_the_total_minus_one_runs_kernels_not_the_sum_of_kernel_medians():
    # 40 kernels whose times have one-sided noise (a machine only ever adds time), and a VM that
    # spends exactly 0.1 ms between them in every run
    rng = random.Random(0)
    runs, totals = [], []
    for _ in range(31):
        calls = [(f"k{i}", 1e-3 * (1 + (rng.expovariate(4) if rng.random() < 0.3 else 0)))
                 for i in range(40)]
        runs.append(calls)
        totals.append(sum(s for _n, s in calls) + 1e-4)
    result = _profile(_raw(runs, totals))
    assert result.between_ms == pytest.approx(0.1, abs=1e-9)
    assert result.kernel_sum_ms + result.between_ms == pytest.approx(result.total_median_ms)
    # the sum of the kernels' medians falls well short of a typical run: the old estimate would
    # have counted that shortfall as time between kernels
    medians = sum(k.median_ms for k in result.kernels)
    assert result.total_median_ms - medians > 1.0
    assert result.between_percent == pytest.approx(100 * 0.1 / result.total_median_ms)


def test_the_instruments_cost_comes_off_every_call_and_a_negative_gap_is_noted():
    runs = [[("a", 2e-3), ("b", 3e-3)] for _ in range(5)]
    result = _profile(_raw(runs, [5.01e-3] * 5, overhead=1e-5))
    assert result.kernel_sum_ms == pytest.approx(4.98)
    assert result.between_ms == pytest.approx(0.03)
    assert not result.notes
    slow = _profile(_raw(runs, [4.5e-3] * 5))
    assert slow.between_ms == pytest.approx(-0.5)
    assert any("exceeds the total" in n for n in slow.notes)
    assert statistics.median(k.percent for k in slow.kernels) == pytest.approx(
        100 * 2.5 / 4.5)
