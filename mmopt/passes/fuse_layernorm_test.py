"""fuse_layernorm: decomposed LayerNorm -> LayerNormalization, gamma/beta folded in."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.fuse_layernorm import FuseLayerNormPass

RNG = np.random.default_rng(0)
K = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32)}


def test_exporter_form_with_gamma_and_beta():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,5,8] x) => (float[2,5,8] y) {
        mean = ReduceMean <axes=[-1]> (x)
        d = Sub (x, mean)
        sq = Pow (d, two)
        var = ReduceMean <axes=[-1]> (sq)
        ve = Add (var, eps)
        std = Sqrt (ve)
        n = Div (d, std)
        s = Mul (n, gamma)
        y = Add (s, beta)
    }""", gamma=RNG.uniform(0.5, 1.5, 8).astype(np.float32), beta=RNG.normal(size=8).astype(np.float32), **K)
    out = check_pass(FuseLayerNormPass, model, {"fuse_layernorm": 1, "fold_scale_into_layernorm": 1,
                                               "fold_bias_into_layernorm": 1})
    assert op_types(out) == {"LayerNormalization": 1}


def test_square_as_mul_reciprocal_axes_input_two_trailing_axes():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 18]>
    net (float[2,5,8] x) => (float[2,5,8] y) {
        mean = ReduceMean (x, axes)
        d = Sub (x, mean)
        sq = Mul (d, d)
        var = ReduceMean (sq, axes)
        ve = Add (eps, var)
        std = Sqrt (ve)
        inv = Reciprocal (std)
        n = Mul (d, inv)
        y = Mul (gamma, n)
    }""", axes=np.array([1, 2], np.int64), gamma=RNG.uniform(0.5, 1.5, (1, 8)).astype(np.float32), **K)
    out = check_pass(FuseLayerNormPass, model, {"fuse_layernorm": 1, "fold_scale_into_layernorm": 1})
    assert op_types(out) == {"LayerNormalization": 1}
    scale = next(t for t in out.graph.initializer if t.name.endswith(".scale"))
    assert list(scale.dims) == [5, 8]


def test_not_fired_for_leading_axis_or_mismatched_reductions():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,5,8] x) => (float[2,5,8] y, float[2,5,8] z) {
        mean = ReduceMean <axes=[1]> (x)
        d = Sub (x, mean)
        sq = Pow (d, two)
        var = ReduceMean <axes=[1]> (sq)
        ve = Add (var, eps)
        std = Sqrt (ve)
        y = Div (d, std)
        mean2 = ReduceMean <axes=[-1]> (x)
        d2 = Sub (x, mean2)
        sq2 = Pow (d2, two)
        var2 = ReduceMean <axes=[-2, -1]> (sq2)
        ve2 = Add (var2, eps)
        std2 = Sqrt (ve2)
        z = Div (d2, std2)
    }""", **K)
    assert_not_fired(FuseLayerNormPass, model)
