"""Preparing a float model for quantization and writing the QDQ graph from calibrated ranges.

Stages (in order; each returns a valid ONNX model that onnxruntime runs):

1. ``normalize_opset`` to :data:`mmopt.ir.MIN_OPSET` (per-channel DequantizeLinear needs opset >= 13).
2. ``fold_for_quantization``: onnxruntime's *basic* graph optimizations, which stay within standard
   ONNX ops: BatchNormalization folded into the Conv before it, Conv + constant Add/Mul folded,
   constants folded. Folding first means a Conv's weights are quantized with their BN scale
   included (the weights that actually run) and no float BN sits between a Conv and its QDQ.
3. shape inference and a unique name for every node (exclusion and reports go by node name).
4. ``write_qdq``: onnxruntime's QDQ writer (``QDQQuantizer``), fed with mmopt's calibrated ranges
   instead of onnxruntime's calibrators. Weights: symmetric int8, per channel (or per tensor), on
   the full grid ``[-127, 127]`` or, with ``weight_bits=7``, on ``[-64, 64]`` (onnxruntime's
   ``reduce_range``: x86 CPUs without VNNI then multiply u8 x s8 byte pairs with ``vpmaddubsw``,
   whose int16 pair sums cannot saturate on such weights, see :mod:`mmopt.codegen.int8_x86`).
   Activations: int8 symmetric (zero point 0) or uint8 asymmetric. Bias: int32 with scale
   ``input_scale * weight_scale`` and zero point 0.

Op types quantized are onnxruntime's static QDQ set (:data:`QUANTIZABLE_OPS`); a tensor gets a
QuantizeLinear/DequantizeLinear pair when any quantized node reads or writes it, and every reader
then sees the dequantized value.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from mmopt import ir as mir
from mmopt.errors import MmoptError, summarize

logger = logging.getLogger(__name__)

#: onnxruntime's quantizer marks models whose shapes it inferred with this metadata entry
_INFER_TAG = ("onnx.infer", "onnxruntime.quant")
#: activation types: name -> symmetric?
ACTIVATION_TYPES = {"int8": True, "uint8": False}
#: weight grids: bits -> largest magnitude (8: onnxruntime's symmetric int8; 7: its reduce_range)
WEIGHT_LIMITS = {8: 127, 7: 64}


def quantizable_ops() -> list[str]:
    """The op types onnxruntime's static QDQ quantization handles."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


# --------------------------------------------------------------------------------------------------
# preparation


def prepare(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
            *, fold: bool = True) -> onnx.ModelProto:
    """Stages 1-3: opset, folding, shapes and node names."""
    model = mir.normalize_opset(model, mir.MIN_OPSET)
    if mir.opset_of(model) < 13:
        raise MmoptError(f"quantization needs opset >= 13 (per-channel DequantizeLinear); the model "
                         f"is opset {mir.opset_of(model)} and onnx's converter could not upgrade it")
    if input_shapes:
        model = mir.fix_input_shapes(model, input_shapes)
    if fold:
        model = fold_for_quantization(model)
    model = mir.infer_shapes(model)
    name_nodes(model)
    return model


def fold_for_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic-level graph optimizations (BN into Conv, constant folding)."""
    from mmopt.runtime import ort

    with tempfile.TemporaryDirectory(prefix="mmopt-quant-") as tmp:
        path = os.path.join(tmp, "folded.onnx")
        ort.session(model, label="quantize (folding the model)", optimization="basic",
                    optimized_model_path=path)
        folded = onnx.load(path)
    _drop_unused_opsets(folded)
    folded.ir_version = model.ir_version
    return folded


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed (or duplicate-named) node a unique name ``<OpType>_<index>``, in place."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = f"{node.op_type}_{i}"
            name, k = base, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
        seen.add(node.name)


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)


# --------------------------------------------------------------------------------------------------
# what to calibrate and what to exclude


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Float tensors of the main graph: its inputs and what its nodes compute. (value_info may
    still describe tensors that folding removed, e.g. a Conv's output before its BatchNorm was
    folded in: asking onnxruntime for those makes it refuse the model.)"""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    live = {name for node in model.graph.node for name in node.output if name}
    live |= {v.name for v in model.graph.input}
    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    return {v.name for v in values if v.type.tensor_type.elem_type in floats and v.name in live}


