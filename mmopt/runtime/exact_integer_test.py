"""int8 weights made uint8 for onnxruntime's reference: the same exact integers on every CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from mmopt.runtime import ort
from mmopt.runtime.exact_integer import exact_integer_weights

K, N = 64, 8


def _saturating_weights(seed: int = 0) -> np.ndarray:
    """Full-range int8 weights whose pairs saturate ``vpmaddubsw`` against a row of 255s."""
    w = np.full((K, N), -128, np.int8)
    w[:, 1::2] = 127
    w[:, 4:] = np.random.default_rng(seed).integers(-128, 128, (K, 4))
    return w


def _activations() -> np.ndarray:
    a = np.full((2, K), 255, np.uint8)
    a[1] = np.random.default_rng(1).integers(0, 256, K)
    return a


def _model(nodes, inputs, outputs, initializers, ms: bool = False) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    return helper.make_model(graph, opset_imports=opsets)


def matmul_integer(w: np.ndarray, zero_point: int | None = 0) -> onnx.ModelProto:
    inputs = ["a", "w", "az"] + (["wz"] if zero_point is not None else [])
    init = {"w": w, "az": np.array(0, np.uint8)}
    if zero_point is not None:
        init["wz"] = np.array(zero_point, np.int8)
    return _model([helper.make_node("MatMulInteger", inputs, ["y"])],
                  [helper.make_tensor_value_info("a", T.UINT8, [2, K])],
                  [helper.make_tensor_value_info("y", T.INT32, [2, N])], init)


def dynamic_quantize_matmul(w: np.ndarray, per_column: bool) -> onnx.ModelProto:
    scale = np.linspace(0.01, 0.02, N).astype(np.float32) if per_column else np.float32(0.01)
    zero = np.zeros(N, np.int8) if per_column else np.array(0, np.int8)
    return _model([helper.make_node("DynamicQuantizeMatMul", ["x", "w", "ws", "wz"], ["y"],
                                    domain="com.microsoft")],
                  [helper.make_tensor_value_info("x", T.FLOAT, [2, K])],
                  [helper.make_tensor_value_info("y", T.FLOAT, [2, N])],
                  {"w": w, "ws": np.asarray(scale), "wz": zero}, ms=True)


def _raw_onnxruntime(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    """The model on onnxruntime as given (no rewrite): what saturates without VNNI."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _reference(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.session(model, label="test reference")
    return ort.run(session, feeds, label="test reference")[0]


@pytest.mark.parametrize("zero_point", [0, -3, None])
def test_matmul_integer_is_exact(zero_point):
    w = _saturating_weights()
    model = matmul_integer(w, zero_point)
    rewritten, count = exact_integer_weights(model)
    assert count == 1
    b = rewritten.graph.node[0].input[1]
    assert {t.name: t.data_type for t in rewritten.graph.initializer}[b] == T.UINT8
    assert "w" not in {t.name for t in rewritten.graph.initializer}  # the int8 original is gone
    a = _activations()
    exact = a.astype(np.int64) @ (w.astype(np.int64) - (zero_point or 0))
    np.testing.assert_array_equal(_reference(model, {"a": a}), exact)
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"a": a})[0], exact)


def test_a_model_file_with_external_weights_is_rewritten(tmp_path):
    """A reference session opened from a path reads the weights stored beside the file."""
    w = _saturating_weights()
    path = tmp_path / "mm.onnx"
    onnx.save(matmul_integer(w), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="mm.weights", size_threshold=0)
    a = _activations()
    exact = a.astype(np.int64) @ w.astype(np.int64)
    session = ort.session(path, label="test reference")
    np.testing.assert_array_equal(ort.run(session, {"a": a}, label="test reference")[0], exact)


def test_conv_integer_and_qlinear_conv_are_exact():
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (4, 8, 3, 3)).astype(np.int8)
    x = rng.integers(0, 256, (1, 8, 6, 6)).astype(np.uint8)
    conv = _model([helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"])],
                  [helper.make_tensor_value_info("x", T.UINT8, [1, 8, 6, 6])],
                  [helper.make_tensor_value_info("y", T.INT32, [1, 4, 4, 4])],
                  {"w": w, "xz": np.array(3, np.uint8), "wz": np.array(0, np.int8)})
    qconv = _model([helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                                     ["y"])],
                   [helper.make_tensor_value_info("x", T.UINT8, [1, 8, 6, 6])],
                   [helper.make_tensor_value_info("y", T.UINT8, [1, 4, 4, 4])],
                   {"xs": np.float32(0.02), "xz": np.array(3, np.uint8), "w": w,
                    "ws": np.linspace(0.001, 0.002, 4).astype(np.float32),
                    "wz": np.zeros(4, np.int8), "ys": np.float32(0.5), "yz": np.array(128, np.uint8)})
    for model in (conv, qconv):
        assert exact_integer_weights(model)[1] == 1
        expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
        got = _reference(model, {"x": x})
        assert np.abs(got.astype(np.int64) - expected).max() <= (0 if model is conv else 1)


