"""expand_functions: ops ONNX defines as functions become their (opset-converted) body, computing
what onnxruntime's kernels compute; ops TVM converts correctly are left alone."""

from __future__ import annotations

import numpy as np

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    parse,
    rerun_modified,
    run_decompose,
)

RNG = np.random.default_rng(0)


def test_context_dependent_body_from_an_older_opset_is_converted_and_matches():
    # SoftmaxCrossEntropyLoss-13's body (which calls NegativeLogLikelihoodLoss, itself a function)
    # is written for opset 13; the model is opset 18, where ReduceSum's axes became an input
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[3,5,2] scores, int64[3,2] labels, float[5] weights) => (float loss) {
      loss = SoftmaxCrossEntropyLoss <reduction = "mean", ignore_index = 1> (scores, labels, weights)
    }""")
    feeds = {"scores": RNG.standard_normal((3, 5, 2)).astype(np.float32),
             "labels": np.array([[0, 1], [4, 2], [1, 3]], np.int64),
             "weights": RNG.uniform(0.5, 1.5, 5).astype(np.float32)}
    decomposed, report = run_decompose(model)
    assert report.counts["expand_function"] == 2  # the loss, then the NLL loss in its body
    assert not {"SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"} & set(op_types(decomposed))
    assert_same_on_onnxruntime(model, decomposed, feeds)
    assert not rerun_modified(decomposed)


def test_default_domain_attention_is_always_expanded():
    model = parse("""
    <ir_version: 10, opset_import: ["" : 23]>
    g (float[2,4,8] q, float[2,6,8] k, float[2,6,8] v) => (float[2,4,8] y) {
      y = Attention <q_num_heads = 2, kv_num_heads = 2, is_causal = 1> (q, k, v)
    }""")
    feeds = {n: RNG.standard_normal(s).astype(np.float32)
             for n, s in (("q", (2, 4, 8)), ("k", (2, 6, 8)), ("v", (2, 6, 8)))}
    decomposed, report = run_decompose(model)
    assert report.counts["expand_function"] == 1
    assert "Attention" not in op_types(decomposed)
    assert_same_on_onnxruntime(model, decomposed, feeds)


def test_layer_norm_is_expanded_only_when_tvm_would_get_it_wrong():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,4] x) => (float[2,3,4] y{outputs}) {{
      y{names} = LayerNormalization <axis = {axis}> (x, scale, bias)
    }}"""
    scale4, bias4 = RNG.standard_normal(4).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
    # last axis, Y only: TVM's fused layer_norm is right; nothing to do
    plain = parse(text.format(outputs="", names="", axis=-1), scale=scale4, bias=bias4)
    decomposed, report = run_decompose(plain)
    assert report.counts == {} and op_types(decomposed) == ["LayerNormalization"]
    # Mean and InvStdDev used: TVM returns placeholders, so the function body is used
    stats = parse(text.format(outputs=", float[2,3,1] mean, float[2,3,1] inv", names=", mean, inv",
                              axis=-1), scale=scale4, bias=bias4)
    decomposed, report = run_decompose(stats)
    assert report.counts["expand_function"] == 1
    feeds = {"x": RNG.standard_normal((2, 3, 4)).astype(np.float32)}
    assert_same_on_onnxruntime(stats, decomposed, feeds)


def test_op_without_function_body_is_reported():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,4] x) => (int32[2,3] y) { y = Multinomial <sample_size = 3> (x) }""")
    decomposed, report = run_decompose(model)
    assert op_types(decomposed) == ["Multinomial"]
    assert [(r.rule, r.reason) for r in report.rejections] == [
        ("expand_function", "ONNX defines no function body for this operator")]
