"""FusedConv, FusedGemm, FusedMatMul and the GELU family against onnxruntime's own kernels."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    rerun_modified,
    run_decompose,
)
from mmopt.ops.microsoft._testing import check_decomposition, declined, ms_model, rand


@pytest.mark.parametrize("activation, params", [
    ("Relu", None), ("LeakyRelu", [0.2]), ("Clip", [-0.5, 0.7]), ("HardSigmoid", [0.3, 0.4]),
    ("Sigmoid", None), ("Tanh", None)])
def test_fused_conv(activation, params):
    extra = f", activation_params = {params}" if params else ""
    model = ms_model(
        f'y = com.microsoft.FusedConv <activation = "{activation}"{extra}, pads = [1, 1, 1, 1], '
        'strides = [2, 2], group = 1> (x, w, b, z)',
        "float[1,4,9,9] x, float[1,6,5,5] z", "float[1,6,5,5] y",
        w=rand(6, 4, 3, 3, seed=1), b=rand(6, seed=2))
    check_decomposition(model, {"x": rand(1, 4, 9, 9), "z": rand(1, 6, 5, 5, seed=3)},
                        "decompose_fused_conv")


def test_fused_conv_without_bias_or_activation_and_grouped():
    model = ms_model('y = com.microsoft.FusedConv <group = 2> (x, w)',
                     "float[1,4,6,6] x", "float[1,4,4,4] y", w=rand(4, 2, 3, 3, seed=1))
    check_decomposition(model, {"x": rand(1, 4, 6, 6)}, "decompose_fused_conv")


def test_fused_conv_refuses_an_unknown_activation():
    model = ms_model('y = com.microsoft.FusedConv <activation = "Gelu"> (x, w)',
                     "float[1,2,4,4] x", "float[1,2,2,2] y", w=rand(2, 2, 3, 3))
    assert "Gelu" in declined(model, "decompose_fused_conv")


@pytest.mark.parametrize("attrs", [
    'activation = "Relu"',
    'activation = "LeakyRelu", activation_alpha = 0.3, transB = 1, alpha = 0.5, beta = 2.0',
    'activation = "HardSigmoid", activation_alpha = 0.25, activation_beta = 0.6, transA = 1',
    'activation = "Selu", activation_alpha = 1.5, activation_gamma = 1.1',
])
def test_fused_gemm(attrs):
    trans_a, trans_b = "transA" in attrs, "transB" in attrs
    model = ms_model(f"y = com.microsoft.FusedGemm <{attrs}> (a, b, c)",
                     f"float[{'6,3' if trans_a else '3,6'}] a", "float[3,5] y",
                     b=rand(*((5, 6) if trans_b else (6, 5)), seed=1), c=rand(5, seed=2))
    check_decomposition(model, {"a": rand(*((6, 3) if trans_a else (3, 6)))},
                        "decompose_fused_gemm")


@pytest.mark.parametrize("attrs, a_shape, b_shape", [
    ("alpha = 0.25, transB = 1", (2, 3, 4, 8), (2, 3, 5, 8)),
    ("transA = 1", (3, 8, 4), (8, 5)),
    ("alpha = -2.0, transA = 1, transB = 1", (6, 4), (5, 6)),
    ("alpha = 1.0", (2, 4, 6), (6, 3)),
])
def test_fused_matmul(attrs, a_shape, b_shape):
    a, b = rand(*a_shape), rand(*b_shape, seed=1)
    a_t = a.swapaxes(-1, -2) if "transA" in attrs else a
    b_t = b.swapaxes(-1, -2) if "transB" in attrs else b
    out_shape = np.matmul(a_t, b_t).shape
    model = ms_model(f"y = com.microsoft.FusedMatMul <{attrs}> (a, b)",
                     f"float[{','.join(map(str, a_shape))}] a, "
                     f"float[{','.join(map(str, b_shape))}] b",
                     f"float[{','.join(map(str, out_shape))}] y")
    check_decomposition(model, {"a": a, "b": b}, "decompose_fused_matmul")


def test_fused_matmul_refuses_batch_transposes():
    model = ms_model("y = com.microsoft.FusedMatMul <transBatchA = 1> (a, b)",
                     "float[2,3,4] a, float[4,5] b", "float[3,2,5] y")
    assert "transBatchA" in declined(model, "decompose_fused_matmul")


def test_gelu_family():
    model = ms_model(
        "g = com.microsoft.Gelu (x)\n"
        "bg = com.microsoft.BiasGelu (g, bias)\n"
        "f = com.microsoft.FastGelu (bg)\n"
        "fb = com.microsoft.FastGelu (f, bias)\n"
        "y = com.microsoft.QuickGelu <alpha = 1.5> (fb)\n"
        "z = com.microsoft.QuickGelu (x)",
        "float[2,5,16] x", "float[2,5,16] y, float[2,5,16] z", bias=rand(16, seed=1))
    feeds = {"x": rand(2, 5, 16, scale=2.0)}
    out, report = run_decompose(model)
    assert report.counts == {"decompose_gelu": 2, "decompose_fast_gelu": 2,
                             "inline_quick_gelu": 2}
    assert not [n for n in out.graph.node if n.domain == "com.microsoft"]
    assert_same_on_onnxruntime(model, out, feeds, atol=1e-5, rtol=1e-4)
    assert not rerun_modified(out)
