"""Integer matmuls that give the same result on every x86 CPU when onnxruntime is the reference.

onnxruntime multiplies uint8 activations by int8 weights with the instruction the CPU offers. With
VNNI (``vpdpbusd``) every product is summed in int32. Without it (AVX2, AVX-512 without VNNI) it
uses ``vpmaddubsw``, which adds two u8 x s8 products into a *saturating int16*:
``255 * (-128) * 2 = -65280`` clips at -32768. Models quantized with full-range int8 weights
(``quantize_dynamic`` without ``reduce_range``, most QLinear exports) then compute different
numbers on different CPUs, and an exact kernel (mmopt's) fails verification against the
saturated reference on an AVX2-only machine.

The same arithmetic with uint8 weights has no such pair sum (onnxruntime's u8 x u8 kernels widen
to int16 first and add pairs in int32), and int8 weights convert exactly::

    (a - za) * (w - zw) == (a - za) * ((w + 128) - (zw + 128))

:func:`exact_integer_weights` rewrites the int8 weight initializers (and their zero points, or a
zero zero point when the node has none) of the ops in :data:`WEIGHT_INPUTS` to uint8 that way,
where the activation is uint8. :func:`mmopt.runtime.ort.session` applies it to every reference
session (graph optimizations off), so a reference is the op's exact integer definition on every
CPU; the optimized ``onnxruntime`` engine, which is what a user ships, is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


@dataclass(frozen=True)
class _Weights:
    """Input positions of one u8 x s8 product: the weight, its zero point, and the activation
    whose type decides (None: quantized inside the op, always uint8) and its zero point."""

    weight: int
    weight_zero_point: int
    activation: int | None = None
    activation_zero_point: int | None = None


#: (domain, op_type) -> the u8 x s8 products its onnxruntime kernel computes
WEIGHT_INPUTS: dict[tuple[str, str], tuple[_Weights, ...]] = {
    ("", "MatMulInteger"): (_Weights(1, 3, 0, 2),),
    ("", "ConvInteger"): (_Weights(1, 3, 0, 2),),
    ("", "QLinearMatMul"): (_Weights(3, 5, 0, 2),),
    ("", "QLinearConv"): (_Weights(3, 5, 0, 2),),
    ("com.microsoft", "MatMulIntegerToFloat"): (_Weights(1, 5, 0, 4),),
    ("com.microsoft", "DynamicQuantizeMatMul"): (_Weights(1, 3),),
    ("com.microsoft", "DynamicQuantizeLSTM"): (_Weights(1, 9), _Weights(2, 11)),
}


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain == "ai.onnx" else node.domain


def _input(node: onnx.NodeProto, index: int | None) -> str:
    return node.input[index] if index is not None and index < len(node.input) else ""


class _Graph:
    """One graph's initializers and what it knows of its tensors' element types."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.types = {v.name: v.type.tensor_type.elem_type
                      for v in [*graph.input, *graph.value_info, *graph.output]
                      if v.type.HasField("tensor_type")}
        for tensor in graph.initializer:
            self.types[tensor.name] = tensor.data_type
        for node in graph.node:
            if node.op_type == "DynamicQuantizeLinear" and node.output:
                self.types.setdefault(node.output[0], TensorProto.UINT8)
            elif node.op_type in ("QuantizeLinear", "QLinearConv", "QLinearMatMul") and node.output:
                zero_point = _input(node, 2 if node.op_type == "QuantizeLinear" else 7)
                if zero_point in self.types:
                    self.types.setdefault(node.output[0], self.types[zero_point])
        self.inputs = {v.name for v in graph.input}
        self.names = {*self.initializers, *(o for n in graph.node for o in n.output),
                      *(v.name for v in graph.input)}

    def add(self, tensor: onnx.TensorProto, listed: bool) -> None:
        """A new initializer; ``listed``: also a graph input, as IR version 3 models list their
        initializers (onnxruntime refuses one that is not)."""
        self.graph.initializer.append(tensor)
        if listed:
            self.graph.input.append(onnx.helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))

    def unique(self, name: str) -> str:
        candidate, k = f"{name}__u8", 1
        while candidate in self.names:
            candidate, k = f"{name}__u8_{k}", k + 1
        self.names.add(candidate)
        return candidate

    def activation_is_uint8(self, node: onnx.NodeProto, spec: _Weights) -> bool:
        if spec.activation is None:
            return True
        for name in (_input(node, spec.activation_zero_point), _input(node, spec.activation)):
            if name and name in self.types:
                return self.types[name] == TensorProto.UINT8
        return False


