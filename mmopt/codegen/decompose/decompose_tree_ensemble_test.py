"""decompose_tree_ensemble: path indicators and a MatMul give onnxruntime's TreeEnsemble results."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from mmopt import ir as mir
from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    rerun_modified,
    run_decompose,
)


def _ensemble(aggregate: int) -> onnx.ModelProto:
    # tree 0: x0 <= 0.5 ? (x1 < 0.2 ? leaf0 : leaf1) : leaf2 ; tree 1: x2 in {1, 3} ? leaf3 : leaf4
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", aggregate_function=aggregate,
        n_targets=2, tree_roots=[0, 2],
        nodes_featureids=[0, 1, 2], nodes_modes=helper.make_tensor("m", onnx.TensorProto.UINT8, [3],
                                                                   [0, 1, 6]),
        nodes_splits=helper.make_tensor("s", onnx.TensorProto.FLOAT, [3], [0.5, 0.2, np.nan]),
        nodes_truenodeids=[1, 0, 3], nodes_trueleafs=[0, 1, 1],
        nodes_falsenodeids=[2, 1, 4], nodes_falseleafs=[1, 1, 1],
        membership_values=helper.make_tensor("v", onnx.TensorProto.FLOAT, [2], [1.0, 3.0]),
        leaf_targetids=[0, 1, 0, 1, 0],
        leaf_weights=helper.make_tensor("w", onnx.TensorProto.FLOAT, [5], [1.0, 2.0, 3.0, 4.0, 5.0]))
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info("X", 1, [6, 3])],
                              [helper.make_tensor_value_info("Y", 1, [6, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 5)])
    return mir.infer_shapes(model)


@pytest.mark.parametrize("aggregate", [0, 1], ids=["AVERAGE", "SUM"])
def test_tree_ensemble_matches_onnxruntime(aggregate):
    model = _ensemble(aggregate)
    x = np.array([[0.1, 0.1, 1], [0.1, 0.9, 2], [0.9, 0.0, 3], [0.5, 0.2, 0],
                  [0.7, 0.3, 3], [-1, -1, 1]], np.float32)
    decomposed, report = run_decompose(model)
    assert report.counts["decompose_tree_ensemble"] == 1
    assert "TreeEnsemble" not in op_types(decomposed)
    assert_same_on_onnxruntime(model, decomposed, {"X": x})
    assert not rerun_modified(decomposed)
