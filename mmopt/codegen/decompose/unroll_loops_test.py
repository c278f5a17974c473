"""unroll_loops: Scan and Loop with static iteration counts become straight code that computes what
onnxruntime computes; dynamic control flow is left in place with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    parse,
    rerun_modified,
    run_decompose,
)

SCAN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] init, float[4,2,3] xs, float[2,5,3] ys) => (float[2,3] final, float[2,4,3] seq) {
  final, seq = Scan <num_scan_inputs: int = 2, scan_input_axes: ints = [0, 1],
                     scan_input_directions: ints = [0, 1], scan_output_axes: ints = [1],
                     scan_output_directions: ints = [1],
                     body = step (float[2,3] acc, float[2,3] x, float[2,3] y) => (float[2,3] acc_out,
                                                                               float[2,3] out) {
        s = Add (acc, x)
        acc_out = Mul (s, w)
        out = Sub (acc_out, y)
      }> (init, xs, ys)
}
"""

LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x) => (float[3] total, float[4,3] steps) {
  total, steps = Loop <body = step (int64 i, bool cond, float[3] acc) => (bool cond_out, float[3] acc_out,
                                                                       float[3] scan) {
        cond_out = Identity (cond)
        fi = Cast <to = 1> (i)
        scaled = Mul (x, fi)
        acc_out = Add (acc, scaled)
        scan = Identity (acc_out)
      }> (trip, keep_going, x)
}
"""


def test_scan_with_axes_and_directions_matches_onnxruntime():
    # ys is scanned along axis 1 (5 steps) while xs has 4: a mismatch the rule must refuse
    model = parse(SCAN, w=np.full((2, 3), 0.5, np.float32))
    _, report = run_decompose(model)
    assert report.rejections and "lengths" in report.rejections[0].reason
    model = parse(SCAN.replace("float[2,5,3] ys", "float[2,4,3] ys"), w=np.full((2, 3), 0.5, np.float32))
    rng = np.random.default_rng(0)
    feeds = {"init": rng.standard_normal((2, 3)).astype(np.float32),
             "xs": rng.standard_normal((4, 2, 3)).astype(np.float32),
             "ys": rng.standard_normal((2, 4, 3)).astype(np.float32)}
    decomposed, report = run_decompose(model)
    assert report.counts["unroll_scan"] == 1 and "Scan" not in op_types(decomposed)
    assert_same_on_onnxruntime(model, decomposed, feeds)
    assert not rerun_modified(decomposed)


def test_loop_with_constant_trip_count_matches_onnxruntime():
    model = parse(LOOP, trip=np.array(4, np.int64), keep_going=np.array(True))
    feeds = {"x": np.array([1.0, -2.0, 0.5], np.float32)}
    decomposed, report = run_decompose(model)
    assert report.counts["unroll_loop"] == 1 and "Loop" not in op_types(decomposed)
    assert_same_on_onnxruntime(model, decomposed, feeds)
    assert not rerun_modified(decomposed)


@pytest.mark.parametrize("variant,reason", [
    ("dynamic trip count", "trip count is not a constant"),
    ("computed condition", "body computes its exit condition"),
])
def test_dynamic_control_flow_stays_with_the_reason(variant, reason):
    if variant == "dynamic trip count":
        model = parse(LOOP.replace("g (float[3] x)", "g (float[3] x, int64 trip)"),
                      keep_going=np.array(True))
    else:  # exits when the accumulated sum passes a threshold: data-dependent
        text = LOOP.replace("cond_out = Identity (cond)", "").replace(
            "scan = Identity (acc_out)",
            "scan = Identity (acc_out)\n        total_sum = ReduceSum (acc_out)\n"
            "        cond_out = Less (total_sum, limit)")
        model = parse(text, trip=np.array(4, np.int64), keep_going=np.array(True),
                      limit=np.array(3.0, np.float32))
    decomposed, report = run_decompose(model)
    assert "Loop" in op_types(decomposed)
    assert [r.op for r in report.rejections] == ["Loop"]
    assert reason in report.rejections[0].reason
