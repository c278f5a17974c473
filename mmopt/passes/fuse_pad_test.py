"""fuse_pad: spatial zero Pad folded into Conv / AveragePool / MaxPool."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.fuse_pad import FusePadPass

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)


def test_pad_into_conv_and_pools():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,8,8] x) => (float[1,4,10,8] y, float[1,3,9,9] z, float[1,3,5,5] m) {
        p = Pad (x, pads)
        y = Conv <pads=[1,0,1,0]> (p, w)
        q = Pad (x, pads_pool)
        z = AveragePool <kernel_shape=[2,2]> (q)
        r = Relu (x)
        rp = Pad (r, pads_pool)
        m = MaxPool <kernel_shape=[2,2], strides=[2,2]> (rp)
    }""", w=W, pads=np.array([0, 0, 1, 0, 0, 0, 1, 0], np.int64),
        pads_pool=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    out = check_pass(FusePadPass, model, {"fuse_pad_into_conv": 1, "fuse_pad_into_average_pool": 1,
                                          "fuse_pad_into_max_pool": 1})
    assert op_types(out) == {"Conv": 1, "AveragePool": 1, "MaxPool": 1, "Relu": 1}


def test_pad_with_axes_input_opset18():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 18]>
    net (float[1,3,8,8] x) => (float[1,4,8,8] y) {
        p = Pad (x, pads, zero, axes)
        y = Conv (p, w)
    }""", w=W, pads=np.array([1, 1, 1, 1], np.int64), zero=np.array(0.0, np.float32),
        axes=np.array([2, 3], np.int64))
    out = check_pass(FusePadPass, model, {"fuse_pad_into_conv": 1})
    assert op_types(out) == {"Conv": 1}


def test_not_fired_for_reflect_nonzero_channel_or_unbounded_max():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,8,8] x) => (float[1,4,8,8] a, float[1,4,8,8] b, float[1,4,6,6] c, float[1,3,5,5] d) {
        p1 = Pad <mode="reflect"> (x, pads)
        a = Conv (p1, w)
        p2 = Pad (x, pads, one)
        b = Conv (p2, w)
        p3 = Pad (x, pads_c)
        c = Conv (p3, w5)
        p4 = Pad (x, pads_pool)
        d = MaxPool <kernel_shape=[2,2], strides=[2,2]> (p4)
    }""", w=W, w5=RNG.normal(size=(4, 5, 3, 3)).astype(np.float32),
        pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), one=np.array(1.0, np.float32),
        pads_c=np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64),
        pads_pool=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    assert_not_fired(FusePadPass, model)
