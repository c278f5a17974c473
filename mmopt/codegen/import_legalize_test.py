"""Import-time rewrites: exact on onnxruntime, and they fire only where they apply."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from mmopt.codegen.import_legalize import legalize_for_import
from mmopt.runtime.verify import run_onnxruntime


def _conv_transpose_model(kernel=2, stride=2, pads=(0, 0, 0, 0), bias=True, group=1):
    rng = np.random.default_rng(0)
    c_in, c_out = 4, 6
    w = rng.standard_normal((c_in, c_out // group, kernel, kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("ConvTranspose", inputs, ["y"], name="up", kernel_shape=[kernel, kernel],
                            strides=[stride, stride], pads=list(pads), group=group)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, c_in, 5, 7])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _run(model):
    x = np.random.default_rng(1).standard_normal((1, 4, 5, 7)).astype(np.float32)
    return run_onnxruntime(model, {"x": x})["y"]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel", [2, 3])
def test_conv_transpose_kernel_equals_stride_becomes_conv_depth_to_space(kernel, bias):
    model = _conv_transpose_model(kernel, kernel, bias=bias)
    out = legalize_for_import(model)
    onnx.checker.check_model(out)
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["Conv", "DepthToSpace"]
    assert out.graph.output[0].name == "y"
    np.testing.assert_allclose(_run(out), _run(model), rtol=1e-5, atol=1e-5)
    assert legalize_for_import(out) is out  # nothing left to rewrite


@pytest.mark.parametrize("kwargs", [{"kernel": 3, "stride": 2}, {"pads": (1, 1, 1, 1)},
                                    {"group": 2}])
def test_other_conv_transposes_are_left_alone(kwargs):
    model = _conv_transpose_model(**kwargs)
    assert legalize_for_import(model) is model


def test_low_rank_constants_are_broadcast_to_full_rank():
    scale = np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["m"], name="scale"),
         helper.make_node("Add", ["m", "one"], ["y"], name="shift")],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5, 7])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 5, 7])],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(np.float32(1.0), "one")])
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    out = legalize_for_import(model)
    onnx.checker.check_model(out)
    shapes = {t.name: list(t.dims) for t in out.graph.initializer}
    mul = next(n for n in out.graph.node if n.op_type == "Mul")
    assert shapes[mul.input[1]] == [1, 4, 1, 1]
    add = next(n for n in out.graph.node if n.op_type == "Add")
    assert add.input[1] == "one"  # scalars broadcast fine already: untouched
    np.testing.assert_array_equal(_run(out), _run(model))
