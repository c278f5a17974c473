"""The onnxruntime session factory: what each engine executes, and one-line errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, parser

from mmopt.errors import MmoptError
from mmopt.runtime import ort

# x -> Q -> DQ -> MatMul (DQ'd int8 weights) -> Q -> DQ -> y: one QDQ group, as mmopt writes them
QDQ_MATMUL = """
<ir_version: 8, opset_import: ["" : 17]>
qdq (float[4,16] x) => (float[4,8] y) {
    xq = QuantizeLinear (x, sx, zx)
    xd = DequantizeLinear (xq, sx, zx)
    wd = DequantizeLinear (wq, sw, zw)
    m = MatMul (xd, wd)
    mq = QuantizeLinear (m, sy, zy)
    y = DequantizeLinear (mq, sy, zy)
}
"""
# powers of two and small integers: every float product and sum below is exact, so the definition
# can be computed in numpy without rounding differences
SX, ZX, SW, SY, ZY = 2.0**-4, 128, 2.0**-5, 2.0**-3, 100


def _qdq_matmul() -> tuple[onnx.ModelProto, np.ndarray]:
    model = parser.parse_model(QDQ_MATMUL)
    weights = np.random.default_rng(0).integers(-8, 9, (16, 8)).astype(np.int8)
    consts = {"sx": np.float32(SX), "zx": np.uint8(ZX), "wq": weights, "sw": np.float32(SW),
              "zw": np.int8(0), "sy": np.float32(SY), "zy": np.uint8(ZY)}
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k)
                                   for k, v in consts.items())
    onnx.checker.check_model(model)
    return model, weights


def _definition(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """dequantize -> float MatMul -> quantize -> dequantize, by the ONNX operator definitions."""
    xq = np.clip(np.rint(x / SX) + ZX, 0, 255)
    m = ((xq - ZX) * SX) @ (weights.astype(np.float64) * SW)
    mq = np.clip(np.rint(m / SY) + ZY, 0, 255)
    return ((mq - ZY) * SY).astype(np.float32)


def test_reference_engine_computes_the_qdq_definition():
    model, weights = _qdq_matmul()
    x = (np.random.default_rng(1).integers(-100, 100, (4, 16)) * SX).astype(np.float32)
    expected = _definition(x, weights)
    assert len(np.unique(expected)) > 8  # not all clipped to one value
    session = ort.session(model, label="qdq matmul")
    (got,) = ort.run(session, {"x": x}, label="qdq matmul")
    np.testing.assert_array_equal(got, expected)


def test_engines_run_different_graphs(tmp_path):
    """``reference`` keeps the QDQ graph as written; ``onnxruntime`` fuses it into an integer
    kernel (whose arithmetic depends on the CPU)."""
    model, _ = _qdq_matmul()
    ops = {}
    for optimization in ("off", "all"):
        path = tmp_path / f"{optimization}.onnx"
        ort.session(model, label="qdq matmul", optimization=optimization,
                    optimized_model_path=path)
        ops[optimization] = {n.op_type for n in onnx.load(path).graph.node}
    assert "MatMul" in ops["off"] and "DequantizeLinear" in ops["off"]
    assert "MatMul" not in ops["all"] and "QLinearMatMul" in ops["all"]
    levels = {engine: ort.engine_session(model, engine, label="m").get_session_options()
              .graph_optimization_level.name for engine in ort.ENGINES}
    assert levels == {"reference": "ORT_DISABLE_ALL", "onnxruntime": "ORT_ENABLE_ALL"}


def test_sources_and_options(tmp_path):
    model, _ = _qdq_matmul()
    onnx.save(model, tmp_path / "m.onnx")
    x = np.zeros((4, 16), np.float32)
    outs = [ort.run(ort.session(source, label="m"), {"x": x}, label="m")[0]
            for source in (model, tmp_path / "m.onnx", str(tmp_path / "m.onnx"),
                           model.SerializeToString())]
    assert all(np.array_equal(o, outs[0]) for o in outs)
    options = ort.session(model, label="m", threads=2, inter_op_threads=1).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    with pytest.raises(ValueError, match="optimization='fast'"):
        ort.session(model, label="m", optimization="fast")


def test_errors_are_one_line_and_name_the_label(tmp_path):
    with pytest.raises(MmoptError, match=r"^candidate gone\.onnx: onnxruntime cannot load the "
                                         r"model \(.*\)$") as info:
        ort.session(tmp_path / "gone.onnx", label="candidate gone.onnx")
    assert "\n" not in info.value.message
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(MmoptError, match="^junk: onnxruntime cannot load the model"):
        ort.session(tmp_path / "junk.onnx", label="junk")
    model, _ = _qdq_matmul()
    session = ort.session(model, label="m")
    with pytest.raises(MmoptError, match=r"^sample 3: onnxruntime failed to run \(.*\)$"):
        ort.run(session, {"x": np.zeros((2, 3), np.float32)}, label="sample 3")
    with pytest.raises(MmoptError, match="--eval-engine artifact: use one of reference, "
                                         "onnxruntime"):
        ort.check_engine("artifact")


def test_a_run_failure_is_one_line_with_nothing_logged_from_cpp(capfd):
    """Fuzzing (transformer_block/wrong_dims/765, ``mmopt check``): a Reshape whose input lost a
    dim loads and fails at run time; onnxruntime also logged the failure from C++ (a colored
    ``[E:onnxruntime:, sequential_executor.cc ...]`` line on stderr) next to mmopt's error."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([1, 16, 4, 16], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.session(model, label="m.onnx")
    with pytest.raises(MmoptError, match=r"^m.onnx: onnxruntime failed to run .*Reshape"):
        ort.run(session, {"x": np.zeros((1, 64), np.float32)}, label="m.onnx")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