def quantized_nodes(model: onnx.ModelProto, exclude: Iterable[str] = (),
                    op_types: Iterable[str] | None = None) -> list[onnx.NodeProto]:
    """Nodes the QDQ writer will consider: a quantizable op type, not excluded."""
    ops = set(op_types) if op_types is not None else set(quantizable_ops())
    exclude = set(exclude)
    return [n for n in model.graph.node if n.op_type in ops and n.name not in exclude]


def calibration_tensors(model: onnx.ModelProto, exclude: Iterable[str] = (),
                        op_types: Iterable[str] | None = None) -> list[str]:
    """Float activations read or written by a quantized node: each needs a range."""
    floats = float_tensors(model)
    inits = {t.name for t in model.graph.initializer}
    seen: dict[str, None] = {}
    for node in quantized_nodes(model, exclude, op_types):
        for name in [*node.input, *node.output]:
            if name and name in floats and name not in inits:
                seen[name] = None
    return list(seen)


def resolve_exclude(model: onnx.ModelProto, items: Iterable[str]) -> list[str]:
    """Node names for ``--exclude`` items, each a node name or an op type (all nodes of it)."""
    names = [n.name for n in model.graph.node]
    by_type: dict[str, list[str]] = {}
    for node in model.graph.node:
        by_type.setdefault(node.op_type, []).append(node.name)
    out: dict[str, None] = {}
    for item in items:
        if item in names:
            out[item] = None
        elif item in by_type:
            out.update(dict.fromkeys(by_type[item]))
        else:
            close = [n for n in names if item.lower() in n.lower()][:5]
            raise MmoptError(
                f"--exclude {item}: no node or op type of that name in the model (op types: "
                + ", ".join(sorted(by_type)) + ")"
                + (f"; nodes with similar names: {', '.join(close)}" if close else ""))
    return list(out)


# --------------------------------------------------------------------------------------------------
# writing QDQ


def write_qdq(
    model: onnx.ModelProto,
    ranges: Mapping[str, tuple[float, float]],
    *,
    per_channel: bool = True,
    activations: str = "int8",
    exclude: Iterable[str] = (),
    op_types: Iterable[str] | None = None,
    weight_bits: int = 8,
) -> onnx.ModelProto:
    """The QDQ model of a prepared ``model`` with activation ``ranges`` (see the module docs)."""
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    if activations not in ACTIVATION_TYPES:
        raise MmoptError(f"--activations {activations}: use one of {', '.join(ACTIVATION_TYPES)}")
    if weight_bits not in WEIGHT_LIMITS:
        raise MmoptError(f"--weight-bits {weight_bits}: use one of "
                         f"{', '.join(str(b) for b in WEIGHT_LIMITS)}")
    exclude = list(exclude)
    op_types = list(op_types) if op_types is not None else quantizable_ops()
    needed = calibration_tensors(model, exclude, op_types)
    missing = [t for t in needed if t not in ranges]
    if missing:
        raise MmoptError(f"no calibrated range for tensor(s) {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
    data = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        for name, (lo, hi) in ranges.items() if name in set(needed)})
    work = onnx.ModelProto()
    work.CopyFrom(model)
    # Shapes are inferred already (prepare); this tag stops the writer from saving and reloading
    # the model to infer them again. It is removed from the result.
    work.metadata_props.add(key=_INFER_TAG[0], value=_INFER_TAG[1])
    extra = {
        "ActivationSymmetric": ACTIVATION_TYPES[activations],
        "WeightSymmetric": True,
    }
    try:
        quantizer = QDQQuantizer(
            work, per_channel, weight_bits == 7, QuantType.QInt8,
            QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            data, [], exclude, op_types, extra)
        quantizer.quantize_model()
        quantizer.model.topological_sort()  # the writer appends Q/DQ nodes at the end
        quantized = quantizer.model.model
    except Exception as exc:  # noqa: BLE001 - the writer raises plain ValueError/AssertionError
        raise MmoptError(f"writing the QDQ model failed ({summarize(exc)})") from exc
    quantized.producer_name = "mmopt"
    props = [p for p in quantized.metadata_props if (p.key, p.value) != _INFER_TAG]
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(props)
    _drop_unused_opsets(quantized)
    try:
        onnx.checker.check_model(quantized)
    except onnx.checker.ValidationError as exc:
        raise MmoptError(f"the QDQ model is invalid ({summarize(exc)})") from exc
    return quantized
