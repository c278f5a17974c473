"""fold_constant_ifs: an If on a constant condition becomes the branch it takes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mmopt.passes._testing import apply, assert_same_outputs
from mmopt.passes.fold_constant_ifs import FoldConstantIfsPass
from mmopt.passes.pipeline import optimize


def _rank_check_model(cond_from_input: bool = False) -> onnx.ModelProto:
    """``x = If(rank(input) == 1) {Unsqueeze(input)} {Identity(input)}``; ``y = Relu(x) * w``,
    with a weight initializer inside the else branch and a nested constant If in it."""
    then = helper.make_graph(
        [helper.make_node("Unsqueeze", ["input", "axes0"], ["x_then"], name="unsqueeze")],
        "then", [], [helper.make_tensor_value_info("x_then", TensorProto.FLOAT, None)])
    inner = helper.make_graph(
        [helper.make_node("Mul", ["input", "two"], ["x_inner"], name="inner_mul")], "inner", [],
        [helper.make_tensor_value_info("x_inner", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    inner_else = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["x_inner_else"], name="inner_id")], "inner_else",
        [], [helper.make_tensor_value_info("x_inner_else", TensorProto.FLOAT, None)])
    keep = helper.make_graph(
        [helper.make_node("Constant", [], ["yes"], name="yes", value=numpy_helper.from_array(
            np.array(True)))] +
        [helper.make_node("If", ["yes"], ["x_else"], name="inner_if", then_branch=inner,
                          else_branch=inner_else)],
        "else", [], [helper.make_tensor_value_info("x_else", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"], name="shape"),
        helper.make_node("Size", ["shape"], ["rank"], name="rank"),
        helper.make_node("Equal", ["rank", "one"], ["is_1d"], name="is_1d"),
        helper.make_node("If", ["c" if cond_from_input else "is_1d"], ["x"], name="rank_if",
                         then_branch=then, else_branch=keep),
        helper.make_node("Relu", ["x"], ["y"], name="relu"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3])]
    if cond_from_input:
        inputs.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              initializer=[numpy_helper.from_array(np.array(1, np.int64), "one"),
                                           numpy_helper.from_array(np.array([0], np.int64),
                                                                   "axes0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _folded_condition(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as ``simplify`` leaves it: the condition an initializer, the If still there."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep = [n for n in model.graph.node if n.op_type not in ("Shape", "Size", "Equal")]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.append(numpy_helper.from_array(np.array(False), "is_1d"))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_constant_if_and_the_constant_if_inside_it_are_inlined():
    model = _folded_condition(_rank_check_model())
    out, instance, result = apply(FoldConstantIfsPass, model)
    assert result.modified and instance.inlined == 2
    assert "If" not in {n.op_type for n in out.graph.node}
    assert "two" in {t.name for t in out.graph.initializer}  # the branch's weight moved out
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_outputs(model, out)
    _, _, again = apply(FoldConstantIfsPass, out)
    assert not again.modified


def _ifs(model: onnx.ModelProto) -> list[str]:
    def walk(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from walk(attr.g)
    return sorted(n.name for n in walk(model.graph) if n.op_type == "If")


def test_condition_from_an_input_is_left_alone():
    model = _rank_check_model(cond_from_input=True)
    out, instance, result = apply(FoldConstantIfsPass, model)
    # only the constant If nested in a branch goes
    assert result.modified and instance.inlined == 1
    assert _ifs(model) == ["inner_if", "rank_if"] and _ifs(out) == ["rank_if"]
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    assert_same_outputs(model, out, {"input": x, "c": np.array(False)})


def test_an_initializer_that_is_also_an_input_is_not_a_constant():
    model = _folded_condition(_rank_check_model())
    model.graph.input.append(helper.make_tensor_value_info("is_1d", TensorProto.BOOL, []))
    out, _, _ = apply(FoldConstantIfsPass, model)
    assert _ifs(out) == ["rank_if"]


def test_simplify_inlines_what_onnxsim_leaves_and_shapes_become_static():
    model = _rank_check_model()
    optimized, report = optimize(model, 1)
    assert "If" not in report.ops_after
    optimized = onnx.shape_inference.infer_shapes(optimized)
    y = optimized.graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in y.dim] == [2, 3]  # unknown rank before: the branches differ
    assert_same_outputs(model, optimized)
