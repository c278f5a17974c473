"""fuse_conv_affine: constant Add/Sub/Mul/Div after Conv and ConvTranspose folded into weight and bias."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.fuse_conv_affine import FuseConvAffinePass

RNG = np.random.default_rng(0)


def _f32(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def test_scale_layer_and_bias_chain_fold_into_conv():
    # Conv -> Mul(scalar, constant first) -> Add(scalar): the PP-LCNet "scale" layer; then
    # Conv -> Add([1,C,1,1]) -> Div([C,1,1]) -> Sub([1,C,1,1]).
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] z) {
        c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)
        m1 = Mul (s, c1)
        y = Add (m1, t)
        c2 = Conv (x, w2)
        a2 = Add (c2, bias4d)
        d2 = Div (a2, div3d)
        z = Sub (d2, sub4d)
    }""", w1=_f32(4, 3, 3, 3), b1=_f32(4), s=np.array([1.7], np.float32), t=np.array(0.3, np.float32),
        w2=_f32(4, 3, 1, 1), bias4d=_f32(1, 4, 1, 1), div3d=RNG.uniform(0.5, 2, (4, 1, 1)).astype(np.float32),
        sub4d=_f32(1, 4, 1, 1))
    out = check_pass(FuseConvAffinePass, model, {"fuse_mul_into_conv": 1, "fuse_add_into_conv": 2,
                                                 "fuse_div_into_conv": 1, "fuse_sub_into_conv": 1})
    assert op_types(out) == {"Conv": 2}


def test_conv_transpose_bias_and_scale():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,4,5,5] x) => (float[1,6,10,10] y) {
        c = ConvTranspose <strides=[2,2], group=2> (x, w)
        a = Add (c, bias)
        m = Mul (a, scale)
        s = Sub (m, shift)
        y = Div (s, two)
    }""", w=_f32(4, 3, 2, 2), bias=_f32(1, 6, 1, 1), scale=_f32(1, 6, 1, 1), shift=_f32(6, 1, 1),
        two=np.array(2.0, np.float32))
    out = check_pass(FuseConvAffinePass, model, {"fuse_add_into_conv_transpose": 1,
                                                 "fuse_mul_into_conv_transpose": 1,
                                                 "fuse_sub_into_conv_transpose": 1,
                                                 "fuse_div_into_conv_transpose": 1})
    assert op_types(out) == {"ConvTranspose": 1}


def test_not_fired_for_spatial_broadcast_inputs_and_shared_outputs():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,8,8] x, float[1,4,1,1] u)
        => (float[1,4,8,8] y, float[1,4,8,8] z, float[1,4,8,8] r, float[1,4,8,8] q) {
        c = Conv (x, w)
        y = Add (c, spatial)
        z = Mul (c, u)
        c2 = Conv (x, w)
        r = Add (c2, bias4d)
        q = Relu (c2)
    }""", w=_f32(4, 3, 1, 1), spatial=_f32(1, 1, 8, 8), bias4d=_f32(1, 4, 1, 1))
    assert_not_fired(FuseConvAffinePass, model)


def test_not_fired_for_last_axis_vector_or_zero_divisor():
    # A rank-1 [C] operand broadcasts along the last (width) axis, not the channels.
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,4,8,4] x) => (float[1,4,8,4] y, float[1,4,8,4] z) {
        c = Conv (x, w)
        y = Add (c, vec)
        c2 = Conv (x, w)
        z = Div (c2, zero)
    }""", w=_f32(4, 4, 1, 1), vec=_f32(4), zero=np.array([[[1.0]], [[0.0]], [[1.0]], [[2.0]]], np.float32))
    assert_not_fired(FuseConvAffinePass, model)


def test_affine_before_conv_folds_into_it_grouped_and_padded():
    # act -> Mul(scalar) -> Add(scalar) -> Conv 1x1 (pads 0): both fold. Mul per channel -> grouped
    # 3x3 conv with padding: the Mul folds, a following Add would not (see the negative test).
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,4,6,6] x) => (float[1,6,6,6] y, float[1,4,6,6] z, float[1,6,3,3] v) {
        r = Relu (x)
        m = Mul (a, r)
        s = Add (m, b)
        y = Conv (s, w1, b1)
        m2 = Mul (x, chan)
        d2 = Div (m2, k2)
        z = Conv <group=2, pads=[1,1,1,1]> (d2, w2)
        s3 = Sub (x, chan)
        v = Conv <group=2, strides=[2,2]> (s3, w3, b3)
    }""", a=np.array(1.3, np.float32), b=np.array([0.2], np.float32), w1=_f32(6, 4, 1, 1), b1=_f32(6),
        chan=_f32(1, 4, 1, 1), k2=np.array(2.0, np.float32), w2=_f32(4, 2, 3, 3),
        w3=_f32(6, 2, 2, 2), b3=_f32(6))
    out = check_pass(FuseConvAffinePass, model, {"fuse_mul_into_next_conv": 2, "fuse_add_into_next_conv": 1,
                                                 "fuse_div_into_next_conv": 1, "fuse_sub_into_next_conv": 1})
    assert op_types(out) == {"Relu": 1, "Conv": 3}


def test_add_before_padded_conv_not_folded():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,4,6,6] x) => (float[1,6,6,6] y) {
        s = Add (x, b)
        y = Conv <pads=[1,1,1,1]> (s, w)
    }""", b=np.array(0.5, np.float32), w=_f32(6, 4, 3, 3))
    assert_not_fired(FuseConvAffinePass, model)
