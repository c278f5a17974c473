"""decompose_integer_ops: integer convolution and matmul are exact (compared with onnxruntime's
integer kernels bit for bit); a dynamically quantized model (ConvInteger + MatMulInteger, as
onnxruntime's quantize_dynamic writes it) compiles and matches onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mmopt import ir as mir
from mmopt.codegen.decompose._testing import compile_and_run, op_types, rerun_modified, run_decompose
from mmopt.runtime.verify import run_onnxruntime

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return mir.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


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
    w = RNG.integers(-100 if spec["w_type"] == np.int8 else 0, 100, (4, 4 // spec["attrs"].get(
        "group", 1), 3, 3)).astype(spec["w_type"])
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
    feeds = {"x": RNG.integers(0, 255, (1, 4, 9, 9)).astype(np.uint8)}
    decomposed, report = run_decompose(model)
    assert report.counts == {"lower_conv_integer": 1}
    assert "ConvInteger" not in op_types(decomposed) and "Conv" in op_types(decomposed)
    assert not rerun_modified(decomposed)
    got = compile_and_run(model, feeds)["y"]
    assert got.dtype == np.int32
    x_zp = inits.get("x_zp", np.array(0))
    w_zp = inits.get("w_zp", np.array(0))
    np.testing.assert_array_equal(got, _conv_integer(feeds["x"], w, x_zp, w_zp, **spec["attrs"]))
    if w_zp.size == 1:  # onnxruntime's ConvInteger has per-tensor zero points only
        np.testing.assert_array_equal(got, run_onnxruntime(model, feeds)["y"])


def _conv_integer(x, w, x_zp, w_zp, pads=(0, 0, 0, 0), strides=(1, 1), group=1):
    """Reference: int64 convolution of (x - x_zp) and (w - w_zp[:, None, None, None])."""
    from numpy.lib.stride_tricks import sliding_window_view

    xi = x.astype(np.int64) - np.int64(x_zp)
    wi = w.astype(np.int64) - np.asarray(w_zp, np.int64).reshape(-1, 1, 1, 1)
    xi = np.pad(xi, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(xi, wi.shape[2:], axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    cin, cout = xi.shape[1] // group, wi.shape[0] // group
    parts = [np.einsum("nchwij,ocij->nohw", win[:, g * cin:(g + 1) * cin], wi[g * cout:(g + 1) * cout])
             for g in range(group)]
    return np.concatenate(parts, axis=1).astype(np.int32)


def test_qlinear_conv_per_channel_with_bias_matches_onnxruntime():
    w = RNG.integers(-60, 60, (6, 3, 3, 3)).astype(np.int8)
    inits = {"x_scale": np.array(0.02, np.float32), "x_zp": np.array(120, np.uint8), "w": w,
             "w_scale": RNG.uniform(0.005, 0.02, 6).astype(np.float32),
             "w_zp": np.zeros(6, np.int8), "y_scale": np.array(0.15, np.float32),
             "y_zp": np.array(100, np.uint8), "bias": RNG.integers(-500, 500, 6).astype(np.int32)}
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale",
                                            "y_zp", "bias"], ["y"], pads=[1, 1, 1, 1])
    model = _model([node], [_vi("x", TensorProto.UINT8, [1, 3, 8, 8])], [_vi("y", TensorProto.UINT8, None)],
                   inits)
    feeds = {"x": RNG.integers(0, 255, (1, 3, 8, 8)).astype(np.uint8)}
    decomposed, report = run_decompose(model)
    assert report.counts == {"lower_qlinear_conv": 1}
    np.testing.assert_array_equal(compile_and_run(model, feeds)["y"],
                                  run_onnxruntime(model, feeds)["y"])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_matmul_matches_onnxruntime(dtype):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    lo, hi = (0, 255) if dtype == np.uint8 else (-128, 127)
    inits = {"a_scale": np.array(0.03, np.float32), "a_zp": np.array(3, dtype),
             "b": RNG.integers(lo, hi, (16, 5)).astype(dtype), "b_scale": np.array(0.01, np.float32),
             "b_zp": np.array(2, dtype), "y_scale": np.array(0.2, np.float32),
             "y_zp": np.array(10, dtype)}
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp",
                                              "y_scale", "y_zp"], ["y"])
    model = _model([node], [_vi("a", elem, [2, 4, 16])], [_vi("y", elem, None)], inits)
    feeds = {"a": RNG.integers(lo, hi, (2, 4, 16)).astype(dtype)}
    decomposed, report = run_decompose(model)
    assert report.counts == {"lower_qlinear_matmul": 1}
    np.testing.assert_array_equal(compile_and_run(model, feeds)["y"],
                                  run_onnxruntime(model, feeds)["y"])


def test_conv_integer_with_unknown_weight_shape_says_why():
    node = helper.make_node("ConvInteger", ["x", "w"], ["y"], name="qconv")
    model = _model([node], [_vi("x", TensorProto.UINT8, [1, 2, 5, 5]),
                            _vi("w", TensorProto.UINT8, ["M", 2, 3, 3])],
                   [_vi("y", TensorProto.INT32, None)], {})
    decomposed, report = run_decompose(model)
    assert "ConvInteger" in op_types(decomposed)
    assert [(r.node, r.reason) for r in report.rejections] == [("qconv", "the weight shape is not static")]


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_dynamically_quantized_model_compiles_and_matches_onnxruntime(tmp_path, weight_type):
    """ConvInteger + MatMulInteger + DynamicQuantizeLinear, as quantize_dynamic writes them."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import mmopt
    from models_zoo import build

    source = tmp_path / "float.onnx"
    quantized = tmp_path / "dynamic_quant.onnx"
    onnx.save(build("conv_bn_relu", batch=1), source)
    quantize_dynamic(source, quantized, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                     weight_type=getattr(QuantType, weight_type))
    ops = op_types(onnx.load(quantized))
    assert "ConvInteger" in ops and "MatMulInteger" in ops
    result = mmopt.compile(quantized, "x86", tmp_path / "q")
    assert result.verification.passed, result.verification.to_dict()
    assert result.verification.max_abs < 1e-5
