"""ONNX -> TVM Relax import, with an up-front support check.

TVM's importer stops at the first operator it cannot convert. mmopt checks the whole graph first so
the user sees every unsupported node at once, each with its name.
"""

from __future__ import annotations

import functools
import logging

import onnx

from mmopt import ir as mir
from mmopt.errors import UnsupportedModelError, summarize

logger = logging.getLogger(__name__)


@functools.cache
def supported_ops() -> frozenset[str]:
    """Op types (default ONNX domain and Microsoft contrib ops TVM knows) the Relax importer converts."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map())  # noqa: SLF001 - no public accessor exists


_KNOWN_DOMAINS = ("", "ai.onnx", "com.microsoft")


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``[(node_name, op_type), ...]`` of every node (subgraphs included) TVM cannot import."""
    ops = supported_ops()
    bad: list[tuple[str, str]] = []

    def walk(graph: onnx.GraphProto) -> None:
        for i, node in enumerate(graph.node):
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            if node.domain not in _KNOWN_DOMAINS or node.op_type not in ops:
                bad.append((node.name or f"#{i} ({node.output[0] if node.output else '?'})", op))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g)

    walk(model.graph)
    return bad


def check_supported(model: onnx.ModelProto, where: str = "model") -> None:
    bad = unsupported_nodes(model)
    if bad:
        listed = ", ".join(f"{name} ({op})" for name, op in bad[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        kinds = sorted({op for _, op in bad})
        raise UnsupportedModelError(
            f"{where}: {len(bad)} node(s) use operators the compiler does not support "
            f"[{', '.join(kinds)}]: {listed}{more}"
        )


def to_relax(model: onnx.ModelProto, where: str = "model"):
    """Import a static-shaped ONNX model into a Relax ``IRModule`` with weights bound as constants."""
    from tvm.relax.frontend.onnx import from_onnx

    from mmopt.codegen.import_legalize import importer_overrides, legalize_for_import

    check_supported(model, where)
    model = legalize_for_import(model)
    specs = mir.input_specs(model)
    shape_dict = {name: list(dims) for name, (dims, _) in specs.items()}
    dtype_dict = {name: str(dtype) for name, (_, dtype) in specs.items()}
    try:
        with importer_overrides():
            return from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict,
                             opset=mir.opset_of(model), keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001 - the importer raises anything from Python or C++
        raise UnsupportedModelError(f"{where}: TVM's ONNX importer failed: {summarize(exc)}") from exc
