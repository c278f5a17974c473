"""Tests for mmopt.ir.inspect: MACs, parameters, histogram, I/O, rendering."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from mmopt.ir.inspect import InspectReport, TensorInfo, inspect_model, render


def parse(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """Parse ONNX text syntax, add numpy initializers and check the model.

    Note: in the text syntax ``float y`` declares a *scalar*; outputs whose shape
    should come from inference get their shape cleared with `unshape_outputs`.
    """
    model = onnx.parser.parse_model(text)
    for name, array in initializers.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model)
    return model


def unshape_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the declared shapes of the graph outputs (rank unknown)."""
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    return model


HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


# --------------------------------------------------------------------------- #
# MACs
# --------------------------------------------------------------------------- #


def test_conv_with_group_and_stride():
    # X [1,4,8,8], W [6, 4/2, 3, 3], stride 2, pad 1 -> Y [1,6,4,4]
    model = parse(
        HEADER
        + """
        g (float[1,4,8,8] x) => (float[1,6,4,4] y) {
            y = Conv <group = 2, strides = [2, 2], pads = [1, 1, 1, 1]> (x, w, b)
        }
        """,
        w=np.zeros((6, 2, 3, 3), np.float32),
        b=np.zeros(6, np.float32),
    )
    report = inspect_model(model)
    # N * C_out * H_out * W_out * (C_in/group) * kH * kW
    assert report.macs == 1 * 6 * 4 * 4 * 2 * 3 * 3 == 1728
    assert report.flops == 3456
    assert report.macs_by_op == {"Conv": 1728}
    assert report.unknown_shape_nodes == []
    # w and b are initializers only, not graph inputs
    assert [t.name for t in report.inputs] == ["x"]


def test_depthwise_conv_output_shape_from_inference():
    # output shape left unknown in the model: it must come from shape inference
    model = unshape_outputs(
        parse(
            HEADER
            + """
            g (float[2,8,10,10] x, float[8,1,3,3] w) => (float y) {
                y = Conv <group = 8> (x, w)
            }
            """
        )
    )
    report = inspect_model(model)
    # Y [2,8,8,8]; each output pixel reads 1 channel x 3x3
    assert report.macs == 2 * 8 * 8 * 8 * 1 * 3 * 3 == 9216
    assert report.outputs == [TensorInfo("y", "float32", [2, 8, 8, 8])]


def test_gemm_trans_b_and_trans_a():
    model = parse(
        HEADER
        + """
        g (float[4,5] a, float[3,5] b, float[5,7] c, float[5,2] d) => (float y1, float y2) {
            y1 = Gemm <transB = 1> (a, b)
            y2 = Gemm <transA = 1> (c, d)
        }
        """
    )
    report = inspect_model(model)
    # y1: A [4,5], B^T [5,3] -> M=4, K=5, N=3 ; y2: A^T [7,5], B [5,2] -> M=7, K=5, N=2
    # (transA never changes M*K, the element count of A; transB decides which dim is N)
    assert report.macs == 4 * 3 * 5 + 7 * 2 * 5 == 130
    assert report.macs_by_op == {"Gemm": 130}


def test_gemm_trans_b_exact():
    model = parse(
        HEADER
        + """
        g (float[4,5] a) => (float[4,3] y) {
            y = Gemm <transB = 1> (a, w, bias)
        }
        """,
        w=np.zeros((3, 5), np.float32),
        bias=np.zeros(3, np.float32),
    )
    report = inspect_model(model)
    assert report.macs == 4 * 3 * 5 == 60
    assert report.parameter_count == 15 + 3


def test_batched_matmul_broadcasting():
    model = parse(
        HEADER
        + """
        g (float[2,1,3,4] a, float[5,4,6] b, float[4] v, float[2,4,6] c, float[2,3,4] d)
          => (float y1, float y2, float y3) {
            y1 = MatMul (a, b)
            y2 = MatMul (v, c)
            y3 = MatMul (d, v)
        }
        """
    )
    report = inspect_model(model)
    y1 = (2 * 5) * 3 * 6 * 4  # batch [2,1] x [5] -> [2,5]; M=3, N=6, K=4
    y2 = 2 * 1 * 6 * 4  # 1-D A acts as [1,4]
    y3 = 2 * 3 * 1 * 4  # 1-D B acts as [4,1]
    assert (y1, y2, y3) == (720, 48, 24)
    assert report.macs == y1 + y2 + y3
    assert report.macs_by_op == {"MatMul": 792}


def test_conv_transpose():
    model = parse(
        HEADER
        + """
        g (float[1,4,5,5] x, float[4,3,3,3] w1, float[4,2,3,3] w2) => (float y1, float y2) {
            y1 = ConvTranspose <strides = [2, 2]> (x, w1)
            y2 = ConvTranspose <group = 2> (x, w2)
        }
        """
    )
    report = inspect_model(model)
    # per input pixel: N * C_in * H_in * W_in * (C_out/group) * kH * kW
    y1 = 1 * 4 * 5 * 5 * 3 * 3 * 3
    y2 = 1 * 4 * 5 * 5 * 2 * 3 * 3
    assert (y1, y2) == (2700, 1800)
    assert report.macs == 4500
    assert report.macs_by_op == {"ConvTranspose": 4500}


