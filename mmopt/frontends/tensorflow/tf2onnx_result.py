"""Checking and tidying tf2onnx's result: unconverted operators and invalid models become one-line
errors naming the culprit; graph inputs/outputs lose their ``:0`` ports and the batch dim is named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import onnx

from mmopt.errors import MmoptError, UnsupportedModelError, summarize
from mmopt.frontends.tensorflow.environment import _Records, quiet


def _is_onnx_op(node: onnx.NodeProto) -> bool:
    return onnx.defs.has(node.op_type, node.domain or "")


def _unconverted(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes tf2onnx left as TensorFlow (or TFLite) operators, including inside subgraphs."""
    found = []

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            if not _is_onnx_op(node):
                found.append(node)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return found


def check_converted(model: onnx.ModelProto, where: str, describe: Callable[[onnx.NodeProto], str],
                    records: _Records | None = None) -> onnx.ModelProto:
    """Fail with one line when tf2onnx left an operator unconverted or wrote an invalid model.

    ``describe(node)`` names the culprit as the user knows it (Keras layer, graph node, TFLite op).
    """
    import tf2onnx

    bad = _unconverted(model)
    if bad:
        first = bad[0]
        others = sorted({n.op_type for n in bad[1:]} - {first.op_type})
        more = f" (also unsupported: {', '.join(others)})" if others else ""
        raise UnsupportedModelError(f"{where}: {describe(first)} has no ONNX conversion in "
                                    f"tf2onnx {tf2onnx.__version__}{more}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        failed = [m for m in (records.messages if records else []) if "convert" in m.lower()]
        reason = summarize(Exception(failed[0])) if failed else summarize(exc)
        raise UnsupportedModelError(f"{where}: tf2onnx wrote an invalid ONNX model "
                                    f"({reason[:300]})") from exc
    return model


def _rename_values(model: onnx.ModelProto, renames: Mapping[str, str]) -> None:
    """Rename tensors everywhere in the main graph (inputs, outputs, node edges, value infos)."""
    if not renames:
        return
    graph = model.graph
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for values in (graph.input, graph.output, graph.value_info):
        for v in values:
            v.name = renames.get(v.name, v.name)
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)


def tidy_io_names(model: onnx.ModelProto, preferred: Mapping[str, str] | None = None) -> None:
    """Give graph inputs/outputs the ``preferred`` names, else drop a ``:0`` port suffix, where the
    new name is free (``--input-shape`` and ``mmopt run --input`` read better without ports)."""
    preferred = dict(preferred or {})
    graph = model.graph
    taken = ({n for node in graph.node for n in (*node.input, *node.output)}
             | {v.name for v in (*graph.input, *graph.output)}
             | {t.name for t in graph.initializer})
    renames: dict[str, str] = {}
    for value in (*graph.input, *graph.output):
        old = value.name
        new = preferred.get(old) or (old[:-2] if old.endswith(":0") else old)
        if new != old and new not in taken and new not in renames.values():
            renames[old] = new
    _rename_values(model, renames)


def name_batch_dim(model: onnx.ModelProto) -> None:
    """Call the symbolic leading dim of the inputs ``batch`` (tf2onnx says ``unk__12``) when all
    inputs share it (TensorFlow's ``None`` batch). Outputs keep their own names: tf2onnx gives them
    separate ones, and whether an output's leading dim is the batch is not known here."""
    params = {v.type.tensor_type.shape.dim[0].dim_param for v in model.graph.input
              if v.type.tensor_type.shape.dim}
    if len(params) != 1 or "" in params:
        return
    (param,) = params
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == param:
                dim.dim_param = "batch"


def finish(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None
           ) -> onnx.ModelProto:
    """Name the batch dim; with ``input_shapes``, make every input static (a batch dim left out
    becomes 1), as :func:`mmopt.ir.fix_input_shapes` does for compile."""
    name_batch_dim(model)
    if input_shapes:
        from mmopt import ir as mir

        model = mir.fix_input_shapes(model, input_shapes)
    return model


def convert_checked(where: str, describe: Callable[[onnx.NodeProto], str],
                    run: Callable[[], object]) -> onnx.ModelProto:
    """Run a tf2onnx conversion quietly, then check what it produced."""
    with quiet() as records:
        try:
            result = run()
        except MmoptError:
            raise
        except Exception as exc:  # noqa: BLE001 - tf2onnx and TF raise many types
            raise UnsupportedModelError(f"{where}: tf2onnx cannot convert the model: "
                                        f"{summarize(exc)[:300]}") from exc
    model = result[0] if isinstance(result, tuple) else result
    return check_converted(model, where, describe, records)


def _node_description(node: onnx.NodeProto) -> str:
    return f"node '{node.name}' (TensorFlow op {node.op_type})"
