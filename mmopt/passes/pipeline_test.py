"""pipeline: levels, explicit pass lists, layout, the report (per-pass rule counts, histograms, JSON)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from mmopt.errors import MmoptError
from mmopt.passes._testing import assert_same_outputs, make_model, op_types
from mmopt.passes.pipeline import LEVELS, PASSES, optimize, resolve

RNG = np.random.default_rng(0)

# Conv -> BN -> decomposed hardswish -> Dropout -> Conv(+bias Add) -> GAP -> Flatten -> MatMul + Add
NET = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[1,3,8,8] x) => (float[1,5] y) {
    c = Conv <pads=[1,1,1,1]> (x, w1)
    b = BatchNormalization (c, g, beta, m, v)
    a = Add (b, k3)
    cl = Clip (a, k0, k6)
    hm = Mul (b, cl)
    h = Div (hm, k6)
    d = Dropout (h)
    c2 = Conv (d, w2)
    c2b = Add (c2, b2)
    p = GlobalAveragePool (c2b)
    f = Flatten (p)
    mm = MatMul (f, wf)
    y = Add (mm, bf)
}"""


def _net() -> onnx.ModelProto:
    return make_model(
        NET, w1=RNG.normal(size=(4, 3, 3, 3)).astype(np.float32),
        g=RNG.uniform(0.5, 1.5, 4).astype(np.float32), beta=RNG.normal(size=4).astype(np.float32),
        m=RNG.normal(size=4).astype(np.float32), v=RNG.uniform(0.5, 2, 4).astype(np.float32),
        k0=np.array(0.0, np.float32), k3=np.array(3.0, np.float32), k6=np.array(6.0, np.float32),
        w2=RNG.normal(size=(6, 4, 1, 1)).astype(np.float32),
        b2=RNG.normal(size=(1, 6, 1, 1)).astype(np.float32),
        wf=RNG.normal(size=(6, 5)).astype(np.float32), bf=RNG.normal(size=5).astype(np.float32))


def test_o2_fuses_and_reports_rules_per_pass():
    model = _net()
    out, report = optimize(model, 2)
    onnx.checker.check_model(out)
    assert_same_outputs(model, out)
    assert op_types(out) == {"Conv": 2, "HardSwish": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    by_pass = {p.name: p.rules for p in report.passes if p.rules}
    assert by_pass["eliminate_noops"] == {"eliminate_dropout": 1}
    assert by_pass["fuse_activations"] == {"fuse_hardswish": 1}
    assert by_pass["fuse_batchnorm"] == {"fuse_batchnorm_into_conv": 1}
    assert by_pass["fuse_conv_affine"] == {"fuse_add_into_conv": 1}
    assert by_pass["fuse_gemm"] == {"fuse_matmul_add_into_gemm": 1}
    assert report.nodes_before == 13 and report.nodes_after == 6
    assert report.ops_before["BatchNormalization"] == 1 and "BatchNormalization" not in report.ops_after
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rules_fired"]["fuse_hardswish"] == 1
    assert data["passes"][0]["name"] == "simplify" and "rules" in data["passes"][0]
    _, again = optimize(out, 2)
    assert again.applied == []


def test_levels_are_cumulative_and_o1_does_not_fuse():
    assert LEVELS[1][: len(LEVELS[0])] == LEVELS[0]
    assert LEVELS[2][: len(LEVELS[1])] == LEVELS[1]
    assert LEVELS[3][: len(LEVELS[2])] == LEVELS[2]
    out, report = optimize(_net(), 1)
    assert "BatchNormalization" in op_types(out) and all(not p.rules for p in report.passes)
    out0, report0 = optimize(_net(), 0)
    assert report0.passes == [] and op_types(out0) == op_types(_net())


def test_explicit_passes_disable_and_layout():
    out, report = optimize(_net(), passes=["fuse_batchnorm"])
    assert [p.name for p in report.passes] == ["fuse_batchnorm"] and report.level is None
    assert "BatchNormalization" not in op_types(out) and "Clip" in op_types(out)
    out, _ = optimize(_net(), 2, disable=["fuse_activations"])
    assert "HardSwish" not in op_types(out)
    assert resolve(3, layout="nhwc")[-1] == "convert_layout_nhwc"
    assert resolve(3, layout="nchw") == LEVELS[3]
    assert resolve(passes=["fuse_pad"], layout="nhwc") == ["fuse_pad", "convert_layout_nhwc"]
    out, report = optimize(_net(), 3, layout="nhwc")
    assert report.layout == "nhwc" and report.passes[-1].rules["convert_input_to_nhwc"] == 1
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [1, 8, 8, 3]


def test_errors_are_one_line_mmopt_errors():
    with pytest.raises(MmoptError, match="unknown pass"):
        resolve(2, disable=["fuse_everything"])
    with pytest.raises(MmoptError, match="unknown layout"):
        resolve(3, layout="nchwc")
    with pytest.raises(MmoptError, match="-O3"):
        resolve(2, layout="nhwc")
    assert all(callable(f) for f in PASSES.values())
