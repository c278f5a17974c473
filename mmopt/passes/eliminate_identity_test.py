"""eliminate_identity: Identity nodes removed in every graph, subgraph outputs kept valid."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from mmopt.passes._testing import apply, assert_same_outputs, make_model, op_types
from mmopt.passes.eliminate_identity import EliminateIdentityPass
from mmopt.passes.pipeline import optimize


def _count(model: onnx.ModelProto, op: str = "Identity") -> int:
    def walk(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from walk(attr.g)
    return sum(n.op_type == op for n in walk(model.graph))


def _if_model(then_nodes, then_out, else_nodes, else_out, before=()) -> onnx.ModelProto:
    """``r = Relu(x)``; ``before``; ``y = If(c) {then} {else}``; ``z = y + r``: branches may read
    ``r`` and what ``before`` writes."""
    def branch(name, nodes, out):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, 1, None)])

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), *before,
         helper.make_node("If", ["c"], ["y"], name="if",
                          then_branch=branch("then", then_nodes, then_out),
                          else_branch=branch("else", else_nodes, else_out)),
         helper.make_node("Add", ["y", "r"], ["z"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(cond: bool) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    return {"x": x, "c": np.array(cond)}


def test_both_branches_pass_the_same_outer_value_through():
    """Issue #17: onnx_ir's identity elimination made the outer ``r`` the then-branch's output,
    then failed on the else branch ("already an output of a different graph")."""
    model = _if_model([helper.make_node("Identity", ["r"], ["t"], name="then_id")], "t",
                      [helper.make_node("Identity", ["r"], ["e"], name="else_id")], "e")
    out, instance, result = apply(EliminateIdentityPass, model)
    assert not result.modified and instance.removed == 0
    onnx.checker.check_model(out, full_check=True)
    for cond in (True, False):
        assert_same_outputs(model, out, _feeds(cond))


def test_one_branch_passing_an_outer_value_stays_valid():
    # onnx_ir renamed the outer r to "t" and listed it as the branch's output: invalid ONNX
    model = _if_model([helper.make_node("Identity", ["r"], ["t"], name="then_id")], "t",
                      [helper.make_node("Neg", ["r"], ["e"], name="else_neg")], "e")
    out, _, result = apply(EliminateIdentityPass, model)
    assert not result.modified
    onnx.checker.check_model(out, full_check=True)
    assert "r" in {n.output[0] for n in out.graph.node}
    for cond in (True, False):
        assert_same_outputs(model, out, _feeds(cond))


def test_identities_inside_a_branch_and_before_it_are_removed():
    model = _if_model(
        [helper.make_node("Neg", ["r2"], ["t0"], name="then_neg"),
         helper.make_node("Identity", ["t0"], ["t"], name="then_id")], "t",
        [helper.make_node("Identity", ["r2"], ["e0"], name="else_id0"),
         helper.make_node("Abs", ["e0"], ["e"], name="else_abs")], "e",
        # r2 = Identity(r) in the main graph, read only inside the branches
        before=[helper.make_node("Identity", ["r"], ["r2"], name="main_id")])
    out, instance, result = apply(EliminateIdentityPass, model)
    assert result.modified and instance.removed == 3  # main_id, then_id (renamed), else_id0
    assert _count(out) == 0
    onnx.checker.check_model(out, full_check=True)
    for cond in (True, False):
        assert_same_outputs(model, out, _feeds(cond))
    _, _, again = apply(EliminateIdentityPass, out)
    assert not again.modified


def test_main_graph_rules():
    model = make_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[2,3] x) => (float[2,3] y, float[2,3] passthrough) {
        r = Relu (x)
        y = Identity (r)
        passthrough = Identity (x)
    }""")
    out, instance, result = apply(EliminateIdentityPass, model)
    assert result.modified and instance.removed == 1
    # y's producer is now the Relu (renamed to the output's name); input -> output stays
    assert op_types(out) == {"Relu": 1, "Identity": 1}
    assert [o.name for o in out.graph.output] == ["y", "passthrough"]
    onnx.checker.check_model(out, full_check=True)
    assert_same_outputs(model, out)


def test_pipeline_on_branches_that_pass_an_outer_value_through():
    """The -O2 pipeline (simplify, identity elimination, the rule passes' own clean-up) on a
    branch pair that passes the same outer value through: valid result, same outputs."""
    model = _if_model([helper.make_node("Identity", ["r"], ["t"], name="then_id")], "t",
                      [helper.make_node("Identity", ["r"], ["e"], name="else_id")], "e")
    optimized, report = optimize(model, 2)
    onnx.checker.check_model(optimized, full_check=True)
    for cond in (True, False):
        assert_same_outputs(model, optimized, _feeds(cond))