def test_data_propagation_resolves_computed_shapes():
    # Reshape's target shape is computed from Shape(x): only data_prop resolves it
    model = parse(
        HEADER
        + """
        g (float[2,3,4] x, float[12,5] w) => (float y) {
            n = Shape <start = 0, end = 1> (x)
            c = Constant <value = int64[1] {12}> ()
            s = Concat <axis = 0> (n, c)
            r = Reshape (x, s)
            y = MatMul (r, w)
        }
        """
    )
    report = inspect_model(model)
    assert report.macs == 2 * 5 * 12 == 120
    assert report.unknown_shape_nodes == []


def test_no_mac_ops_gives_zero():
    model = parse(HEADER + "g (float[3] x) => (float[3] y) { y = Relu (x) }")
    report = inspect_model(model)
    assert report.macs == 0
    assert report.flops == 0
    assert report.macs_by_op == {}


# --------------------------------------------------------------------------- #
# Symbolic / unknown shapes
# --------------------------------------------------------------------------- #


def test_symbolic_dims_give_unknown_macs():
    model = parse(
        HEADER
        + """
        g (float[N,16] x, float[16,8] w, float[1,3,H,W] img, float[4,3,3,3] k)
          => (float y, float z) {
            y = MatMul (x, w)
            z = Conv (img, k)
        }
        """
    )
    model.graph.node[0].name = "mm"
    model.graph.node[1].name = "conv"
    report = inspect_model(model)
    assert report.macs is None
    assert report.flops is None
    assert report.macs_by_op == {}
    assert report.unknown_shape_nodes == ["mm", "conv"]
    assert report.inputs[0] == TensorInfo("x", "float32", ["N", 16])
    assert report.inputs[2].shape == [1, 3, "H", "W"]


def test_partially_known_macs_sum_known_nodes():
    model = parse(
        HEADER
        + """
        g (float[N,16] x, float[2,16] a, float[16,8] w) => (float y, float z) {
            y = MatMul (x, w)
            z = MatMul (a, w)
        }
        """
    )
    report = inspect_model(model)
    assert report.macs == 2 * 8 * 16 == 256
    assert report.unknown_shape_nodes == ["<MatMul #0>"]  # unnamed node label


def test_symbolic_batch_resolved_by_broadcast():
    # batch dim "B" broadcast against 3 must be 3 (or 1 -> 3): result is 3
    model = parse(
        HEADER
        + """
        g (float[B,2,4] a, float[3,4,5] b) => (float y) {
            y = MatMul (a, b)
        }
        """
    )
    assert inspect_model(model).macs == 3 * 2 * 5 * 4


def test_symbolic_batch_taken_from_known_output_shape():
    # batch "B" cannot be resolved from the inputs, but the stored output shape has it
    model = parse(
        HEADER
        + """
        g (float[B,2,4] a, float[1,4,5] b) => (float[3,2,5] y) {
            y = MatMul (a, b)
        }
        """
    )
    assert inspect_model(model).macs == 3 * 2 * 5 * 4


def test_unknown_dim_in_tensor_info():
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = inspect_model(model)
    assert report.inputs == [TensorInfo("x", "int64", [None, 3])]
    assert report.outputs == [TensorInfo("y", "int64", [None, 3])]


def test_shape_inference_failure_falls_back(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("inference failed")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", boom)
    # r has a stored value_info, t does not: without inference only r is known
    model = parse(
        HEADER
        + """
        g (float[4,5] a, float[5,6] b) => (float[4,6] y, float[4,6] z) <float[4,5] r> {
            r = Relu (a)
            y = MatMul (r, b)
            t = Relu (a)
            z = MatMul (t, b)
        }
        """
    )
    report = inspect_model(model)
    assert report.macs == 4 * 6 * 5
    assert report.unknown_shape_nodes == ["<MatMul #3>"]
    assert report.outputs[0] == TensorInfo("y", "float32", [4, 6])


# --------------------------------------------------------------------------- #
# Parameters, histogram, metadata
# --------------------------------------------------------------------------- #


def test_parameter_count_and_bytes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4])  # old style
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node(
            "Constant",
            [],
            ["c"],
            value=numpy_helper.from_array(np.ones((2, 4), np.float16)),
        ),
        helper.make_node("Constant", [], ["s"], value_ints=[1, 2, 3]),
        helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["m", "cf"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.zeros((3, 4), np.float32), "w"),  # 12 el, 48 B
        numpy_helper.from_array(np.zeros(5, np.int64), "idx"),  # 5 el, 40 B
    ]
    graph = helper.make_graph(nodes, "g", [x, w_in], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = inspect_model(model)
    # initializers 12 + 5, Constant tensor 8 (float16), Constant ints 3
    assert report.parameter_count == 12 + 5 + 8 + 3 == 28
    assert report.parameter_bytes == 48 + 40 + 16 + 24 == 128
    # "w" is an initializer, so it is not a real input
    assert report.inputs == [TensorInfo("x", "float32", [2, 3])]
    assert report.macs == 2 * 4 * 3


def test_sub_byte_parameter_bytes():
    t = helper.make_tensor("q", TensorProto.INT4, [3, 3], [1] * 9)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[t],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    report = inspect_model(model)
    assert report.parameter_count == 9
    assert report.parameter_bytes == 5  # 9 nibbles packed -> 5 bytes


def _if_model() -> onnx.ModelProto:
    """Main graph with an If whose branches hold more nodes and a custom op."""
    then_g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["t0"]),
            helper.make_node("Relu", ["t0"], ["t1"]),
            helper.make_node("MyOp", ["t1"], ["t"], domain="com.example"),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])],
        initializer=[numpy_helper.from_array(np.zeros(7, np.float32), "unused")],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "main",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        producer_name="unit-test",
        producer_version="1.2",
    )
    return model


