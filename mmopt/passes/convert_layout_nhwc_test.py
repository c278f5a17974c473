"""convert_layout_nhwc: NHWC interface, Transposes only at the boundaries, outputs match (transposed)."""

from __future__ import annotations

import numpy as np
import onnx

from mmopt.passes._testing import apply, assert_not_fired, make_model, op_types
from mmopt.passes.convert_layout_nhwc import ConvertLayoutNHWCPass
from mmopt.runtime.verify import run_onnxruntime

RNG = np.random.default_rng(0)
W = {"w1": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32),
     "w2": RNG.normal(size=(5, 4, 1, 1)).astype(np.float32),
     "bias_nhwc": RNG.normal(size=(4,)).astype(np.float32),
     "mean": RNG.normal(size=(1, 3, 1, 1)).astype(np.float32),
     "scales": np.array([1, 1, 2, 2], np.float32), "roi": np.array([], np.float32)}


def _boundary_transposes(model: onnx.ModelProto) -> bool:
    """Every Transpose reads a graph input or writes a graph output."""
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    return all(n.input[0] in inputs or n.output[0] in outputs
               for n in model.graph.node if n.op_type == "Transpose")


def test_conv_net_gets_nhwc_interface_with_boundary_transposes_only():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,8,8] x) => (float[1,5,8,8] y, float[1,4] logits) {
        c = Sub (x, mean)
        h = Conv <pads=[1,1,1,1]> (c, w1)
        r = Relu (h)
        p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r)
        u = Resize <mode="nearest"> (p, roi, scales)
        y = Conv (u, w2)
        g = GlobalAveragePool (r)
        logits = Flatten (g)
    }""", **W)
    out, instance, result = apply(ConvertLayoutNHWCPass, model)
    assert result.modified
    assert instance.counts["convert_input_to_nhwc"] == 1 and instance.counts["convert_output_to_nhwc"] == 1
    onnx.checker.check_model(out)
    assert [i.name for i in out.graph.input] == ["x"]
    assert [o.name for o in out.graph.output] == ["y", "logits"]
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*out.graph.input, *out.graph.output]}
    assert dims == {"x": [1, 8, 8, 3], "y": [1, 8, 8, 5], "logits": [1, 4]}
    assert op_types(out)["Transpose"] == 2 and _boundary_transposes(out)

    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    ref = run_onnxruntime(model, {"x": x})
    got = run_onnxruntime(out, {"x": x.transpose(0, 2, 3, 1)})
    np.testing.assert_allclose(got["y"], ref["y"].transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=1e-5, atol=1e-5)

    again, instance2, result2 = apply(ConvertLayoutNHWCPass, out)
    assert not result2.modified, instance2.counts


def test_tf_style_inner_transposes_cancel():
    # An NHWC model as TF converters write it: every conv wrapped in Transposes, NHWC ops between.
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,8,8,3] x) => (float[1,8,8,5] y) {
        a = Transpose <perm=[0,3,1,2]> (x)
        h = Conv <pads=[1,1,1,1]> (a, w1)
        b = Transpose <perm=[0,2,3,1]> (h)
        r = Relu (b)
        s = Add (r, bias_nhwc)
        d = Transpose <perm=[0,3,1,2]> (s)
        y1 = Conv (d, w2)
        y = Transpose <perm=[0,2,3,1]> (y1)
    }""", **W)
    out, instance, result = apply(ConvertLayoutNHWCPass, model)
    assert result.modified and "convert_input_to_nhwc" not in instance.counts
    onnx.checker.check_model(out)
    assert op_types(out)["Transpose"] == 2 and _boundary_transposes(out)
    x = RNG.normal(size=(1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnxruntime(out, {"x": x})["y"], run_onnxruntime(model, {"x": x})["y"],
                               rtol=1e-5, atol=1e-5)
    assert not apply(ConvertLayoutNHWCPass, out)[2].modified


def test_model_without_convolutions_is_left_alone():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,8,8] x) => (float[1,3,8,8] y) {
        y = Relu (x)
    }""")
    assert_not_fired(ConvertLayoutNHWCPass, model)
