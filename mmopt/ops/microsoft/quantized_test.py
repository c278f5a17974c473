"""DynamicQuantizeMatMul and DynamicQuantizeLSTM against onnxruntime's integer kernels.

The decompositions quantize and multiply the way onnxruntime does, so the results agree to float
rounding (far below one quantization step of the activations)."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.ops.microsoft._testing import check_decomposition, ms_model, rand


def _quantized(w: np.ndarray, dtype, axis=None):
    """Symmetric (int8) or asymmetric (uint8) quantization of ``w``, per tensor or per ``axis``."""
    lo = w.min(axis=axis, keepdims=axis is not None)
    hi = w.max(axis=axis, keepdims=axis is not None)
    if dtype == np.int8:
        scale = np.maximum(np.abs(lo), np.abs(hi)) / 127.0
        zero = np.zeros_like(scale, np.int8)
    else:
        scale = (np.maximum(hi, 0) - np.minimum(lo, 0)) / 255.0
        zero = np.round(-np.minimum(lo, 0) / scale).astype(np.uint8)
    q = np.clip(np.round(w / scale) + zero, *((-128, 127) if dtype == np.int8 else (0, 255)))
    return q.astype(dtype), scale.astype(np.float32).reshape(-1), zero.astype(dtype).reshape(-1)


@pytest.mark.parametrize("dtype, per_column, bias", [
    (np.int8, False, True), (np.uint8, False, False), (np.int8, True, True)])
def test_dynamic_quantize_matmul(dtype, per_column, bias):
    w = rand(24, 10, seed=1)
    q, scale, zero = _quantized(w, dtype, axis=0 if per_column else None)
    onnx_type = "int8" if dtype == np.int8 else "uint8"
    inits = {"wq": q, "scale": scale, "zero": zero} | ({"bias": rand(10, seed=2)} if bias else {})
    model = ms_model(f"y = com.microsoft.DynamicQuantizeMatMul (a, wq, scale, zero"
                     f"{', bias' if bias else ''})", "float[3,7,24] a", "float[3,7,10] y", **inits)
    assert str(q.dtype) == onnx_type
    check_decomposition(model, {"a": rand(3, 7, 24, scale=3.0)},
                        "decompose_dynamic_quantize_matmul", atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction, per_channel", [("bidirectional", True), ("reverse", False)])
def test_dynamic_quantize_lstm(direction, per_channel):
    steps, batch, features, hidden = 5, 2, 6, 4
    dirs = 2 if direction == "bidirectional" else 1
    w = rand(dirs, features, 4 * hidden, seed=1, scale=0.5)
    r = rand(dirs, hidden, 4 * hidden, seed=2, scale=0.5)
    packed = []
    for t in (w, r):
        per = [_quantized(t[d], np.int8, axis=0 if per_channel else None) for d in range(dirs)]
        packed.append((np.stack([p[0] for p in per]),
                       np.stack([p[1] for p in per]).reshape(dirs, -1).squeeze(-1)
                       if not per_channel else np.stack([p[1] for p in per]),
                       np.stack([p[2] for p in per]).reshape(dirs, -1).squeeze(-1)
                       if not per_channel else np.stack([p[2] for p in per])))
    (wq, ws, wz), (rq, rs, rz) = packed
    model = ms_model(
        f'y, yh, yc = com.microsoft.DynamicQuantizeLSTM <direction = "{direction}", '
        f'hidden_size = {hidden}> (x, wq, rq, b, "", h0, "", "", ws, wz, rs, rz)',
        f"float[{steps},{batch},{features}] x, float[{dirs},{batch},{hidden}] h0",
        f"float[{steps},{dirs},{batch},{hidden}] y, float[{dirs},{batch},{hidden}] yh, "
        f"float[{dirs},{batch},{hidden}] yc",
        wq=wq, rq=rq, b=rand(dirs, 8 * hidden, seed=3), ws=ws, wz=wz, rs=rs, rz=rz)
    check_decomposition(model, {"x": rand(steps, batch, features), "h0": rand(dirs, batch, hidden,
                                                                              seed=4)},
                        "unroll_dynamic_quantize_lstm", atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("b_type, per_column, zero_points, bias", [
    (np.int8, True, "b", True), (np.uint8, False, "ab", False), (np.int8, False, "", False)])
def test_matmul_integer_to_float(b_type, per_column, zero_points, bias):
    rng = np.random.default_rng(0)
    w = rand(16, 6, seed=1)
    wq, w_scale, w_zero = _quantized(w, b_type, axis=0 if per_column else None)
    inits = {"wq": wq, "a_scale": np.array(0.05, np.float32), "b_scale": w_scale}
    args = ["a", "wq", "a_scale", "b_scale"]
    if zero_points:
        inits["a_zero"] = np.array(rng.integers(100, 150), np.uint8)
        args.append("a_zero" if "a" in zero_points else '""')
        inits["b_zero"] = w_zero
        args.append("b_zero")
    if bias:
        args += ['""'] * (6 - len(args)) + ["bias"]
        inits["bias"] = rand(6, seed=2)
    inits = {k: v for k, v in inits.items() if k in args}
    model = ms_model(f"y = com.microsoft.MatMulIntegerToFloat ({', '.join(args)})",
                     "uint8[2,5,16] a", "float[2,5,6] y", **inits)
    check_decomposition(model, {"a": rng.integers(0, 256, (2, 5, 16)).astype(np.uint8)},
                        "decompose_matmul_integer_to_float", atol=1e-5, rtol=1e-5)
