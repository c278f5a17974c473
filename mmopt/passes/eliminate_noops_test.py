"""eliminate_noops: every no-op form removed, interface names kept; look-alikes that do work stay."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.eliminate_noops import EliminateNoopsPass

K = {
    "zero": np.array(0.0, np.float32), "one": np.array([[1.0]], np.float32),
    "ones_big": np.ones((3, 1, 1, 1), np.float32), "two": np.array(2.0, np.float32),
    "starts": np.array([0, 0], np.int64), "ends": np.array([4, 2**62], np.int64),
    "ends_short": np.array([3], np.int64), "axes": np.array([1, -1], np.int64),
    "axes1": np.array([1], np.int64), "pads0": np.zeros(6, np.int64),
    "pads1": np.array([0, 0, 1, 0, 0, 0], np.int64),
    "shape_same": np.array([1, 6], np.int64), "shape_grow": np.array([3, 2, 4, 6], np.int64),
    "f": np.array(False),
}


def test_every_noop_form():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,4,6] x) => (float[2,4,6] y, float[2,4,6] z) {
        i = Identity (x)
        d = Dropout (i, zero, f)
        c = Cast <to=1> (d)
        s = Slice (c, starts, ends, axes)
        p = Pad (s, pads0)
        e = Expand (p, shape_same)
        k = Concat <axis=0> (e)
        a = Add (zero, k)
        m = Mul (a, one)
        y = Div (m, one)
        z = Sub (x, zero)
    }""", **K)
    out = check_pass(EliminateNoopsPass, model, {
        "eliminate_identity": 1, "eliminate_dropout": 1, "eliminate_cast_to_same_type": 1,
        "eliminate_noop_slice": 1, "eliminate_noop_pad": 1, "eliminate_noop_expand": 1,
        "eliminate_single_input_concat": 1, "eliminate_add_zero": 1, "eliminate_mul_one": 1,
        "eliminate_div_one": 1, "eliminate_sub_zero": 1})
    # both outputs are the input itself: the one Identity per output that keeps the names remains
    assert op_types(out) == {"Identity": 2}
    assert [o.name for o in out.graph.output] == ["y", "z"]


def test_not_fired_when_the_node_changes_something():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,4,6] x) => (double[2,4,6] c, float[2,3,6] s, float[2,5,6] p, float[3,2,4,6] e,
                             float[3,2,4,6] m, float[2,4,6] a, float[2,4,6] d) {
        c = Cast <to=11> (x)
        s = Slice (x, starts, ends_short, axes1)
        p = Pad (x, pads1)
        e = Expand (x, shape_grow)
        m = Mul (x, ones_big)
        a = Add (x, two)
        d = Div (x, two)
    }""", **K)
    assert_not_fired(EliminateNoopsPass, model)
