"""eliminate_identity: ``y = Identity(x)`` nodes removed, without breaking subgraphs.

onnx_ir's ``IdentityEliminationPass`` treats every graph the same way: when ``y`` is a graph output
it renames ``x`` to ``y`` and makes ``x`` the output. Inside a control-flow body that is wrong when
``x`` comes from an enclosing scope (a scripted ``if`` whose branch leaves a variable unchanged is
exported as ``Identity(outer value)``): the branch would list a value it does not produce (invalid
ONNX, and the outer value silently renamed), and when two branches pass the same outer value
through, the second one fails inside onnx_ir ("Value ... is already an output of a different
graph").

For ``y = Identity(x)`` in graph ``G`` (the main graph or any subgraph):

* ``y`` not an output of ``G``: every use of ``y`` (in ``G`` and in graphs nested in it, where
  ``x`` is visible too) reads ``x``; the node goes;
* ``y`` an output of ``G``: the node goes only when ``x`` is produced by a node of ``G`` itself and
  is not already an output, input or initializer of any graph; ``x`` then takes ``y``'s name (an
  output keeps its name). Otherwise the node stays: it is how ONNX passes a value through.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

logger = logging.getLogger(__name__)


class EliminateIdentityPass(ir.passes.InPlacePass):
    """Remove Identity nodes in the main graph, subgraphs and functions (see the module docstring)."""

    def __init__(self):
        super().__init__()
        #: Identity nodes removed by the last call
        self.removed = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.removed = 0
        roots: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        for root in roots:
            for node in list(ir.traversal.RecursiveGraphIterator(root)):
                if _eliminate(node):
                    self.removed += 1
        return ir.passes.PassResult(model, modified=self.removed > 0)


def _eliminate(node: ir.Node) -> bool:
    if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.inputs) != 1 or len(node.outputs) != 1 or node.inputs[0] is None:
        return False
    x, y = node.inputs[0], node.outputs[0]
    graph = node.graph
    if graph is None:
        return False
    if y.is_graph_output():
        producer = x.producer()
        if (producer is None or producer.graph is not graph or x.is_graph_output()
                or x.is_graph_input() or x.is_initializer()):
            return False
        _annotate(x, y)
        ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
        x.name = y.name
    else:
        _annotate(x, y)
        ir.convenience.replace_all_uses_with(y, x)
    graph.remove(node, safe=True)
    logger.debug("eliminated Identity %s", node.name)
    return True


def _annotate(x: ir.Value, y: ir.Value) -> None:
    """What ``y`` says about its type and shape that ``x`` lacks, moved to ``x`` (not onto graph
    inputs or initializers: their annotations are the model's interface)."""
    if x.is_graph_input() or x.is_initializer():
        return
    x.type = x.type or y.type
    x.shape = _merge_shape(x.shape, y.shape)


def _merge_shape(a: ir.Shape | None, b: ir.Shape | None) -> ir.Shape | None:
    """``a`` with its unknown dims filled in from ``b`` (same rank); else whichever is known."""
    if a is None or b is None or len(a) != len(b):
        return a if a is not None else b

    def dim(da, db):
        if isinstance(da, int):
            return da
        if isinstance(db, int) or getattr(da, "value", None) is None:
            return db
        return da

    return ir.Shape([dim(da, db) for da, db in zip(a, b)])
