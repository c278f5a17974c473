"""fold_constants: what the importer needs as constants becomes constant before import.

TVM's Relax importer keeps ``Shape`` outputs as symbolic shape expressions and then fails on any op
other than a handful that accepts them ("cannot handle ShapeExpr inputs"); many converters also need
their axes, pads, sizes, ``k``... as constants ("only constant axes supported"). Exporters (and ONNX
function bodies, see :mod:`.expand_functions`) compute those with small subgraphs over ``Shape``.
With static input shapes every such subgraph is a constant; this stage evaluates them.

It is onnxscript's constant folder (the reference implementation of each op evaluates nodes whose
inputs are all constant; ``Shape``/``Size`` of a value with a static shape fold; ``If`` with a
constant condition is replaced by the branch it takes), run with ONNX shape inference per node so
that values produced by earlier rewrites get shapes too. Folding is bounded by onnxscript's size
limits, so large weight computations are left to TVM's own FoldConstant.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from mmopt.extend.rules import Context, Decomposition, const, constant

logger = logging.getLogger(__name__)


def fold(model: ir.Model) -> bool:
    """Fold constants in place; True if anything changed."""
    from onnxscript import optimizer

    result = optimizer.fold_constants(model, onnx_shape_inference=True)
    if result.modified:
        ir.passes.common.RemoveUnusedNodesPass()(model)
    return bool(result.modified)


class NormalizeConstant(Decomposition):
    """``Constant`` written with ``value_float(s)`` / ``value_int(s)`` becomes ``Constant <value=T>``.

    TVM's converter reads only the ``value`` attribute; the folder above writes the other forms.
    """

    name = "normalize_constant"
    op_types = ("Constant",)
    always = True

    _FORMS = {"value_float": np.float32, "value_floats": np.float32,
              "value_int": np.int64, "value_ints": np.int64}

    def wanted(self, node: ir.Node, ctx: Context) -> bool:
        return "value" not in node.attributes

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if not any(k in node.attributes for k in self._FORMS):
            return "only value, value_float(s) and value_int(s) constants are supported"
        return None

    def rewrite(self, node: ir.Node, tape: ir.tape.Tape, ctx: Context):
        (key, attribute), = ((k, a) for k, a in node.attributes.items() if k in self._FORMS)
        return [constant(tape, np.asarray(attribute.value, dtype=self._FORMS[key]))]


class FoldMultiOutputNode(Decomposition):
    """A node with several outputs whose inputs are all constants (``Split`` of a constant shape,
    ...) is evaluated with onnx's reference implementation. onnxscript's folder skips such nodes,
    which leaves the shape computations behind them unfoldable."""

    name = "fold_multi_output"
    op_types = ("Split", "TopK", "Unique")
    always = True

    #: the most elements an input or output may have to be folded
    SIZE_LIMIT = 8192

    def wanted(self, node: ir.Node, ctx: Context) -> bool:
        if len([o for o in node.outputs if o is not None]) < 2:
            return False
        arrays = [const(v) for v in node.inputs if v is not None]
        return bool(arrays) and all(a is not None and a.size <= self.SIZE_LIMIT for a in arrays)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        try:
            self._evaluate(node, ctx)
        except Exception as exc:  # noqa: BLE001 - the reference raises anything
            return f"the reference implementation could not evaluate it ({exc})"
        return None

    @staticmethod
    def _evaluate(node: ir.Node, ctx: Context) -> list[np.ndarray]:
        import onnx
        from onnx.reference import ReferenceEvaluator

        proto = ir.serde.serialize_node(node)
        feeds = {name: const(v) for name, v in zip(proto.input, node.inputs) if name}
        graph = onnx.helper.make_graph(
            [proto], "fold", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
                              for n in feeds],
            [onnx.helper.make_empty_tensor_value_info(o) for o in proto.output if o])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(
            node.domain or "", ctx.opset if node.domain in ("", "ai.onnx") else 1)])
        return ReferenceEvaluator(model).run(None, feeds)

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        values = iter(self._evaluate(node, ctx))
        return [constant(tape, next(values)) if out is not None and out.name else None
                for out in node.outputs]


RULES = (NormalizeConstant(), FoldMultiOutputNode())
