"""fp16 conversion with numerically sensitive ops kept in fp32.

The conversion itself is onnxruntime's ``float16.convert_float_to_float16`` (Cast nodes at every
fp32/fp16 boundary, graph inputs and outputs stay fp32). mmopt decides what stays fp32:

- op types in :data:`FP32_OPS`: reductions and the exponential/power family whose fp16 results
  lose too much (Softmax, LayerNorm and its decomposed ReduceMean/Pow/Sqrt chain, Exp/Log, ...),
  plus onnxruntime's own block list (ops with no fp16 kernel);
- with calibration data, every node that reads or writes a tensor whose magnitude passed
  :data:`OVERFLOW_LIMIT` (half of fp16's largest finite value 65504, for headroom) on that data;
- nodes the user names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

from mmopt.errors import MmoptError, summarize

logger = logging.getLogger(__name__)

FP32_OPS = (
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd", "Pow", "Sqrt", "Reciprocal", "Exp", "Log",
)
OVERFLOW_LIMIT = 65504.0 / 2


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
