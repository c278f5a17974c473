"""Frozen GraphDef ``.pb`` files: reading and importing the graph, its input and output tensors
(given, or the ``Placeholder`` ops and the ops nothing consumes), and the conversion with tf2onnx.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnx

from mmopt.errors import MmoptError, ModelLoadError, summarize
from mmopt.frontends.tensorflow.environment import quiet, tf_modules
from mmopt.frontends.tensorflow.io_ops import _PORT, refuse_io_ops
from mmopt.frontends.tensorflow.tf2onnx_result import _node_description, convert_checked

logger = logging.getLogger(__name__)

#: op types that are never a graph output even when nothing consumes them
_NOT_OUTPUTS = frozenset({"Const", "Placeholder", "PlaceholderWithDefault", "NoOp", "Assert",
                          "VarHandleOp", "VariableV2", "Variable", "VarIsInitializedOp",
                          "AssignVariableOp", "Assign", "SaveV2", "RestoreV2", "Print", "PrintV2"})


def _tensor_name(name: str) -> str:
    """``x`` -> ``x:0``; ``x:1`` stays."""
    return name if _PORT.search(name) else f"{name}:0"


def _read_graph_def(path: Path):
    tf, _ = tf_modules()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - DecodeError
        raise ModelLoadError(f"{path}: not a frozen TensorFlow GraphDef ({summarize(exc)[:200]})"
                             ) from exc
    if not graph_def.node:
        raise ModelLoadError(f"{path}: the GraphDef has no nodes")
    return graph_def


def _import_graph(graph_def, path: Path):
    tf, _ = tf_modules()
    graph = tf.Graph()
    with quiet(), graph.as_default():
        try:
            tf.import_graph_def(graph_def, name="")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{path}: TensorFlow cannot load the graph "
                                 f"({summarize(exc)[:300]})") from exc
    return graph


def graph_io(graph_def, path, inputs: Sequence[str] | None = None,
             outputs: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Input and output tensor names (``name:port``) of a frozen graph: the given ones, checked,
    else the ``Placeholder`` outputs and the outputs of the ops nothing consumes."""
    tf, _ = tf_modules()
    path = Path(path)
    graph = _import_graph(graph_def, path)
    ops = graph.get_operations()

    def check(names: Sequence[str], option: str) -> list[str]:
        tensors = [_tensor_name(n.strip()) for n in names if n.strip()]
        for t in tensors:
            try:
                graph.get_tensor_by_name(t)
            except (KeyError, ValueError):
                raise MmoptError(f"{path}: {option} {t.rsplit(':', 1)[0]}: no such tensor in the "
                                 "graph") from None
        return tensors

    if inputs:
        found_inputs = check(inputs, "--inputs")
    else:
        found_inputs = [op.outputs[0].name for op in ops if op.type == "Placeholder"]
        if not found_inputs:
            raise MmoptError(f"{path}: the graph has no Placeholder to use as input; name the "
                             "input tensors with --inputs NAME[,NAME...]")
    if outputs:
        found_outputs = check(outputs, "--outputs")
    else:
        consumed = {t.name for op in ops for t in op.inputs}
        found_outputs = [t.name for op in ops
                         if op.type not in _NOT_OUTPUTS and op.outputs
                         and not any(t.name in consumed for t in op.outputs)
                         for t in op.outputs if t.dtype != tf.dtypes.resource]
        if not found_outputs:
            raise MmoptError(f"{path}: cannot tell the graph's outputs; name them with "
                             "--outputs NAME[,NAME...]")
    logger.info("%s: inputs %s, outputs %s", path, ", ".join(found_inputs),
                ", ".join(found_outputs))
    return found_inputs, found_outputs


def _graphdef_to_onnx(path: Path, inputs, outputs, opset: int) -> onnx.ModelProto:
    _, tf2onnx = tf_modules()
    graph_def = _read_graph_def(path)
    in_names, out_names = graph_io(graph_def, path, inputs, outputs)
    refuse_io_ops(graph_def, out_names, path)
    return convert_checked(str(path), _node_description, lambda: tf2onnx.convert.from_graph_def(
        graph_def, name=path.stem, input_names=in_names, output_names=out_names, opset=opset))
