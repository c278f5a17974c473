"""TensorFlow Lite frontend: a ``.tflite`` flatbuffer -> ONNX.

    model = to_onnx("mobilenet_v2.tflite")

Converted by tf2onnx's TFLite reader (opset 17): float models and int8/uint8-quantized ones (whose
quantization becomes QuantizeLinear/DequantizeLinear). Inputs and outputs take the names of the
model's signature (``serving_default``: e.g. ``keras_tensor`` -> ``output_0``, as in the SavedModel
it was converted from); a model without signatures keeps its tensor names, less any ``:0``. An
operator tf2onnx cannot convert fails with one line naming the operator, the tensor it writes and
the file. The reference for verification is TensorFlow's TFLite interpreter (LiteRT's when the
``ai-edge-litert`` package is installed). Needs ``pip install 'mmopt[tf]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from mmopt.errors import MmoptError, ModelLoadError, summarize
from mmopt.frontends.tensorflow import (
    DEFAULT_OPSET,
    convert_checked,
    native_output_silenced,
    finish,
    quiet,
    tf_modules,
    tidy_io_names,
)

logger = logging.getLogger(__name__)

#: the flatbuffer file identifier, at bytes 4..8 of every TFLite model
IDENTIFIER = b"TFL3"


def sniff(head: bytes) -> bool:
    """Whether a file's first bytes are a TFLite flatbuffer."""
    return len(head) >= 8 and head[4:8] == IDENTIFIER


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    data = path.read_bytes()
    if not sniff(data[:8]):
        raise ModelLoadError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    return data


def _verify(path: Path, data: bytes) -> None:
    """Refuse a damaged flatbuffer before native code trusts it.

    tf2onnx opens the model with ``tf.lite.Interpreter(path)``, which builds it from a file without
    verifying the flatbuffer: a flipped byte in an offset crashes the process (SIGSEGV). Built from
    memory, the interpreter runs the flatbuffer verifier first and builds the graph (tensor and
    operator indices checked), so what passes here does not crash the conversion."""
    tf, _ = tf_modules()
    try:
        with quiet(), native_output_silenced():
            tf.lite.Interpreter(model_content=data)
    except Exception as exc:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError
        raise ModelLoadError(f"{path}: not a valid TFLite model ({summarize(exc)[:200]}); the "
                             "file may be truncated or corrupt") from exc


def signature_names(path) -> dict[str, str]:
    """``{tensor name: signature name}`` for the inputs and outputs of the model's signature
    (``serving_default``, else the first), read from the flatbuffer; empty when it has none."""
    tf_modules()
    from tf2onnx.tflite.Model import Model

    data = bytearray(_read(Path(path)))
    try:
        model = Model.GetRootAsModel(data, 0)
        if not model.SignatureDefsLength():
            return {}
        signatures = [model.SignatureDefs(i) for i in range(model.SignatureDefsLength())]
        chosen = next((s for s in signatures if s.SignatureKey() == b"serving_default"),
                      signatures[0])
        subgraph = model.Subgraphs(chosen.SubgraphIndex())
        names = {}
        for maps, count in ((chosen.Inputs, chosen.InputsLength()),
                            (chosen.Outputs, chosen.OutputsLength())):
            for j in range(count):
                entry = maps(j)
                tensor = subgraph.Tensors(entry.TensorIndex()).Name().decode()
                names[tensor] = entry.Name().decode()
        return names
    except Exception as exc:  # noqa: BLE001 - a malformed flatbuffer raises anything
        logger.debug("%s: cannot read signatures (%s)", path, exc)
        return {}


def _describe(node: onnx.NodeProto) -> str:
    op = node.op_type.removeprefix("TFL_")
    return f"operator {op} (writing tensor '{node.name}')"


def to_onnx(path, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
            opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a ``.tflite`` model to ONNX. ``input_shapes`` makes the inputs static."""
    path = Path(path)
    _verify(path, _read(path))
    _, tf2onnx = tf_modules()
    with native_output_silenced():  # the TFLite interpreter tf2onnx starts logs from C++
        model = convert_checked(str(path), _describe,
                         lambda: tf2onnx.convert.from_tflite(str(path), opset=opset))
    tidy_io_names(model, signature_names(path))
    return finish(model, input_shapes)


def _onnx_name(tensor: str, renamed: Mapping[str, str]) -> str:
    """The name :func:`to_onnx` gives a TFLite tensor (see :func:`tidy_io_names`)."""
    return renamed.get(tensor) or (tensor[:-2] if tensor.endswith(":0") else tensor)


def _interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        tf, _ = tf_modules()
        Interpreter = tf.lite.Interpreter  # noqa: N806 - deprecated in TF 2.20+, still present
    return Interpreter(model_path=str(path))


def reference_outputs(path, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                      **_ignored) -> dict[str, np.ndarray]:
    """The model's outputs on ``feeds`` from the TFLite interpreter, keyed like ``model``'s outputs
    (``model`` must come from :func:`to_onnx` on the same file)."""
    path = Path(path)
    _verify(path, _read(path))
    renamed = signature_names(path)
    with quiet(), native_output_silenced():
        interpreter = _interpreter(path)
        details = {d["name"]: d for d in interpreter.get_input_details()}
        by_name = {**{_onnx_name(n, renamed): d for n, d in details.items()}, **details}
        try:
            for name, value in feeds.items():
                if name not in by_name:
                    raise MmoptError(f"{path}: the TFLite model has no input {name!r}")
                detail = by_name[name]
                if tuple(detail["shape"]) != tuple(value.shape):
                    interpreter.resize_tensor_input(detail["index"], list(value.shape))
            interpreter.allocate_tensors()
            for name, value in feeds.items():
                detail = by_name[name]
                interpreter.set_tensor(detail["index"],
                                       np.ascontiguousarray(value, detail["dtype"]))
            interpreter.invoke()
        except MmoptError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise MmoptError(f"{path}: the TFLite interpreter failed ({summarize(exc)[:300]})"
                             ) from exc
        outputs = {}
        for detail in interpreter.get_output_details():
            value = interpreter.get_tensor(detail["index"])
            outputs[detail["name"]] = value
            outputs.setdefault(_onnx_name(detail["name"], renamed), value)
    missing = [o.name for o in model.graph.output if o.name not in outputs]
    if missing:
        raise MmoptError(f"{path}: the TFLite interpreter has no output(s) {', '.join(missing)}")
    return {o.name: outputs[o.name] for o in model.graph.output}


__all__ = ["IDENTIFIER", "reference_outputs", "signature_names", "sniff", "to_onnx"]
