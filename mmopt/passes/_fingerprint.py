"""Structural fingerprint of a model, used to report ``modified`` honestly for passes that rebuild it."""

from __future__ import annotations

import hashlib

import onnx_ir as ir


def fingerprint(model: ir.Model) -> str:
    """Hash of the graph's structure, independent of value names.

    Tools such as onnxsim renumber the values they create on every run, so names are replaced by the
    order in which values are first seen. Nodes (op, wiring, attributes) and tensor shapes/dtypes are
    hashed; tensor contents are not (too slow for large models), so passes that only rewrite weights
    in place must report ``modified`` themselves.
    """
    ids: dict[int, int] = {}
    # Constants (initializers and Constant nodes) are described by dtype and shape where they are
    # used, not numbered: tools emit them in arbitrary order.
    constants: dict[int, str] = {
        id(v): f"init{v.dtype}{v.shape}" for v in model.graph.initializers.values()
    }
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and not node.inputs:
            constants[id(node.outputs[0])] = "const" + ",".join(
                f"{k}={describe(a.value)}" for k, a in sorted(node.attributes.items()))

    def vid(value: ir.Value | None) -> str:
        if value is None:
            return "-"
        if id(value) in constants:
            return constants[id(value)]
        return str(ids.setdefault(id(value), len(ids)))

    h = hashlib.sha256()
    for value in model.graph.inputs:
        h.update(f"in {vid(value)} {value.shape} {value.dtype}\n".encode())
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if id(node.outputs[0]) in constants if node.outputs else False:
            continue
        ins = ",".join(vid(v) for v in node.inputs)
        outs = ",".join(vid(v) for v in node.outputs)
        attrs = "|".join(f"{k}={describe(a.value)}" for k, a in sorted(node.attributes.items()))
        h.update(f"{node.domain}::{node.op_type}({ins})->{outs} {attrs}\n".encode())
    h.update(("out " + ",".join(vid(v) for v in model.graph.outputs)).encode())
    return h.hexdigest()


def describe(attr_value) -> str:
    if isinstance(attr_value, ir.TensorProtocol):
        return f"tensor{attr_value.dtype}{attr_value.shape}"
    if isinstance(attr_value, ir.Graph):
        return "graph"
    return repr(attr_value)
