"""decompose_misc: each small decomposition computes what onnxruntime computes for the original op."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    parse,
    rerun_modified,
    run_decompose,
)

RNG = np.random.default_rng(0)
HEADER = '<ir_version: 10, opset_import: ["" : {opset}, "ai.onnx.ml" : 3]>\n'
#: cases needing a newer opset than 17 (where the op was introduced)
OPSETS = {"decompose_cumprod": 26, "decompose_col2im": 18, "decompose_tensor_scatter": 24,
          "reduce_bool_as_integer": 20}

CASES = {
    "squeeze_to_reshape": ("""g (float[1,3,1,5] x) => (float[3,5] y) { y = Squeeze (x, axes) }""",
                           {"axes": np.array([-2, 0], np.int64)}, {"x": (1, 3, 1, 5)}),
    "unsqueeze_to_reshape": ("""g (float[3,5] x) => (float[3,1,5,1] y) { y = Unsqueeze (x, axes) }""",
                             {"axes": np.array([-1, 1], np.int64)}, {"x": (3, 5)}),
    "decompose_lp_normalization": ("""g (float[3,4] x) => (float[3,4] y) {
        y = LpNormalization <axis = 0, p = 1> (x) }""", {}, {"x": (3, 4)}),
    "decompose_cumprod": ("""g (float[3,7] x) => (float[3,7] y) {
        y = CumProd <exclusive = 1, reverse = 1> (x, axis) }""",
                          {"axis": np.array(1, np.int64)}, {"x": (3, 7)}),
    "decompose_reverse_sequence": ("""g (float[4,3,2] x, int64[3] lens) => (float[4,3,2] y) {
        y = ReverseSequence <time_axis = 0, batch_axis = 1> (x, lens) }""", {},
                                   {"x": (4, 3, 2), "lens": np.array([4, 1, 3], np.int64)}),
    "decompose_mixed_pow": ("""g (int32[5] x, float[5] e) => (int32[5] y) { y = Pow (x, e) }""", {},
                            {"x": np.array([1, 2, 3, -2, 5], np.int32),
                             "e": np.array([2, 3, 0, 3, 1], np.float32)}),
    "decompose_col2im": ("""g (float[1,8,12] x) => (float[1,2,4,5] y) {
        y = Col2Im <pads = [1, 0, 0, 1], strides = [1, 2]> (x, image, block) }""",
                         {"image": np.array([4, 5], np.int64), "block": np.array([2, 2], np.int64)},
                         {"x": (1, 8, 12)}),
    "normalize_onehot": ("""g (float[4] i, float[2] values) => (float[4,3] y) {
        y = OneHot <axis = -1> (i, depth, values) }""", {"depth": np.array(3.0, np.float32)},
                         {"i": np.array([0, 2, 1, -1], np.float32),
                          "values": np.array([-1, 5], np.float32)}),
    "decompose_tensor_scatter": ("""g (float[2,6,3] cache, float[2,2,3] new, int64[2] at) => (float[2,6,3] y) {
        y = TensorScatter <mode = "circular", axis = 1> (cache, new, at) }""", {},
                                 {"cache": (2, 6, 3), "new": (2, 2, 3), "at": np.array([1, 5], np.int64)}),
    "decompose_det": ("""g (float[2,3,3] x) => (float[2] y) { y = Det (x) }""", {}, {"x": (2, 3, 3)}),
    "reduce_bool_as_integer": ("""g (bool[3,4] x) => (bool[3] y) {
        y = ReduceMax <keepdims = 0> (x, axes) }""", {"axes": np.array([1], np.int64)},
                               {"x": np.array([[0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)}),
    "convtranspose_output_shape": ("""g (float[1,1,3,3] x) => (float[1,2,10,8] y) {
        y = ConvTranspose <strides = [3, 2], output_shape = [10, 8]> (x, w) }""",
                                   {"w": np.random.default_rng(1).standard_normal((1, 2, 3, 3))
                                    .astype(np.float32)}, {"x": (1, 1, 3, 3)}),
    "maxpool_indices": ("""g (float[2,3,7,6] x) => (float[2,3,4,3] y, int64[2,3,4,3] i) {
        y, i = MaxPool <kernel_shape = [3, 2], strides = [2, 2], pads = [1, 0, 1, 0],
                        storage_order = 1> (x) }""", {}, {"x": (2, 3, 7, 6)}),
    "decompose_binarizer": ("""g (float[2,3] x) => (float[2,3] y) {
        y = ai.onnx.ml.Binarizer <threshold = 0.25> (x) }""", {}, {"x": (2, 3)}),
    "decompose_array_feature_extractor": ("""g (float[2,5] x) => (float[2,3] y) {
        y = ai.onnx.ml.ArrayFeatureExtractor (x, idx) }""", {"idx": np.array([4, 0, 2], np.int64)},
                                          {"x": (2, 5)}),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_decomposition_matches_onnxruntime(rule):
    text, inits, inputs = CASES[rule]
    model = parse(HEADER.format(opset=OPSETS.get(rule, 17)) + text, **inits)
    feeds = {k: v if isinstance(v, np.ndarray) else RNG.standard_normal(v).astype(np.float32)
             for k, v in inputs.items()}
    before = set(op_types(model))
    decomposed, report = run_decompose(model)
    expected_rule = rule if "squeeze" not in rule else "squeeze_to_reshape"
    assert report.counts.get(expected_rule) == 1, report.counts
    if rule not in ("normalize_onehot", "decompose_mixed_pow", "reduce_bool_as_integer",
                    "convtranspose_output_shape", "maxpool_indices"):  # these keep the op, normalized
        assert not before & set(op_types(decomposed))
    assert_same_on_onnxruntime(model, decomposed, feeds)
    assert not rerun_modified(decomposed)


def test_pow_of_same_float_types_is_left_alone():
    model = parse(HEADER.format(opset=17) + "g (float[3] x, float[3] e) => (float[3] y) { y = Pow (x, e) }")
    decomposed, report = run_decompose(model)
    assert report.counts == {} and op_types(decomposed) == ["Pow"]
