"""converters: mmopt's converter overrides compile for x86 and compute what onnxruntime computes."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.codegen.decompose._testing import compile_and_run, parse
from mmopt.runtime.verify import run_onnxruntime

RNG = np.random.default_rng(0)
NEG_INF = np.float32(-np.inf)

CASES = {
    # pairwise Max/Sum: no stack, so the NHWC pipeline builds it
    "Max/Sum": (17, "g (float[2,3] a, float[3] b, float[2,1] c) => (float[2,3] y) {"
                    " m = Max (a, b, c) \n y = Sum (m, a, c) }",
                {"a": (2, 3), "b": (3,), "c": (2, 1)}),
    "ReduceMax all -inf row": (18, "g (float[2,4] x) => (float[2] y) {"
                                   " y = ReduceMax <keepdims = 0> (x, axes) }",
                               {"x": np.array([[1, 2, NEG_INF, 4], [NEG_INF] * 4], np.float32)}),
    "Softmax float16": (17, "g (float16[3,7] x) => (float16[3,7] y) { y = Softmax (x) }",
                        {"x": RNG.standard_normal((3, 7)).astype(np.float16)}),
    "MatMul float16": (17, "g (float16[4,64] a, float16[64,5] b) => (float16[4,5] y) { y = MatMul (a, b) }",
                       {"a": RNG.standard_normal((4, 64)).astype(np.float16),
                        "b": RNG.standard_normal((64, 5)).astype(np.float16)}),
    "OneHot float values": (17, "g (int64[3] i, float[2] v) => (float[3,4] y) { y = OneHot (i, d, v) }",
                            {"i": np.array([0, 3, 1], np.int64), "v": np.array([-2, 9], np.float32)}),
    "IsInf negative only": (17, "g (float[4] x) => (bool[4] y) { y = IsInf <detect_positive = 0> (x) }",
                            {"x": np.array([1, np.inf, -np.inf, 0], np.float32)}),
    "BitShift out of range": (28, 'g (int32[4] x, int32[4] s) => (int32[4] y) {'
                                  ' y = BitShift <direction = "RIGHT"> (x, s) }',
                              {"x": np.array([-8, 8, -1, 5], np.int32),
                               "s": np.array([1, 40, 33, 2], np.int32)}),
    "EyeLike dtype": (17, "g (int32[3,4] x) => (double[3,4] y) { y = EyeLike <dtype = 11, k = 1> (x) }",
                      {"x": np.zeros((3, 4), np.int32)}),
    "Elu float16": (17, "g (float16[5] x) => (float16[5] y) { y = Elu <alpha = 0.5> (x) }",
                    {"x": np.array([-2, -0.5, 0, 0.5, 2], np.float16)}),
    "BitCast": (26, "g (float[3] x) => (int32[3] y) { y = BitCast <to = 6> (x) }",
                {"x": np.array([1.0, -2.5, 0.0], np.float32)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converter_matches_onnxruntime(case):
    opset, text, inputs = CASES[case]
    model = parse(f'<ir_version: 10, opset_import: ["" : {opset}]>\n' + text,
                  d=np.array(4, np.int64), axes=np.array([1], np.int64))
    feeds = {k: v if isinstance(v, np.ndarray) else RNG.standard_normal(v).astype(np.float32)
             for k, v in inputs.items()}
    expected = run_onnxruntime(model, feeds)
    got = compile_and_run(model, feeds)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=1e-5, err_msg=name)
