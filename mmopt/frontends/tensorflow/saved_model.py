"""SavedModel directories: the serving meta graph and signature to convert, the check of what the
signature computes, and the conversion with tf2onnx.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from mmopt.errors import MmoptError, ModelLoadError, UnsupportedModelError, summarize
from mmopt.frontends.tensorflow.detect import SAVED_MODEL_FILES
from mmopt.frontends.tensorflow.environment import tf_modules
from mmopt.frontends.tensorflow.io_ops import refuse_io_ops
from mmopt.frontends.tensorflow.tf2onnx_result import _node_description, convert_checked

DEFAULT_SIGNATURE = "serving_default"


def _saved_model_dir(path: Path) -> Path:
    return path.parent if path.name in SAVED_MODEL_FILES else path


def _read_saved_model_proto(path: Path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    pb = path / "saved_model.pb"
    try:
        if pb.is_file():
            proto.ParseFromString(pb.read_bytes())
        else:
            from google.protobuf import text_format

            text_format.Parse((path / "saved_model.pbtxt").read_text(), proto)
    except Exception as exc:  # noqa: BLE001 - DecodeError, ParseError, OSError
        raise ModelLoadError(f"{path}: not a readable SavedModel ({summarize(exc)[:200]})") from exc
    return proto


def saved_model_signature(path, signature: str | None = None) -> tuple[list[str], str]:
    """``(tags, signature key)``: the serving meta graph and the signature to convert.

    ``signature`` picks one; otherwise ``serving_default``, else the only one there is.
    """
    path = _saved_model_dir(Path(path))
    proto = _read_saved_model_proto(path)
    graphs = list(proto.meta_graphs)
    if not graphs:
        raise ModelLoadError(f"{path}: the SavedModel holds no graph")
    graph = next((g for g in graphs if "serve" in g.meta_info_def.tags), graphs[0])
    tags = list(graph.meta_info_def.tags)
    keys = sorted(k for k in graph.signature_def if not k.startswith("_"))
    if signature is not None:
        if signature not in keys:
            raise MmoptError(f"{path}: no signature {signature!r}; it has: "
                             f"{', '.join(keys) or 'none'}")
        return tags, signature
    if DEFAULT_SIGNATURE in keys:
        return tags, DEFAULT_SIGNATURE
    if len(keys) == 1:
        return tags, keys[0]
    if not keys:
        raise UnsupportedModelError(
            f"{path}: the SavedModel has no signature to convert; save it with one, e.g. "
            "tf.saved_model.save(module, DIR, signatures=module.__call__.get_concrete_function("
            "tf.TensorSpec(...))), or model.export(DIR) for Keras")
    raise MmoptError(f"{path}: several signatures ({', '.join(keys)}) and none is "
                     f"{DEFAULT_SIGNATURE!r}; choose one with signature=")


def check_saved_model(path: Path, tags: Sequence[str], key: str) -> None:
    """:func:`refuse_io_ops` on what the signature ``key`` computes."""
    proto = _read_saved_model_proto(path)
    graph = next(g for g in proto.meta_graphs if list(g.meta_info_def.tags) == list(tags))
    outputs = [t.name for t in graph.signature_def[key].outputs.values()]
    refuse_io_ops(graph.graph_def, outputs, path)


def _saved_model_to_onnx(path: Path, signature: str | None, opset: int) -> onnx.ModelProto:
    _, tf2onnx = tf_modules()
    from tf2onnx import tf_loader

    path = _saved_model_dir(path)
    tags, key = saved_model_signature(path, signature)
    check_saved_model(path, tags, key)

    def run():
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(path), None, None, tag=tags, signatures=[key], return_tensors_to_rename=True)
        return tf2onnx.convert.from_graph_def(graph_def, name=path.name, input_names=inputs,
                                              output_names=outputs, tensors_to_rename=renames,
                                              opset=opset)

    return convert_checked(str(path), _node_description, run)
