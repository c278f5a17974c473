"""fuse_activations: each decomposed activation form becomes its op; ORT agrees; negatives stay."""

from __future__ import annotations

import numpy as np

from mmopt.passes._testing import assert_not_fired, check_pass, make_model, op_types
from mmopt.passes.fuse_activations import FuseActivationsPass

HEADER = '<ir_version: 8, opset_import: ["" : {opset}]>'
C = {  # scalar constants, as 0-d initializers
    "k0": np.array(0.0, np.float32), "k1": np.array(1.0, np.float32), "k2": np.array(2.0, np.float32),
    "k3": np.array(3.0, np.float32), "k5": np.array(5.0, np.float32), "k6": np.array(6.0, np.float32),
    "sixth": np.array(1 / 6, np.float32), "half": np.array(0.5, np.float32),
    "sqrt2": np.array(np.sqrt(2.0), np.float32), "inv_sqrt2": np.array(1 / np.sqrt(2.0), np.float32),
    "sqrt3": np.array(np.sqrt(3.0), np.float32),
    "c_a": np.array(0.044715, np.float32), "c_s": np.array(np.sqrt(2 / np.pi), np.float32),
    "c_as": np.array(0.044715 * np.sqrt(2 / np.pi), np.float32),
    "p2": np.array(0.2, np.float32),
}


def _model(body: str, outputs: str, opset: int = 17):
    text = HEADER.format(opset=opset) + f"""
    net (float[2,3,4,5] x) => ({outputs}) {{
    {body}
    }}"""
    return make_model(text, **C)


def test_hardswish_forms():
    model = _model("""
        a = Add (x, k3)
        c = Clip (a, k0, k6)
        m = Mul (x, c)
        y1 = Div (m, k6)
        a2 = Add (k3, x)
        c2 = Clip (a2, k0, k6)
        m2 = Mul (c2, x)
        y2 = Mul (m2, sixth)
        a3 = Add (x, k3)
        c3 = Clip (a3, k0, k6)
        g3 = Div (c3, k6)
        y3 = Mul (x, g3)
    """, "float[2,3,4,5] y1, float[2,3,4,5] y2, float[2,3,4,5] y3")
    out = check_pass(FuseActivationsPass, model, {"fuse_hardswish": 3, "fuse_hardsigmoid": 1})
    assert op_types(out) == {"HardSwish": 3}


def test_hardsigmoid_forms():
    model = _model("""
        a = Add (x, k3)
        c = Clip (a, k0, k6)
        y1 = Div (c, k6)
        m = Mul (x, p2)
        a2 = Add (m, half)
        y2 = Clip (a2, k0, k1)
    """, "float[2,3,4,5] y1, float[2,3,4,5] y2")
    out = check_pass(FuseActivationsPass, model, {"fuse_hardsigmoid": 2})
    assert op_types(out) == {"HardSigmoid": 2}


ERF_GELU = """
        d = Div (x, sqrt2)
        e = Erf (d)
        a = Add (e, k1)
        m = Mul (x, a)
        y1 = Mul (m, half)
        d2 = Mul (x, inv_sqrt2)
        e2 = Erf (d2)
        a2 = Add (k1, e2)
        h2 = Mul (half, x)
        y2 = Mul (h2, a2)
        d3 = Div (x, sqrt2)
        e3 = Erf (d3)
        a3 = Add (e3, k1)
        m3 = Mul (x, a3)
        y3 = Div (m3, k2)
"""
TANH_GELU = """
        tp = Pow (x, k3)
        tpc = Mul (tp, c_a)
        ti = Add (x, tpc)
        ts = Mul (ti, c_s)
        tt = Tanh (ts)
        ta = Add (tt, k1)
        tm = Mul (x, ta)
        z1 = Mul (tm, half)
        sq = Mul (x, x)
        cu = Mul (sq, x)
        l = Mul (c_s, x)
        cc = Mul (c_as, cu)
        s2 = Add (l, cc)
        t2 = Tanh (s2)
        ta2 = Add (t2, k1)
        th2 = Mul (ta2, half)
        z2 = Mul (x, th2)
"""


