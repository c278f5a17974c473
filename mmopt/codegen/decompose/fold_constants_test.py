"""fold_constants: shape computations, constant If conditions and multi-output nodes over constants
become constants; Constant nodes take the one form TVM reads."""

from __future__ import annotations

import numpy as np

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    parse,
    rerun_modified,
    run_decompose,
)


def test_if_with_a_constant_condition_is_replaced_by_its_branch():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
      rank = Size (x)
      big = Greater (rank, five)
      y = If (big) <then_branch = t () => (float[2,3] a) { a = Relu (x) },
                    else_branch = e () => (float[2,3] b) { b = Neg (x) }>
    }""", five=np.array(5, np.int64))
    decomposed, _ = run_decompose(model)
    assert op_types(decomposed) == ["Relu"]  # Size(x) = 6 > 5: the then branch
    assert_same_on_onnxruntime(model, decomposed,
                               {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)})
    assert not rerun_modified(decomposed)


def test_shape_subgraph_and_split_of_constants_fold():
    # Shape -> Split (multi-output: onnxscript's folder skips it) -> Concat -> Reshape
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2,3,4] x) => (float[6,4] y) {
      s = Shape (x)
      a, b, c = Split <num_outputs = 3> (s)
      ab = Mul (a, b)
      shape = Concat <axis = 0> (ab, c)
      y = Reshape (x, shape)
    }""")
    decomposed, report = run_decompose(model)
    assert report.counts["fold_multi_output"] == 1
    assert op_types(decomposed) == ["Reshape"]
    assert_same_on_onnxruntime(model, decomposed,
                               {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})


def test_constant_forms_are_normalized_to_value():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y) {
      k = Constant <value_floats = [1.0, 2.0, 3.0]> ()
      y = Mul (x, k)
    }""")
    decomposed, report = run_decompose(model)
    constants = [n for n in decomposed.graph.node if n.op_type == "Constant"]
    assert report.counts.get("normalize_constant") == 1
    assert all(a.name == "value" for n in constants for a in n.attribute)
    assert_same_on_onnxruntime(model, decomposed, {"x": np.ones(3, np.float32)})
