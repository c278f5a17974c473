"""decompose_integer_ops: integer convolution and matmul are exact, judged against numpy references
of the operators' ONNX definitions (int64 accumulators, float32 requantization rounded half to
even); a dynamically quantized model (ConvInteger + MatMulInteger, as onnxruntime's
quantize_dynamic writes them) compiles and matches onnx's reference implementation.

onnxruntime is a second opinion only where its integer kernels are exact on every CPU: uint8 x
uint8. Its uint8 x int8 kernels depend on the instruction set even with graph optimizations off: on
AVX2 without VNNI, products are summed in saturating int16 pairs, so a verdict against them would
hold on one machine and fail on another. The weights below span the full int8 range, where such
pairs pass int16 (``255 * 127 * 2 > 32767``): the references are exact there, onnxruntime on an
AVX2-only CPU is not.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mmopt import ir as mir
from mmopt.codegen.decompose._testing import compile_and_run, op_types, rerun_modified, run_decompose
from mmopt.runtime.verify import run_onnxruntime

RNG = np.random.default_rng(0)
_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return mir.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _full_range(shape, dtype) -> np.ndarray:
    lo, hi = _RANGES[np.dtype(dtype)]
    return RNG.integers(lo, hi + 1, shape).astype(dtype)


def _isa_independent(*dtypes) -> bool:
    """onnxruntime's integer kernels are exact on every x86/ARM CPU for uint8 x uint8 only."""
    return all(np.dtype(d) == np.uint8 for d in dtypes)


# --------------------------------------------------------------------------------------------------
# numpy references: the ONNX operator definitions in exact integer arithmetic


