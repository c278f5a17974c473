"""Op types of kernels, their time per inference, and the pairing with onnxruntime's op types, on
made-up kernels and timings (no model, no TVM)."""

from __future__ import annotations

import pytest

from mmopt.runtime.profile_ops import (LAYOUT_COPY, UNKNOWN, kernel_op, op_times, side_by_side)


def test_a_kernel_counts_under_the_op_that_carries_its_work():
    # a conv with its batch norm folded and its activation fused, listed in graph order
    assert kernel_op("value", ["Conv", "Add", "Clip"]) == "Conv"
    # the anchor need not come first: a QDQ conv, a Flatten view in front of a Gemm
    assert kernel_op("value", ["DequantizeLinear", "DequantizeLinear", "Conv",
                               "QuantizeLinear"]) == "Conv"
    assert kernel_op("value", ["Flatten", "Gemm"]) == "Gemm"
    # without a contraction: the first op (an element-wise chain, a reduction)
    assert kernel_op("value", ["Mul", "Sigmoid"]) == "Mul"
    assert kernel_op("helper", ["MatMul", "Softmax"]) == "MatMul"
    assert kernel_op("copy", ["Conv"]) == LAYOUT_COPY
    assert kernel_op("unknown", []) == UNKNOWN


def test_an_ops_time_is_the_median_of_the_runs_sums_not_the_sum_of_medians():
    # two conv kernels whose slow runs alternate: every run's conv time is 3 ms
    runs = [[(("a", 0), 1.0), (("b", 0), 2.0), (("c", 0), 0.5)],
            [(("a", 0), 2.0), (("b", 0), 1.0), (("c", 0), 0.5)],
            [(("a", 0), 1.0), (("b", 0), 2.0), (("c", 0), 0.5)],
            [(("a", 0), 2.0), (("b", 0), 1.0), (("c", 0), 0.5)],
            [(("a", 0), 1.0), (("b", 0), 2.0), (("c", 0), 0.5)]]
    op_of = {("a", 0): "Conv", ("b", 0): "Conv", ("c", 0): "Relu"}
    rows = op_times(runs, op_of, total_ms=4.0)
    assert [(r.op_type, r.calls) for r in rows] == [("Conv", 2), ("Relu", 1)]
    assert rows[0].median_ms == pytest.approx(3.0) and rows[0].percent == pytest.approx(75.0)
    # the kernels' medians (1 and 1 ms) add up to less than any run but the fastest takes
    skewed = [[(("a", 0), 1.0), (("b", 0), 1.0)], [(("a", 0), 1.0), (("b", 0), 5.0)],
              [(("a", 0), 5.0), (("b", 0), 1.0)]]
    (conv,) = op_times(skewed, {("a", 0): "Conv", ("b", 0): "Conv"}, total_ms=6.0)
    assert conv.median_ms == pytest.approx(6.0)  # runs sum to 2, 6, 6; medians 1 + 1 = 2


def test_a_call_missing_from_a_run_counts_zero_and_an_unknown_call_counts_as_unknown():
    runs = [[(("a", 0), 1.0), (("x", 0), 0.2)], [(("a", 0), 1.0)], [(("a", 0), 1.0)]]
    rows = {r.op_type: r for r in op_times(runs, {("a", 0): "Conv"}, total_ms=1.0)}
    assert rows[UNKNOWN].median_ms == 0.0 and rows[UNKNOWN].calls == 1
    assert rows["Conv"].median_ms == pytest.approx(1.0)


def test_side_by_side_pairs_op_types_fused_names_and_matrix_products():
    mmopt_ops = [{"op_type": "Conv", "calls": 8, "median_ms": 3.0},
                 {"op_type": "MatMul", "calls": 4, "median_ms": 1.0},
                 {"op_type": "Gemm", "calls": 1, "median_ms": 0.2},
                 {"op_type": LAYOUT_COPY, "calls": 1, "median_ms": 0.05}]
    ort_ops = [{"op_type": "Conv", "nodes": 3, "median_ms": 2.0},
               {"op_type": "FusedConv", "nodes": 2, "median_ms": 2.0},
               {"op_type": "Gemm", "nodes": 3, "median_ms": 1.0},
               {"op_type": "FusedMatMul", "nodes": 1, "median_ms": 0.6},
               {"op_type": "ReorderOutput", "nodes": 1, "median_ms": 0.01}]
    rows = side_by_side(mmopt_ops, ort_ops)
    assert [r["op_type"] for r in rows] == ["Conv", "MatMul/Gemm", LAYOUT_COPY, "ReorderOutput"]
    conv, products = rows[0], rows[1]
    assert conv["onnxruntime_ops"] == ["Conv", "FusedConv"] and conv["onnxruntime_nodes"] == 5
    assert conv["onnxruntime_ms"] == pytest.approx(4.0) and conv["ratio"] == pytest.approx(0.75)
    # a transformer's MatMul + Add is a Gemm to onnxruntime, a MatMul kernel to mmopt
    assert products["mmopt_ops"] == ["MatMul", "Gemm"] and products["mmopt_calls"] == 5
    assert products["mmopt_ms"] == pytest.approx(1.2)
    assert products["onnxruntime_ops"] == ["Gemm", "FusedMatMul"]
    assert products["ratio"] == pytest.approx(1.2 / 1.6)
    # one engine only: no ratio, the other side empty
    assert rows[2]["onnxruntime_ms"] is None and rows[2]["ratio"] is None
    assert rows[3]["mmopt_ms"] is None and rows[3]["ratio"] is None
