"""simplify: folds constants and shape subgraphs; verified on onnxruntime; honest ``modified``."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper, parser

from mmopt import ir as mir
from mmopt.passes import simplify as simplify_module
from mmopt.passes.pipeline import optimize
from mmopt.passes.simplify import SimplifyPass
from mmopt.runtime.verify import run_onnxruntime

SHAPE_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[1,3,8,8] x) => (float[1,128] y) {
    c = Conv <pads=[1,1,1,1]> (x, w)
    s = Shape(c)
    n = Gather <axis=0> (s, zero)
    nu = Unsqueeze(n, axes0)
    shape = Concat <axis=0> (nu, minus1)
    scale = Add(half, half)
    scaled = Mul(c, scale)
    y = Reshape(scaled, shape)
}"""

NOTHING_TO_FOLD = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[1,3,8,8] x) => (float[1,2,8,8] y) {
    c = Conv <pads=[1,1,1,1]> (x, w)
    y = Relu(c)
}"""


def _model(text: str) -> onnx.ModelProto:
    model = parser.parse_model(text)
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
        "zero": np.array(0, dtype=np.int64),
        "axes0": np.array([0], dtype=np.int64),
        "minus1": np.array([-1], dtype=np.int64),
        "half": np.array(0.75, dtype=np.float32),
    }
    used = {i for n in model.graph.node for i in n.input}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items() if k in used)
    onnx.checker.check_model(model)
    return model


def _run(model):
    feeds = {"x": np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)}
    return run_onnxruntime(model, feeds)


def test_folds_shape_chain_and_constants():
    model = _model(SHAPE_CHAIN)
    result = SimplifyPass()(ir.serde.deserialize_model(model))
    assert result.modified
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out)
    ops = [n.op_type for n in out.graph.node]
    # Shape/Gather/Unsqueeze/Concat and the constant Add are folded; no fusion happens here
    assert sorted(ops) == ["Conv", "Mul", "Reshape"], ops
    np.testing.assert_allclose(_run(out)["y"], _run(model)["y"], rtol=1e-6, atol=1e-6)
    assert mir.dims_of(out.graph.output[0]) == [1, 128]


def test_second_run_reports_unmodified():
    model = ir.serde.deserialize_model(_model(SHAPE_CHAIN))
    first = SimplifyPass()(model)
    second = SimplifyPass()(first.model)
    assert first.modified and not second.modified


def test_nothing_to_fold_is_not_modified():
    result = SimplifyPass()(ir.serde.deserialize_model(_model(NOTHING_TO_FOLD)))
    assert not result.modified
    assert [n.op_type for n in result.model.graph] == ["Conv", "Relu"]


def test_keeps_batchnorm_for_the_fusion_passes():
    model = parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,2,4,4] x) => (float[1,2,4,4] y) {
        c = Conv (x, w)
        y = BatchNormalization (c, g, b, m, v)
    }""")
    rng = np.random.default_rng(0)
    for name, shape in [("w", (2, 2, 1, 1)), ("g", (2,)), ("b", (2,)), ("m", (2,))]:
        model.graph.initializer.append(numpy_helper.from_array(rng.random(shape, dtype=np.float32), name))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(2, np.float32), "v"))
    result = SimplifyPass()(ir.serde.deserialize_model(model))
    assert "BatchNormalization" in [n.op_type for n in result.model.graph]


def test_falls_back_when_onnxsim_fails(monkeypatch, caplog):
    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(simplify_module, "_onnxsim", broken)
    model = _model(SHAPE_CHAIN)
    pass_ = SimplifyPass()
    result = pass_(ir.serde.deserialize_model(model))
    assert pass_.used_fallback
    assert "onnxsim failed" in caplog.text
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out)
    assert "Shape" not in [n.op_type for n in out.graph.node]  # onnxscript folded the chain
    np.testing.assert_allclose(_run(out)["y"], _run(model)["y"], rtol=1e-6, atol=1e-6)


def test_pipeline_levels_and_report():
    model = _model(SHAPE_CHAIN)
    out0, rep0 = optimize(model, 0)
    assert rep0.passes == [] and len(out0.graph.node) == len(model.graph.node)
    out2, rep2 = optimize(model, 2)
    assert rep2.applied == ["simplify", "fuse_conv_affine"]  # the folded scale goes into the Conv
    assert rep2.nodes_before == 8 and rep2.nodes_after == 2
    assert rep2.to_dict()["ops_after"] == {"Conv": 1, "Reshape": 1}
    _, again = optimize(out2, 2)
    assert again.applied == []


def test_pipeline_rejects_unknown_names():
    from mmopt.errors import MmoptError

    with pytest.raises(MmoptError, match="unknown pass"):
        optimize(_model(NOTHING_TO_FOLD), passes=["fold_everything"])
    with pytest.raises(MmoptError, match="-O7"):
        optimize(_model(NOTHING_TO_FOLD), 7)
