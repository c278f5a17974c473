"""optimize_transposes: pairs composed/cancelled, Transposes sunk through layout-agnostic ops."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.transposes import OptimizeTransposesPass

RNG = np.random.default_rng(0)


def test_pairs_compose_and_cancel():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,3,4,5] x) => (float[2,3,4,5] y, float[5,4,3,2] z, float[2,3,4,5] w) {
        a = Transpose <perm=[0,2,3,1]> (x)
        y = Transpose <perm=[0,3,1,2]> (a)
        b = Transpose <perm=[1,0,2,3]> (x)
        z = Transpose <perm=[3,2,0,1]> (b)
        w = Transpose <perm=[0,1,2,3]> (x)
    }""")
    out = check_pass(OptimizeTransposesPass, model, {"fold_transpose_pair": 2,
                                                     "eliminate_identity_transpose": 1})
    assert op_types(out) == {"Identity": 2, "Transpose": 1}


def test_sunk_through_elementwise_concat_and_pool_until_they_cancel():
    # NHWC-style islands: Transpose(to NHWC) -> Relu -> Add(const per channel, NHWC shape)
    # -> Transpose(back); and two transposed branches joined by Concat and Mul, then pooled.
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,4,5] x, float[1,3,4,5] v) => (float[1,3,4,5] y, float[1,6,1,1] z) {
        t = Transpose <perm=[0,2,3,1]> (x)
        r = Relu (t)
        a = Add (r, bias)
        c = Clip (a, lo, hi)
        y = Transpose <perm=[0,3,1,2]> (c)
        t1 = Transpose <perm=[0,2,3,1]> (x)
        t2 = Transpose <perm=[0,2,3,1]> (v)
        m = Mul (t1, t2)
        t3 = Transpose <perm=[0,2,3,1]> (v)
        k = Concat <axis=3> (m, t3)
        g = GlobalAveragePool (k)
        z = Transpose <perm=[0,3,1,2]> (g)
    }""", bias=RNG.normal(size=(1, 1, 3)).astype(np.float32), lo=np.array(0.0, np.float32),
        hi=np.array(1.0, np.float32))
    out = check_pass(OptimizeTransposesPass, model, {
        "sink_transpose_through_elementwise": 4, "sink_transpose_through_concat": 1,
        "sink_transpose_through_global_pool": 1, "fold_transpose_pair": 2})
    assert "Transpose" not in op_types(out)
    assert op_types(out)["ReduceMean"] == 1


def test_sunk_through_resize_only_when_axes_2_on_are_resized():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,5,4] x) => (float[1,3,10,12] y, float[1,8,3,5] z) {
        t = Transpose <perm=[0,1,3,2]> (x)
        r = Resize <mode="nearest"> (t, roi, scales)
        y = Transpose <perm=[0,1,3,2]> (r)
        t2 = Transpose <perm=[0,3,1,2]> (x)
        r2 = Resize <mode="nearest"> (t2, roi, scales2)
        z = Transpose <perm=[0,1,2,3]> (r2)
    }""", roi=np.array([], np.float32), scales=np.array([1, 1, 2, 3], np.float32),
        scales2=np.array([1, 2, 2, 2], np.float32))
    # y: sunk and cancelled. z: the NHWC-making Transpose stays (sinking it would resize the channel
    # axis, see the module doc); only the identity Transpose after it goes.
    out = check_pass(OptimizeTransposesPass, model, {"sink_transpose_through_resize": 1,
                                                    "fold_transpose_pair": 1,
                                                    "eliminate_identity_transpose": 1})
    assert [n.op_type for n in out.graph.node if n.op_type != "Constant"] == ["Resize", "Transpose", "Resize"]


def test_not_fired_when_shared_growing_or_nothing_to_cancel():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,3,4,5] x) => (float[1,4,5,3] t, float[1,3,4,5] r, float[2,3,4,5] a, float[1,4,5,3] s) {
        t = Transpose <perm=[0,2,3,1]> (x)
        r1 = Relu (t)
        r = Transpose <perm=[0,3,1,2]> (r1)
        t2 = Transpose <perm=[0,2,3,1]> (x)
        a1 = Add (t2, big)
        a = Transpose <perm=[0,3,1,2]> (a1)
        t3 = Transpose <perm=[0,2,3,1]> (x)
        s = Sigmoid (t3)
    }""", big=RNG.normal(size=(2, 1, 1, 3)).astype(np.float32))
    assert_not_fired(OptimizeTransposesPass, model)