def test_op_histogram_includes_subgraphs():
    report = inspect_model(_if_model())
    assert report.op_histogram == {
        "Relu": 3,
        "Greater": 1,
        "If": 1,
        "Neg": 1,
        "ReduceSum": 1,
        "com.example::MyOp": 1,
    }
    # sorted by count, most frequent first (ties by name)
    assert list(report.op_histogram) == [
        "Relu",
        "Greater",
        "If",
        "Neg",
        "ReduceSum",
        "com.example::MyOp",
    ]
    assert report.node_count == 8
    # subgraph initializer counts as parameters: zero (1) + unused (7)
    assert report.parameter_count == 8
    assert report.parameter_bytes == 32
    assert report.opset == 17
    assert report.producer == "unit-test 1.2"
    assert report.macs == 0


def test_to_dict_round_trips_through_json():
    report = inspect_model(_if_model())
    data = report.to_dict()
    decoded = json.loads(json.dumps(data))
    assert decoded == data
    assert decoded["flops"] == 0
    assert decoded["inputs"] == [{"name": "x", "dtype": "float32", "shape": [4]}]
    assert decoded["op_histogram"]["com.example::MyOp"] == 1
    assert set(decoded) == {
        "inputs",
        "outputs",
        "opset",
        "producer",
        "node_count",
        "op_histogram",
        "parameter_count",
        "parameter_bytes",
        "macs",
        "macs_by_op",
        "unknown_shape_nodes",
        "flops",
    }


def test_to_dict_with_unknown_macs():
    report = InspectReport(
        inputs=[TensorInfo("x", "float32", ["N", None])],
        outputs=[],
        opset=17,
        producer="",
        node_count=1,
        op_histogram={"MatMul": 1},
        parameter_count=0,
        parameter_bytes=0,
        macs=None,
        macs_by_op={},
        unknown_shape_nodes=["mm"],
    )
    decoded = json.loads(json.dumps(report.to_dict()))
    assert decoded["macs"] is None and decoded["flops"] is None
    assert decoded["inputs"][0]["shape"] == ["N", None]


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #


def _render_to_text(report: InspectReport) -> str:
    buffer = io.StringIO()
    render(report, Console(file=buffer, width=200, color_system=None))
    return buffer.getvalue()


def test_render_prints_ops_and_summary():
    text = _render_to_text(inspect_model(_if_model()))
    for needle in ("ReduceSum", "com.example::MyOp", "Relu", "unit-test 1.2", "Op histogram"):
        assert needle in text
    assert "[4]" in text  # input shape


def test_render_macs_units_and_markup_safe_names():
    model = parse(
        HEADER
        + """
        g (float[batch,64] x, float[64,32] w, float[8,64] a) => (float y, float z) {
            y = MatMul (x, w)
            z = MatMul (a, w)
        }
        """
    )
    model.graph.node[0].name = "[bold]mm"  # must not be taken as rich markup
    text = _render_to_text(inspect_model(model))
    assert "0.016 M" in text  # 8*32*64 = 16384 MACs
    assert "[batch, 64]" in text
    assert "[bold]mm" in text


@pytest.mark.parametrize(
    "macs, expected", [(3_500_000_000, "3.500 G"), (2_000_000, "2.000 M"), (None, "unknown")]
)
def test_render_macs_formatting(macs, expected):
    report = InspectReport(
        inputs=[],
        outputs=[],
        opset=17,
        producer="p",
        node_count=1,
        op_histogram={"Conv": 1},
        parameter_count=1_500_000,
        parameter_bytes=6_000_000,
        macs=macs,
        macs_by_op={} if macs is None else {"Conv": macs},
    )
    text = _render_to_text(report)
    assert expected in text
    assert "1.500 M" in text  # parameters in M
