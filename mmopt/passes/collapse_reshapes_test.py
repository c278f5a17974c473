"""collapse_reshapes: reshape-like chains into one Reshape; no-op reshapes removed."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.collapse_reshapes import CollapseReshapesPass

K = {"s1": np.array([2, 12, 5], np.int64), "ax0": np.array([0], np.int64),
     "ax1": np.array([1], np.int64), "same": np.array([2, 3, 4, 5], np.int64),
     "s_back": np.array([2, 3, 4, 5], np.int64)}


def test_chains_collapse_and_cancel():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,3,4,5] x) => (float[1,120] y, float[2,3,4,5] z, float[2,3,4,5] w) {
        r = Reshape (x, s1)
        u = Unsqueeze (r, ax0)
        y = Flatten <axis=1> (u)
        a = Unsqueeze (x, ax1)
        z = Squeeze (a, ax1)
        w = Reshape (x, same)
    }""", **K)
    out = check_pass(CollapseReshapesPass, model, {"collapse_reshape_chain": 3, "eliminate_noop_reshape": 1})
    assert op_types(out) == {"Reshape": 1, "Identity": 2}  # y: one Reshape; z, w: x itself


def test_not_fired_when_inner_is_shared_or_shape_dynamic():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,3,4,5] x, float[N,3] v) => (float[1,2,12,5] y, float[2,12,5] r, float[N,1,3] q) {
        r = Reshape (x, s1)
        y = Unsqueeze (r, ax0)
        q = Unsqueeze (v, ax1)
    }""", **K)
    assert_not_fired(CollapseReshapesPass, model)
