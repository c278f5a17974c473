"""fp16 conversion with numerically sensitive ops kept in fp32.

The conversion itself is onnxruntime's ``float16.convert_float_to_float16`` (Cast nodes at every
fp32/fp16 boundary, graph inputs and outputs stay fp32). mmopt decides what stays fp32:

- op types in :data:`FP32_OPS`: reductions and the exponential/power family whose fp16 results
  lose too much (Softmax, LayerNorm and its decomposed ReduceMean/Pow/Sqrt chain, Exp/Log, ...),
  plus onnxruntime's own block list (ops with no fp16 kernel);
- with calibration data, every node that reads or writes a tensor whose magnitude passed
  :data:`OVERFLOW_LIMIT` (half of fp16's largest finite value 65504, for headroom) on that data;
- nodes the user names.

Verifying a compiled fp16 model (:func:`output_tolerance`): the artifact computes in fp16, while
onnxruntime's CPU kernels compute many fp16 ops in fp32 inside, so the two differ by some fp16
steps of the values that reach the outputs, not by fp32's 1e-4. As a QDQ model is compared in
steps of its output quantization scale (:mod:`mmopt.runtime.verify`), an fp16 model is compared in
steps of fp16's spacing at the largest fp16 value reaching an output: the tensor a final Cast to
fp32 reads, or, behind an fp32 island (a Softmax kept in fp32), the fp16 tensors the island reads
(a Softmax moves by at most its inputs' error). :data:`FP16_TOLERANCE_STEPS` is measured, not
derived: the zoo's digits CNN, MLP, transformer block, LSTM classifier, Conv-BN-ReLU and
MobileNetV3-style CNNs (with a Softmax) compiled in fp16 differ from onnxruntime by up to 12 such
steps; 32 leaves a margin of ~3 and still catches a wrong kernel (errors of the order of the values
themselves).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from mmopt.errors import MmoptError, summarize

logger = logging.getLogger(__name__)

FP32_OPS = (
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd", "Pow", "Sqrt", "Reciprocal", "Exp", "Log",
)
OVERFLOW_LIMIT = 65504.0 / 2
#: verification of fp16 models: tolerance in fp16 steps (spacing at the largest fp16 value that
#: reaches an output), as QDQ models get mmopt.runtime.verify.QDQ_TOLERANCE_STEPS (module docs)
FP16_TOLERANCE_STEPS = 32
#: fp16 has 10 explicit mantissa bits: the spacing at x in [2^e, 2^(e+1)) is 2^(e - 10)
_FP16_MANTISSA_BITS = 10
_FP16_MIN_EXPONENT = -14  # below 2^-14 fp16 is subnormal, with spacing 2^-24


@dataclass
class Fp16Report:
    kept_fp32: list[str] = field(default_factory=list)
    overflow: list[str] = field(default_factory=list)
    fp16_nodes: int = 0

    def to_dict(self) -> dict:
        return {"kept_fp32": self.kept_fp32, "overflow_tensors": self.overflow,
                "fp16_nodes": self.fp16_nodes}


def convert_fp16(model: onnx.ModelProto, *, keep_ops: Iterable[str] = FP32_OPS,
                 keep_nodes: Iterable[str] = (),
                 magnitudes: dict[str, float] | None = None) -> tuple[onnx.ModelProto, Fp16Report]:
    """``model`` (prepared: shapes inferred, nodes named) in fp16 with fp32 islands (module docs).

    ``magnitudes``: ``{tensor: max |x|}`` seen on calibration data, for the overflow rule.
    """
    from onnxruntime.transformers import float16

    keep_ops = set(keep_ops) | set(float16.DEFAULT_OP_BLOCK_LIST)
    keep = dict.fromkeys(keep_nodes)
    report = Fp16Report()
    if magnitudes:
        report.overflow = sorted(t for t, m in magnitudes.items() if m > OVERFLOW_LIMIT)
        hot = set(report.overflow)
        for node in model.graph.node:
            if hot & {*node.input, *node.output}:
                keep[node.name] = None
    for node in model.graph.node:
        if node.op_type in keep_ops:
            keep[node.name] = None
    report.kept_fp32 = list(keep)
    try:
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=sorted(keep_ops), node_block_list=list(keep),
            disable_shape_infer=False)
    except Exception as exc:  # noqa: BLE001 - the converter raises plain errors
        raise MmoptError(f"fp16 conversion failed ({summarize(exc)})") from exc
    converted = _sorted(converted)  # the converter appends its Cast nodes at the end
    report.fp16_nodes = sum(1 for n in converted.graph.node
                            if n.op_type != "Cast" and n.name not in keep)
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        raise MmoptError(f"the fp16 model is invalid ({summarize(exc)})") from exc
    return converted, report


def _sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_ir as ir

    work = ir.serde.deserialize_model(model)
    work.graph.sort()
    return ir.serde.serialize_model(work)


# --------------------------------------------------------------------------------------------------
# verification tolerance


def fp16_step(magnitude: float) -> float:
    """fp16's spacing (one unit in the last place) at ``magnitude``."""
    if not magnitude or not math.isfinite(magnitude):
        return 0.0 if not magnitude else math.inf
    exponent = max(math.floor(math.log2(abs(magnitude))), _FP16_MIN_EXPONENT)
    return 2.0 ** (exponent - _FP16_MANTISSA_BITS)