def _rewrite(graph: _Graph, node: onnx.NodeProto, spec: _Weights,
             done: dict[tuple[str, str], tuple[str, str]]) -> bool:
    """Make ``node``'s int8 weight of ``spec`` uint8 (see the module docstring); False where it is
    not a constant int8 tensor with a constant zero point, or the activation is not uint8."""
    weight = _input(node, spec.weight)
    zero_point = _input(node, spec.weight_zero_point)
    tensor = graph.initializers.get(weight)
    if tensor is None or tensor.data_type != TensorProto.INT8:
        return False
    if zero_point and (graph.initializers.get(zero_point) is None
                       or graph.initializers[zero_point].data_type != TensorProto.INT8):
        return False
    if not graph.activation_is_uint8(node, spec):
        return False
    key = (weight, zero_point)
    if key not in done:
        shifted = numpy_helper.to_array(tensor).astype(np.int16) + 128
        new_weight = graph.unique(weight)
        zero = (numpy_helper.to_array(graph.initializers[zero_point]).astype(np.int16)
                if zero_point else np.array(0, np.int16))
        new_zero = graph.unique(zero_point or f"{weight}_zero_point")
        graph.add(numpy_helper.from_array(shifted.astype(np.uint8), new_weight),
                  listed=weight in graph.inputs)
        graph.add(numpy_helper.from_array((zero + 128).astype(np.uint8), new_zero),
                  listed=weight in graph.inputs)
        done[key] = (new_weight, new_zero)
    new_weight, new_zero = done[key]
    while len(node.input) <= spec.weight_zero_point:
        node.input.append("")
    node.input[spec.weight] = new_weight
    node.input[spec.weight_zero_point] = new_zero
    return True


def exact_integer_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with the int8 weights of its u8 x s8 integer products made uint8 (module
    docstring), and how many weights were rewritten. The model given is returned, unchanged,
    when there is nothing to rewrite; otherwise a copy."""
    if not needs_rewrite(model):
        return model, 0
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = _Graph(model_copy.graph)
    done: dict[tuple[str, str], tuple[str, str]] = {}
    count = 0
    for node in model_copy.graph.node:
        for spec in WEIGHT_INPUTS.get((_domain(node), node.op_type), ()):
            count += _rewrite(graph, node, spec, done)
    if not count:
        return model, 0
    # the int8 originals nothing reads any more (a subgraph or an output may still); one listed
    # as a graph input (IR version 3) leaves the inputs with it
    needed = _names_read(model_copy.graph)
    dropped = {t.name for t in model_copy.graph.initializer if t.name not in needed}
    kept = [t for t in model_copy.graph.initializer if t.name not in dropped]
    del model_copy.graph.initializer[:]
    model_copy.graph.initializer.extend(kept)
    inputs = [v for v in model_copy.graph.input if v.name not in dropped]
    del model_copy.graph.input[:]
    model_copy.graph.input.extend(inputs)
    return model_copy, count


def needs_rewrite(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s main graph has an op of :data:`WEIGHT_INPUTS` (cheap: no tensor read)."""
    return any((_domain(n), n.op_type) in WEIGHT_INPUTS for n in model.graph.node)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of ``graph`` or of its subgraphs reads, and its outputs."""
    names = {v.name for v in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else \
                    attribute.graphs:
                names |= _names_read(sub)
    return names
