"""fuse_batchnorm: BN into Conv / ConvTranspose / Gemm; fired counts, checker, ORT equality, idempotence."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.fuse_batchnorm import FuseBatchNormPass

RNG = np.random.default_rng(0)


def _bn(c: int, suffix: str = "") -> dict[str, np.ndarray]:
    return {
        f"g{suffix}": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        f"b{suffix}": RNG.normal(0, 0.2, c).astype(np.float32),
        f"m{suffix}": RNG.normal(0, 0.5, c).astype(np.float32),
        f"v{suffix}": RNG.uniform(0.5, 2.0, c).astype(np.float32),
    }


def test_conv_with_and_without_bias_and_groups():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,4,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] z) {
        c1 = Conv <pads=[1,1,1,1]> (x, w1)
        y = BatchNormalization <epsilon=0.001> (c1, g, b, m, v)
        c2 = Conv <group=2> (x, w2, cb)
        z = BatchNormalization (c2, g_2, b_2, m_2, v_2)
    }""", w1=RNG.normal(size=(4, 4, 3, 3)).astype(np.float32),
        w2=RNG.normal(size=(4, 2, 1, 1)).astype(np.float32), cb=RNG.normal(size=4).astype(np.float32),
        **_bn(4), **_bn(4, "_2"))
    out = check_pass(FuseBatchNormPass, model, {"fuse_batchnorm_into_conv": 2})
    assert op_types(out) == {"Conv": 2}


def test_conv_transpose_grouped():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,4,5,5] x) => (float[1,6,10,10] y) {
        c = ConvTranspose <strides=[2,2], group=2> (x, w, cb)
        y = BatchNormalization (c, g, b, m, v)
    }""", w=RNG.normal(size=(4, 3, 2, 2)).astype(np.float32), cb=RNG.normal(size=6).astype(np.float32),
        **_bn(6))
    out = check_pass(FuseBatchNormPass, model, {"fuse_batchnorm_into_conv_transpose": 1})
    assert op_types(out) == {"ConvTranspose": 1}


def test_gemm_transposed_weight_and_beta():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[3,8] x) => (float[3,5] y, float[3,5] z) {
        g1 = Gemm <transB=1, beta=0.5> (x, w1, c1)
        y = BatchNormalization (g1, g, b, m, v)
        g2 = Gemm <alpha=2.0> (x, w2)
        z = BatchNormalization (g2, g_2, b_2, m_2, v_2)
    }""", w1=RNG.normal(size=(5, 8)).astype(np.float32), c1=RNG.normal(size=5).astype(np.float32),
        w2=RNG.normal(size=(8, 5)).astype(np.float32), **_bn(5), **_bn(5, "_2"))
    out = check_pass(FuseBatchNormPass, model, {"fuse_batchnorm_into_gemm": 2})
    assert op_types(out) == {"Gemm": 2}


def test_not_fired_when_statistics_are_inputs_or_conv_output_is_shared():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,4,8,8] x, float[4] m_in) => (float[1,4,8,8] y, float[1,4,8,8] z, float[1,4,8,8] r) {
        c1 = Conv (x, w)
        y = BatchNormalization (c1, g, b, m_in, v)
        c2 = Conv (x, w)
        z = BatchNormalization (c2, g, b, m, v)
        r = Relu (c2)
    }""", w=RNG.normal(size=(4, 4, 1, 1)).astype(np.float32), **_bn(4))
    assert_not_fired(FuseBatchNormPass, model)


def test_not_fired_when_variance_plus_epsilon_is_not_positive():
    # fuzzing: epsilon -1 gave NaN fused weights; the BatchNormalization is left as written
    stats = _bn(4)
    for eps, var in ((-1.0, np.array([0.5, 2.0, 0.8, 1.5], np.float32)),
                     (1e-5, np.full(4, np.nan, np.float32))):
        model = make_model(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1,4,8,8] x) => (float[1,4,8,8] y) {{
            c = Conv <pads=[1,1,1,1]> (x, w)
            y = BatchNormalization <epsilon={eps}> (c, g, b, m, v)
        }}""", w=RNG.normal(size=(4, 4, 3, 3)).astype(np.float32), **{**stats, "v": var})
        assert_not_fired(FuseBatchNormPass, model)