def _conv_integer(x, w, x_zp, w_zp, pads=(0, 0, 0, 0), strides=(1, 1), group=1):
    """ConvInteger: int64 convolution of (x - x_zp) and (w - w_zp[:, None, None, None]), int32."""
    from numpy.lib.stride_tricks import sliding_window_view

    xi = x.astype(np.int64) - np.int64(x_zp)
    wi = w.astype(np.int64) - np.asarray(w_zp, np.int64).reshape(-1, 1, 1, 1)
    xi = np.pad(xi, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(xi, wi.shape[2:], axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    cin, cout = xi.shape[1] // group, wi.shape[0] // group
    parts = [np.einsum("nchwij,ocij->nohw", win[:, g * cin:(g + 1) * cin], wi[g * cout:(g + 1) * cout])
             for g in range(group)]
    acc = np.concatenate(parts, axis=1)
    assert np.abs(acc).max() < 2**31  # the int32 accumulator the operator defines does not wrap
    return acc.astype(np.int32)


def _matmul_integer(a, b, a_zp, b_zp) -> np.ndarray:
    """MatMulInteger: int64 product of (a - a_zp) and (b - b_zp), as int32."""
    acc = (a.astype(np.int64) - np.int64(a_zp)) @ (b.astype(np.int64) - np.int64(b_zp))
    assert np.abs(acc).max() < 2**31
    return acc.astype(np.int32)


def _requantize(acc, scale_a, scale_b, scale_y, y_zp) -> np.ndarray:
    """``saturate(round(acc * (scale_a * scale_b / scale_y)) + y_zp)``: the multiplier in float32 in
    that order, rounding half to even (the definition's ``round``), saturation to ``y_zp``'s type."""
    multiplier = (np.float32(scale_a) * np.asarray(scale_b, np.float32)) / np.float32(scale_y)
    scaled = np.rint(acc.astype(np.float32) * multiplier.astype(np.float32))
    lo, hi = _RANGES[y_zp.dtype]
    return np.clip(scaled + np.float32(y_zp), lo, hi).astype(y_zp.dtype)


# --------------------------------------------------------------------------------------------------
# ConvInteger


CONV_CASES = {
    "uint8-int8-per-channel-pad": dict(w_type=np.int8, w_zp=np.array([0, 1, -2, 3], np.int8),
                                       attrs=dict(pads=[1, 1, 1, 1])),
    "uint8-uint8-stride-group": dict(w_type=np.uint8, w_zp=np.array(7, np.uint8),
                                     attrs=dict(strides=[2, 2], group=2)),
    "no-zero-points": dict(w_type=np.int8, w_zp=None, x_zp=False, attrs={}),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_integer_is_exact(case):
    spec = CONV_CASES[case]
    w = _full_range((4, 4 // spec["attrs"].get("group", 1), 3, 3), spec["w_type"])
    inits = {"w": w}
    names = ["x", "w", "x_zp" if spec.get("x_zp", True) else ""]
    if spec.get("x_zp", True):
        inits["x_zp"] = np.array(128, np.uint8)
    if spec["w_zp"] is not None:
        inits["w_zp"] = spec["w_zp"]
        names.append("w_zp")
    while names[-1] == "":
        names.pop()
    node = helper.make_node("ConvInteger", names, ["y"], name="conv", **spec["attrs"])
    model = _model([node], [_vi("x", TensorProto.UINT8, [1, 4, 9, 9])], [_vi("y", TensorProto.INT32, None)],
                   inits)
    feeds = {"x": _full_range((1, 4, 9, 9), np.uint8)}
    decomposed, report = run_decompose(model)
    assert report.counts == {"lower_conv_integer": 1}
    assert "ConvInteger" not in op_types(decomposed) and "Conv" in op_types(decomposed)
    assert not rerun_modified(decomposed)
    got = compile_and_run(model, feeds)["y"]
    assert got.dtype == np.int32
    x_zp = inits.get("x_zp", np.array(0))
    w_zp = inits.get("w_zp", np.array(0))
    np.testing.assert_array_equal(got, _conv_integer(feeds["x"], w, x_zp, w_zp, **spec["attrs"]))
    # onnxruntime's ConvInteger has per-tensor zero points only
    if w_zp.size == 1 and _isa_independent(w.dtype):
        np.testing.assert_array_equal(got, run_onnxruntime(model, feeds)["y"])


def test_conv_integer_with_unknown_weight_shape_says_why():
    node = helper.make_node("ConvInteger", ["x", "w"], ["y"], name="qconv")
    model = _model([node], [_vi("x", TensorProto.UINT8, [1, 2, 5, 5]),
                            _vi("w", TensorProto.UINT8, ["M", 2, 3, 3])],
                   [_vi("y", TensorProto.INT32, None)], {})
    decomposed, report = run_decompose(model)
    assert "ConvInteger" in op_types(decomposed)
    assert [(r.node, r.reason) for r in report.rejections] == [("qconv", "the weight shape is not static")]


# --------------------------------------------------------------------------------------------------
# QLinearConv / QLinearMatMul


@pytest.mark.parametrize("w_type", [np.int8, np.uint8])
def test_qlinear_conv_per_channel_with_bias_is_exact(w_type):
    w = _full_range((6, 3, 3, 3), w_type)
    w_zp = np.zeros(6, w_type) if w_type == np.int8 else np.full(6, 128, w_type)
    inits = {"x_scale": np.array(0.02, np.float32), "x_zp": np.array(120, np.uint8), "w": w,
             "w_scale": RNG.uniform(0.005, 0.02, 6).astype(np.float32), "w_zp": w_zp,
             "y_scale": np.array(0.5, np.float32), "y_zp": np.array(100, np.uint8),
             "bias": RNG.integers(-5000, 5000, 6).astype(np.int32)}
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale",
                                            "y_zp", "bias"], ["y"], pads=[1, 1, 1, 1])
    model = _model([node], [_vi("x", TensorProto.UINT8, [1, 3, 8, 8])], [_vi("y", TensorProto.UINT8, None)],
                   inits)
    feeds = {"x": _full_range((1, 3, 8, 8), np.uint8)}
    decomposed, report = run_decompose(model)
    assert report.counts == {"lower_qlinear_conv": 1}
    acc = (_conv_integer(feeds["x"], w, inits["x_zp"], w_zp, pads=(1, 1, 1, 1)).astype(np.int64)
           + inits["bias"].reshape(1, -1, 1, 1))
    expected = _requantize(acc, inits["x_scale"], inits["w_scale"].reshape(1, -1, 1, 1),
                           inits["y_scale"], inits["y_zp"])
    assert len(np.unique(expected)) > 32  # spread over the output range, not saturated
    got = compile_and_run(model, feeds)["y"]
    np.testing.assert_array_equal(got, expected)
    if _isa_independent(w_type):
        np.testing.assert_array_equal(got, run_onnxruntime(model, feeds)["y"])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_matmul_is_exact(dtype):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = {"a_scale": np.array(0.03, np.float32), "a_zp": np.array(3, dtype),
             "b": _full_range((16, 5), dtype), "b_scale": np.array(0.01, np.float32),
             "b_zp": np.array(2, dtype), "y_scale": np.array(0.5, np.float32),
             "y_zp": np.array(10, dtype)}
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp",
                                              "y_scale", "y_zp"], ["y"])
    model = _model([node], [_vi("a", elem, [2, 4, 16])], [_vi("y", elem, None)], inits)
    feeds = {"a": _full_range((2, 4, 16), dtype)}
    decomposed, report = run_decompose(model)
    assert report.counts == {"lower_qlinear_matmul": 1}
    acc = _matmul_integer(feeds["a"], inits["b"], inits["a_zp"], inits["b_zp"])
    expected = _requantize(acc, inits["a_scale"], inits["b_scale"], inits["y_scale"], inits["y_zp"])
    assert len(np.unique(expected)) > 16
    got = compile_and_run(model, feeds)["y"]
    np.testing.assert_array_equal(got, expected)
    if _isa_independent(dtype):
        np.testing.assert_array_equal(got, run_onnxruntime(model, feeds)["y"])


# --------------------------------------------------------------------------------------------------
# a dynamically quantized model end to end


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_dynamically_quantized_model_compiles_and_matches_the_reference(tmp_path, weight_type):
    """ConvInteger + MatMulInteger + DynamicQuantizeLinear, as quantize_dynamic writes them, against
    onnx's reference implementation (numpy, the operator definitions); against onnxruntime too (the
    compile's own verification) where its kernels are exact everywhere (uint8 weights)."""
    from onnx.reference import ReferenceEvaluator
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import mmopt
    from models_zoo import build

    source = tmp_path / "float.onnx"
    quantized = tmp_path / "dynamic_quant.onnx"
    onnx.save(build("conv_bn_relu", batch=1), source)
    quantize_dynamic(source, quantized, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                     weight_type=getattr(QuantType, weight_type))
    model = onnx.load(quantized)
    ops = op_types(model)
    assert "ConvInteger" in ops and "MatMulInteger" in ops
    isa_independent = weight_type == "QUInt8"
    result = mmopt.compile(model, "x86", tmp_path / "q", verify=isa_independent)
    if isa_independent:
        assert result.verification.passed, result.verification.to_dict()
        assert result.verification.max_abs < 1e-5
    artifact = mmopt.load(tmp_path / "q")
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (expected,) = ReferenceEvaluator(model).run(None, {"input": x})
    got = artifact(input=x)[model.graph.output[0].name]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