def test_gelu_erf_and_tanh_below_opset20_use_contrib_ops():
    model = _model(ERF_GELU + TANH_GELU, "float[2,3,4,5] y1, float[2,3,4,5] y2, float[2,3,4,5] y3, "
                                         "float[2,3,4,5] z1, float[2,3,4,5] z2")
    out = check_pass(FuseActivationsPass, model, {"fuse_gelu_erf": 3, "fuse_gelu_tanh": 2})
    assert op_types(out) == {"Gelu": 3, "FastGelu": 2}
    assert {n.domain for n in out.graph.node if n.op_type != "Constant"} == {"com.microsoft"}


def test_gelu_from_opset20_is_the_onnx_op():
    model = _model(ERF_GELU + TANH_GELU, "float[2,3,4,5] y1, float[2,3,4,5] y2, float[2,3,4,5] y3, "
                                         "float[2,3,4,5] z1, float[2,3,4,5] z2", opset=20)
    out = check_pass(FuseActivationsPass, model, {"fuse_gelu_erf": 3, "fuse_gelu_tanh": 2})
    gelus = [n for n in out.graph.node if n.op_type == "Gelu"]
    assert len(gelus) == 5 and all(n.domain == "" for n in gelus)
    assert sorted(n.attribute[0].s for n in gelus) == [b"none"] * 3 + [b"tanh"] * 2


def test_softplus_mish_sigmoid_silu():
    body = """
        e = Exp (x)
        a = Add (e, k1)
        sp = Log (a)
        t = Tanh (sp)
        y1 = Mul (x, t)
        n = Neg (x)
        en = Exp (n)
        den = Add (k1, en)
        y2 = Div (k1, den)
        n3 = Neg (x)
        en3 = Exp (n3)
        den3 = Add (en3, k1)
        y3 = Div (x, den3)
        n4 = Neg (x)
        en4 = Exp (n4)
        den4 = Add (en4, k1)
        y4 = Reciprocal (den4)
    """
    outputs = "float[2,3,4,5] y1, float[2,3,4,5] y2, float[2,3,4,5] y3, float[2,3,4,5] y4"
    out18 = check_pass(FuseActivationsPass, _model(body, outputs, opset=18),
                       {"fuse_softplus": 1, "fuse_mish": 1, "fuse_sigmoid": 2, "fuse_silu": 1})
    assert op_types(out18) == {"Mish": 1, "Sigmoid": 3, "Mul": 1}
    out17 = check_pass(FuseActivationsPass, _model(body, outputs, opset=17),
                       {"fuse_softplus": 1, "fuse_sigmoid": 2, "fuse_silu": 1})
    assert op_types(out17) == {"Softplus": 1, "Tanh": 1, "Sigmoid": 3, "Mul": 2}


def test_not_fired_for_wrong_constants_or_operands():
    model = _model("""
        a = Add (x, k3)
        c = Clip (a, k0, k5)
        m = Mul (x, c)
        y1 = Div (m, k6)
        ya = Relu (x)
        a2 = Add (ya, k3)
        c2 = Clip (a2, k0, k6)
        m2 = Mul (x, c2)
        y2 = Div (m2, k6)
        d = Div (x, sqrt3)
        e = Erf (d)
        a3 = Add (e, k1)
        m3 = Mul (x, a3)
        y3 = Mul (m3, half)
    """, "float[2,3,4,5] y1, float[2,3,4,5] y2, float[2,3,4,5] y3")
    assert_not_fired(FuseActivationsPass, model)


def test_gelu_in_float16_below_opset20_is_left_decomposed():
    text = HEADER.format(opset=17) + """
    net (float16[2,3] x) => (float16[2,3] y) {
        d = Div (x, sqrt2)
        e = Erf (d)
        a = Add (e, k1)
        m = Mul (x, a)
        y = Mul (m, half)
    }"""
    consts = {k: C[k].astype(np.float16) for k in ("sqrt2", "k1", "half")}
    assert_not_fired(FuseActivationsPass, make_model(text, **consts))
