"""convert_layout_nhwc: a conv network's image inputs and outputs become NHWC, with one Transpose at
each boundary and none inside.

What "NHWC" can mean for an ONNX model
--------------------------------------
ONNX defines Conv, ConvTranspose, MaxPool, AveragePool, BatchNormalization and InstanceNormalization
on channels-first tensors only (and TVM's importer resizes axes 2.. only). onnxruntime's CPU provider
has no channels-last convolution (``com.microsoft::NhwcConv`` and the ``com.ms.internal.nhwc`` domain
are not implemented there) and TVM's Relax ONNX importer has no converter for one. So an ONNX model
whose *interior* is NHWC has a Transpose pair around every convolution, and pushing and cancelling
those pairs gives back the NCHW graph. Kernel-level NHWC (TVM's ConvertLayout) belongs to code
generation.

What this pass does is the part that exists at the ONNX level: the model's *interface* becomes
channels-last, which is what camera pipelines and TFLite-style deployments feed, so the layout change
is part of the model (and of what the compiler optimizes), not a separate step in the application:

* first, Transposes inside the graph (TF-style NHWC islands around each convolution) are pushed down
  through elementwise ops, Concat, global pools and Resize and cancelled in pairs: the rules of
  ``optimize_transposes``;
* each 4-D float graph input ``x[N, C, H, W]`` becomes ``x[N, H, W, C]`` followed by
  ``Transpose(perm=[0, 3, 1, 2])``; inputs already consumed only through that Transpose (models from
  TF/TFLite) are left alone;
* each 4-D float graph output ``y[N, C, H, W]`` becomes ``Transpose(y, perm=[0, 2, 3, 1])``, named
  ``y`` (outputs already produced by that Transpose are left alone);
* the same rules once more: a boundary Transpose that meets another one through layout-agnostic ops
  is composed with it (or both vanish); one that meets none stays at the boundary.

Names of inputs and outputs are unchanged; their 4-D shapes are permuted. Models without a layout-bound
op (Conv, ConvTranspose, pools) are not touched.
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir

from mmopt.passes._rules import infer_shapes
from mmopt.passes.transposes import OptimizeTransposesPass, perm_of

TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]
_LAYOUT_BOUND = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                 "GlobalMaxPool", "BatchNormalization", "InstanceNormalization"}


def _is_image(value: ir.Value) -> bool:
    return (value.shape is not None and len(value.shape) == 4 and value.dtype is not None
            and value.dtype.is_floating_point())


def _is_transpose(node: ir.Node | None, perm: list[int]) -> bool:
    return node is not None and node.op_type == "Transpose" and perm_of(node, 4) == perm


def _permuted(shape: ir.Shape, perm: list[int]) -> ir.Shape:
    return ir.Shape([shape.dims[p] for p in perm])


class ConvertLayoutNHWCPass(ir.passes.InPlacePass):
    """4-D image inputs/outputs to NHWC (one boundary Transpose each); inner Transposes cancelled."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        if not any(n.op_type in _LAYOUT_BOUND for n in ir.traversal.RecursiveGraphIterator(graph)):
            return ir.passes.PassResult(model, modified=False)
        cleanup = OptimizeTransposesPass()
        cleanup(model)
        self.counts.update(cleanup.counts)
        infer_shapes(model)
        for i, value in enumerate(list(graph.inputs)):
            if value.is_initializer() or not _is_image(value):
                continue
            uses = value.uses()
            if uses and all(_is_transpose(use.node, TO_NCHW) for use in uses):
                continue  # already NHWC
            graph.inputs[i] = self._input_to_nhwc(graph, value)
            self.counts["convert_input_to_nhwc"] += 1
        for i, value in enumerate(list(graph.outputs)):
            if not _is_image(value) or _is_transpose(value.producer(), TO_NHWC) or value.is_graph_input():
                continue
            graph.outputs[i] = self._output_to_nhwc(graph, value)
            self.counts["convert_output_to_nhwc"] += 1
        fold = OptimizeTransposesPass()
        fold(model)
        self.counts.update(fold.counts)
        return ir.passes.PassResult(model, modified=sum(self.counts.values()) > 0)

    @staticmethod
    def _input_to_nhwc(graph: ir.Graph, old: ir.Value) -> ir.Value:
        name = old.name
        new = ir.Value(name=name, type=old.type, shape=_permuted(old.shape, TO_NHWC))
        old.name = f"{name}_nchw"
        node = ir.node("Transpose", [new], attributes={"perm": TO_NCHW}, name=f"{name}.to_nchw")
        result = node.outputs[0]
        result.name, result.type, result.shape = f"{name}.nchw", old.type, old.shape
        old.replace_all_uses_with(result, replace_graph_outputs=True)
        if len(graph):
            graph.insert_before(graph.node(0), node)
        else:
            graph.append(node)
        return new

    @staticmethod
    def _output_to_nhwc(graph: ir.Graph, old: ir.Value) -> ir.Value:
        name = old.name
        old.name = f"{name}_nchw"
        node = ir.node("Transpose", [old], attributes={"perm": TO_NHWC}, name=f"{name}.to_nhwc")
        result = node.outputs[0]
        result.name, result.type, result.shape = name, old.type, _permuted(old.shape, TO_NHWC)
        graph.append(node)
        return result
