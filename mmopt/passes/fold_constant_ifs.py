"""fold_constant_ifs: an ``If`` whose condition is a constant is replaced by the branch it takes.

Exporters write shape checks as control flow (a scripted ``if x.dim() == 1: x = x.unsqueeze(0)``
becomes ``If(Equal(Size(Shape(x)), 1))``). Once shapes are fixed, ``simplify`` folds the condition to
a constant but leaves the ``If``: its output then has no shape (ONNX shape inference merges the two
branches, whose ranks differ), and everything after it, including other branches' LSTMs, loses its
static shapes.

For ``If(c)`` with ``c`` a constant (initializer that is not a graph input, or ``Constant`` node):

* the taken branch's nodes move, in order, in front of the ``If`` in the enclosing graph, and its
  initializers become the enclosing graph's (renamed on a clash);
* each ``If`` output is replaced by ``Identity(branch output)``: the branch output may be a value
  of an enclosing scope, which a graph output cannot be directly; ``eliminate_identity`` removes
  the Identity nodes it can.

Runs to a fixpoint in every graph (an inlined branch can hold another constant ``If``).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)


class FoldConstantIfsPass(ir.passes.InPlacePass):
    """Inline every ``If`` with a constant condition (see the module docstring)."""

    def __init__(self):
        super().__init__()
        #: If nodes inlined by the last call
        self.inlined = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.inlined = 0
        roots: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        changed = True
        while changed:
            changed = False
            for root in roots:
                for node in list(ir.traversal.RecursiveGraphIterator(root)):
                    if node.graph is not None and _inline(node):
                        self.inlined += 1
                        changed = True
        return ir.passes.PassResult(model, modified=self.inlined > 0)


def condition_value(node: ir.Node) -> bool | None:
    """The constant condition of an ``If``, or None when it is not a constant."""
    if not node.inputs or node.inputs[0] is None:
        return None
    cond = node.inputs[0]
    if cond.is_graph_input():  # an initializer that is also an input can be fed at run time
        return None
    tensor = ir.convenience.get_const_tensor(cond)
    if tensor is None:
        return None
    array = np.asarray(tensor.numpy())
    if array.size != 1:
        return None
    return bool(array.reshape(-1)[0])


def _inline(node: ir.Node) -> bool:
    if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
        return False
    cond = condition_value(node)
    if cond is None:
        return False
    attr = node.attributes.get("then_branch" if cond else "else_branch")
    if attr is None or attr.type != ir.AttributeType.GRAPH:
        return False
    branch: ir.Graph = attr.as_graph()
    parent = node.graph
    formal = list(branch.outputs)
    if len(formal) != len(node.outputs):
        return False
    branch.outputs.clear()
    for name in list(branch.initializers):
        value = branch.initializers.pop(name)
        new_name, i = name, 0
        while new_name in parent.initializers:
            i += 1
            new_name = f"{name}_{i}"
        value.name = new_name
        parent.register_initializer(value)
    moved = list(branch)
    branch.remove(moved)
    parent.insert_before(node, moved)
    for actual, value in zip(node.outputs, formal):
        identity = ir.node("Identity", [value], name=f"{node.name or 'If'}.{actual.name}",
                           outputs=[ir.Value(name=actual.name, type=actual.type or value.type,
                                             shape=actual.shape or value.shape)])
        parent.insert_before(node, identity)
        ir.convenience.replace_all_uses_with(actual, identity.outputs[0],
                                             replace_graph_outputs=True)
    parent.remove(node, safe=True)
    logger.debug("inlined If %s (condition %s): %d nodes", node.name, cond, len(moved))
    return True
