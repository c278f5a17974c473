"""fuse_gemm: MatMul+Add -> Gemm (2-D only) and bias Add into Gemm."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.fuse_gemm import FuseGemmPass

RNG = np.random.default_rng(0)


def _f32(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def test_matmul_add_and_gemm_add():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[3,8] x) => (float[3,5] y, float[3,5] z) {
        p = MatMul (x, w)
        y = Add (bias, p)
        g = Gemm <transB=1, beta=0.5> (x, wt, c)
        z = Add (g, row)
    }""", w=_f32(8, 5), bias=_f32(5), wt=_f32(5, 8), c=_f32(5), row=_f32(1, 5))
    out = check_pass(FuseGemmPass, model, {"fuse_matmul_add_into_gemm": 1, "fuse_add_into_gemm": 1})
    assert op_types(out) == {"Gemm": 2}


def test_matmul_add_then_bias_chain():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[3,8] x) => (float[3,5] y) {
        p = MatMul (x, w)
        a = Add (p, bias)
        y = Add (a, col)
    }""", w=_f32(8, 5), bias=_f32(5), col=_f32(3, 1))
    out = check_pass(FuseGemmPass, model, {"fuse_matmul_add_into_gemm": 1, "fuse_add_into_gemm": 1})
    assert op_types(out) == {"Gemm": 1}


def test_not_fired_for_batched_matmul_or_growing_bias():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,3,8] x, float[3,8] x2, float[5] v) => (float[2,3,5] y, float[4,3,5] z, float[3,5] r) {
        p = MatMul (x, w)
        y = Add (p, bias)
        p2 = MatMul (x2, w)
        z = Add (p2, big)
        p3 = MatMul (x2, w)
        r = Add (p3, v)
    }""", w=_f32(8, 5), bias=_f32(5), big=_f32(4, 3, 5))
    assert_not_fired(FuseGemmPass, model)
