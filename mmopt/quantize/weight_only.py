"""Weight-only int8: MatMul/Gemm weights stored as int8, dequantized to float where they are used.

For a weight ``W`` (a 2-D initializer read as a node's B input) with output axis ``a`` (MatMul:
1, ``[K, N]``; Gemm: 1, or 0 when ``transB=1``), per output channel ``j``::

    s_j = max_i |W_ij| / 127      (1 for an all-zero channel)
    Q_ij = clip(round(W_ij / s_j), -127, 127)   int8, zero point 0

and the node reads ``DequantizeLinear(Q, s, 0, axis=a)``. Activations stay float, so no calibration
is needed; weights take a quarter of the space, at a per-weight error of at most ``s_j / 2``. Only
initializers read by nothing but such B inputs are converted (a shared weight stays float for its
other readers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

DEFAULT_OPS = ("MatMul", "Gemm")
#: weights smaller than this stay float (the scales would cost more than they save)
MIN_ELEMENTS = 256


@dataclass
class WeightOnlyReport:
    weights: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    def to_dict(self) -> dict:
        return {"weights": self.weights, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after}


def _axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1


def quantize_weights(model: onnx.ModelProto, *, op_types: Iterable[str] = DEFAULT_OPS,
                     exclude: Iterable[str] = (), min_elements: int = MIN_ELEMENTS
                     ) -> tuple[onnx.ModelProto, WeightOnlyReport]:
    """A copy of ``model`` (opset >= 13) with weight-only int8 MatMul/Gemm weights."""
    ops, exclude = set(op_types), set(exclude)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    report = WeightOnlyReport()
    new_nodes: list[onnx.NodeProto] = []
    for name, uses in readers.items():
        tensor = inits.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        if not all(n.op_type in ops and i == 1 and n.name not in exclude for n, i in uses):
            continue
        axes = {_axis(n) for n, _ in uses}
        if len(axes) != 1:
            continue
        axis = axes.pop()
        w = numpy_helper.to_array(tensor).astype(np.float32)
        if w.size < min_elements:
            continue
        amax = np.abs(w).max(axis=1 - axis)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        shape = (1, -1) if axis == 1 else (-1, 1)
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        qname, sname, zname, dq = (f"{name}_quantized", f"{name}_scale", f"{name}_zero_point",
                                   f"{name}_dequantized")
        graph.initializer.remove(tensor)
        graph.initializer.extend([numpy_helper.from_array(q, qname),
                                  numpy_helper.from_array(scale, sname),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), zname)])
        new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [dq],
                                          name=f"{name}_DequantizeLinear", axis=axis))
        for node, i in uses:
            node.input[i] = dq
        report.weights.append(name)
        report.bytes_before += w.nbytes
        report.bytes_after += q.nbytes + scale.nbytes + scale.size
    if new_nodes:
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(new_nodes + nodes)  # DQ of initializers only: valid at the front
    return out, report