def test_dynamic_quantize_matmul_matches_its_integer_definition():
    w = _saturating_weights()
    model = dynamic_quantize_matmul(w, per_column=True)
    assert exact_integer_weights(model)[1] == 1
    x = np.random.default_rng(3).standard_normal((2, K)).astype(np.float32)
    x[0] = np.abs(x[0]) * 4  # a row quantized to (nearly) 255s: saturates without VNNI
    # the op's definition: x quantized dynamically to uint8, an int32 product, then the scales
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    scale = np.float32((hi - lo) / 255)
    zero = np.clip(np.round(-lo / scale), 0, 255)
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    ws = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "ws"))
    expected = ((q - zero).astype(np.int64) @ w.astype(np.int64)) * scale * ws
    np.testing.assert_allclose(_reference(model, {"x": x}), expected, rtol=1e-5, atol=1e-4)


def test_left_alone():
    w = _saturating_weights()
    float_model = _model([helper.make_node("Relu", ["a"], ["y"])],
                         [helper.make_tensor_value_info("a", T.FLOAT, [2])],
                         [helper.make_tensor_value_info("y", T.FLOAT, [2])], {})
    assert exact_integer_weights(float_model) == (float_model, 0)
    # int8 activations: no u8 x s8 product, nothing to do
    signed = matmul_integer(w)
    signed.graph.input[0].type.tensor_type.elem_type = T.INT8
    signed.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(0, np.int8), "az"))
    assert exact_integer_weights(signed)[1] == 0
    # already uint8 weights
    unsigned = matmul_integer((w.astype(np.int16) + 128).astype(np.uint8), None)
    assert exact_integer_weights(unsigned)[1] == 0


def test_ir_version_3_initializers_stay_listed_as_inputs():
    """IR version 3 models list every initializer among the graph inputs; the rewritten ones are
    listed in their place, and onnxruntime loads the result."""
    w = _saturating_weights()
    model = matmul_integer(w)
    model.ir_version = 3
    model.opset_import[0].version = 10
    for tensor in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                               list(tensor.dims)))
    rewritten, count = exact_integer_weights(model)
    assert count == 1
    inputs = {v.name for v in rewritten.graph.input}
    assert {t.name for t in rewritten.graph.initializer} <= inputs and "w" not in inputs
    a = _activations()
    exact = a.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(_reference(model, {"a": a}), exact)


def test_shared_weights_are_rewritten_once():
    w = _saturating_weights()
    model = matmul_integer(w)
    second = onnx.NodeProto()
    second.CopyFrom(model.graph.node[0])
    second.output[0] = "y2"
    model.graph.node.append(second)
    model.graph.output.append(helper.make_tensor_value_info("y2", T.INT32, [2, N]))
    rewritten, count = exact_integer_weights(model)
    assert count == 2
    assert rewritten.graph.node[0].input[1] == rewritten.graph.node[1].input[1]
    assert len(rewritten.graph.initializer) == len(model.graph.initializer)


def _saturation_seen(_unused=None) -> tuple[str, int, int]:
    """In a child process: the CPU it sees, and how far onnxruntime is from the exact product on
    the model as given and on mmopt's reference session."""
    from mmopt.runtime.cpu_mask import seen_isa

    w = _saturating_weights()
    a = _activations()
    exact = a.astype(np.int64) @ w.astype(np.int64)
    raw = int(np.abs(_raw_onnxruntime(matmul_integer(w), {"a": a}) - exact).max())
    ours = int(np.abs(_reference(matmul_integer(w), {"a": a}) - exact).max())
    return seen_isa(), raw, ours


def test_exact_on_a_cpu_without_vnni():
    """Where onnxruntime saturates (a CPU without VNNI, or this one with AVX-512 hidden from CPUID)
    the model as given is wrong and the reference session exact: the rewrite is what fixes it."""
    from mmopt.runtime import cpu_mask
    from mmopt.runtime.bench import call_in_child

    isa = cpu_mask.seen_isa()
    mask = None
    if isa == "avx512_vnni":
        if cpu_mask.unavailable():
            pytest.skip(f"this CPU has VNNI and cannot hide it: {cpu_mask.unavailable()}")
        mask = "avx2"
    elif isa not in ("avx2", "avx512"):
        pytest.skip(f"onnxruntime's u8 x s8 kernels saturate on x86 without VNNI; this is {isa}")
    seen, raw, ours = call_in_child(_saturation_seen, None, mask=mask, what="saturation check")
    assert seen in ("avx2", "avx512")
    assert raw > 1000, "onnxruntime did not saturate: the check would not notice a missing rewrite"
    assert ours == 0
