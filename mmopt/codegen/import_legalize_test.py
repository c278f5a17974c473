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


def _gather_model(index, axis):
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["g"], name="pick", axis=axis),
         helper.make_node("Relu", ["g"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5, 7])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(index, np.int64), "i")])
    return onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize(("index", "axis"), [(0, 0), (2, 1), (-1, 1), (-7, -1), (6, 3)])
def test_gather_of_one_constant_index_becomes_a_slice(index, axis):
    """``qkv[0]`` of an attention block: Slice + Squeeze, the same values on onnxruntime (negative
    indices and axes included); the compile then has no ``take`` (whose fast mode made TVM print a
    warning per Gather)."""
    model = _gather_model(index, axis)
    out = legalize_for_import(model)
    onnx.checker.check_model(out)
    assert [n.op_type for n in out.graph.node] == ["Slice", "Squeeze", "Relu"]
    np.testing.assert_array_equal(_run(out), _run(model))


def test_new_constants_of_an_ir3_model_are_graph_inputs_too():
    """IR version 3 lists every initializer among the graph's inputs (TVM's importer warns about
    one that is not: an old ONNX test model's Gather inside a Scan did)."""
    model = _gather_model(1, 1)
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer)
    out = legalize_for_import(model)
    assert {t.name for t in out.graph.initializer} <= {i.name for i in out.graph.input}
    np.testing.assert_array_equal(_run(out), _run(model))


@pytest.mark.parametrize(("index", "axis"), [([0, 2], 1), (4, 1), (-5, 1)])
def test_other_gathers_are_left_alone(index, axis):
    """Several indices, or one outside the dim (onnxruntime reports it at run time)."""
    model = _gather_model(index, axis)
    assert legalize_for_import(model) is model


# ------------------------------------------------------------------------------------------------
# converters for symbolic dims (dynamic models): Resize by integer scales, Range up to a dim


def _resize_range_model():
    """``x [1, 2, h, w]``: a stride-2 convolution up-sampled 2x and concatenated with ``x`` (an FPN
    neck), and ``Range(0, w, 1)`` from the input's shape (how detectors exported with dynamic
    axes compute anchor grids)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["down"], name="down", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["down", "", "scales"], ["up"], name="up", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Concat", ["x", "up"], ["cat"], name="cat", axis=1),
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "three"], ["width"], name="width", axis=0),
        helper.make_node("Range", ["zero", "width", "one"], ["cols"], name="cols"),
        helper.make_node("Cast", ["cols"], ["grid"], name="grid", to=onnx.TensorProto.FLOAT),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "k"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array(3, np.int64), "three"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(1, np.int64), "one")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, "h", "w"])],
        [helper.make_tensor_value_info("cat", onnx.TensorProto.FLOAT, [1, 4, "h", "w"]),
         helper.make_tensor_value_info("grid", onnx.TensorProto.FLOAT, ["w"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


_DIMS = ("h=16..64:16", "w=16..80:16")


def test_symbolic_resize_and_range_keep_sizes_in_the_input_dims():
    """The up-sampled map's size is written in the input's dims, equal to the map it is
    concatenated with (the concatenation keeps a static rank and symbolic shape), and the
    range's length is ``w`` itself (not a fresh variable). (The simplification of the size
    matters in deeper necks: tests/test_dynamic_shapes.py's detector test fails without it.)"""
    from mmopt.codegen.relax_import import to_relax
    from mmopt.ir.dims import dim_ranges, parse_dim_option

    dims = dim_ranges([parse_dim_option(d) for d in _DIMS])
    main = to_relax(_resize_range_model(), dims=dims)["main"]
    lines = main.script().splitlines()

    def binding(op: str) -> str:
        found = [ln for ln in lines if f"= {op}(" in ln]
        assert len(found) == 1, lines
        return found[0]

    assert "R.Tensor((1, 2, h_blocks * 16, w_blocks * 16)" in binding("R.image.resize2d")
    assert "R.Tensor((1, 4, h_blocks * 16, w_blocks * 16)" in binding("R.concat")
    assert "R.Tensor((w_blocks * 16,)" in binding("R.arange")


def test_symbolic_resize_and_range_match_onnxruntime_at_several_sizes(tmp_path):
    import mmopt
    from mmopt.ir.dims import parse_dim_option

    result = mmopt.compile(_resize_range_model(), "x86", tmp_path / "m",
                           dims=[parse_dim_option(d) for d in _DIMS])
    v = result.verification
    assert v.passed and v.max_abs <= 1e-5, v.to_dict()
    assert len(v.runs) >= 5 and any((r["sizes"]["w"] // 16) % 2 for r in v.runs)
    whats = [d["what"] for d in result.meta.extra["dynamic_kernels"]["degradations"]]
    assert not any(w.startswith("pack_weights:") for w in whats), whats


def _quantized_conv_transpose():
    """Conv -> ConvTranspose(k=s=2) -> Relu, quantized (QDQ, per-channel int8 weights)."""
    from mmopt.quantize import quantize

    rng = np.random.default_rng(2)
    w0 = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    w1 = (rng.standard_normal((8, 8, 2, 2)) * 0.3).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w0"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
         helper.make_node("ConvTranspose", ["c", "w1", "b1"], ["u"], name="up",
                          kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Relu", ["u"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 12, 12])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(b1, "b1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)} for _ in range(8)]
    qdq, _ = quantize(model, calib, method="minmax", activations="uint8")
    return onnx.shape_inference.infer_shapes(qdq)


def test_quantized_conv_transpose_keeps_integer_weights_and_quantizes_before_the_shuffle(tmp_path):
    """A quantized ConvTranspose(k=s): the 1x1 conv reads int8 weights through a
    DequantizeLinear (so it compiles to an integer kernel, not a float one), the output is
    quantized before DepthToSpace (which then moves bytes), and onnxruntime without graph
    optimizations gives the same outputs before and after the rewrite, bit for bit."""
    import mmopt
    from mmopt.codegen.int8_paths import record_int8_kernels
    from mmopt.runtime.ort import session

    qdq = _quantized_conv_transpose()
    out = legalize_for_import(qdq)
    onnx.checker.check_model(out)
    nodes = {n.name: n for n in out.graph.node}
    conv = nodes["up.as_conv"]
    weight = next(n for n in out.graph.node if n.output[0] == conv.input[1])
    assert weight.op_type == "DequantizeLinear"
    d2s = nodes["up.depth_to_space"]
    before = next(n for n in out.graph.node if n.output[0] == d2s.input[0])
    assert before.op_type == "QuantizeLinear" and before.input[0] == conv.output[0]
    x = np.random.default_rng(4).standard_normal((1, 4, 6, 6)).astype(np.float32)
    want = session(qdq, label="qdq").run(None, {"x": x})[0]
    got = session(out, label="rewritten").run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    with record_int8_kernels() as kernels:
        result = mmopt.compile(qdq, "x86-avx2", tmp_path / "up")
    assert result.verification.passed
    assert "float" not in [k["path"] for k in kernels], kernels