def fp16_boundaries(model: onnx.ModelProto) -> dict[str, list[str]]:
    """``{output: [fp32 tensors cast from fp16 that reach it]}``, for the outputs an fp16 value
    reaches: walking back from each output through fp32 nodes and Casts, the outputs of the Casts
    from fp16 (the walk stops at fp16 compute nodes). It passes the fp16 round trip that the
    converter puts after an fp32 island producing a graph output (Softmax -> Cast fp16 -> Cast
    fp32) and goes on to the island's fp16 inputs. Empty when the model does not compute in fp16."""
    from mmopt import ir as mir

    model = mir.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    producers = {out: node for node in model.graph.node for out in node.output}
    fp16 = onnx.TensorProto.FLOAT16
    out: dict[str, list[str]] = {}
    for output in model.graph.output:
        found: dict[str, None] = {}
        stack, seen = [output.name], set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producers:
                continue
            seen.add(name)
            node = producers[name]
            if node.op_type == "Cast" and types.get(node.input[0]) == fp16:
                found[name] = None
            if node.op_type == "Cast" or types.get(name) != fp16:
                stack.extend(i for i in node.input if i)
        if found:
            out[output.name] = list(found)
    return out


def output_tolerance(model: onnx.ModelProto, feeds) -> tuple[float, str] | None:
    """``(atol, note)`` for verifying a compiled fp16 ``model`` on ``feeds``:
    :data:`FP16_TOLERANCE_STEPS` fp16 steps at the largest fp16 value that reaches an output (module
    docs), measured on onnxruntime's reference execution; None when no output is computed in fp16.
    """
    from mmopt.quantize.calibrate import augment
    from mmopt.runtime import ort

    boundaries = fp16_boundaries(model)
    if not boundaries:
        return None
    names = list(dict.fromkeys(t for ts in boundaries.values() for t in ts))
    session = ort.session(augment(model, names), label="fp16 verification tolerance")
    values = dict(zip(names, ort.run(session, feeds, label="fp16 verification tolerance",
                                     names=names)))
    largest, where = 0.0, names[0]
    for name in names:
        finite = values[name][np.isfinite(values[name])]
        magnitude = float(np.abs(finite).max()) if finite.size else 0.0
        if magnitude > largest:
            largest, where = magnitude, name
    step = fp16_step(largest)
    return FP16_TOLERANCE_STEPS * step, (
        f"fp16 model: {FP16_TOLERANCE_STEPS} fp16 steps of {step:.3g} (the spacing at "
        f"{largest:.3g}, the largest fp16 value reaching an output, {where})")
