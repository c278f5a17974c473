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
    for node in (n for graph in _graphs(model.graph) for n in graph.node):  # If/Loop bodies too
        if node.op_type in keep_ops and node.name:  # (by type: the converter's op_block_list)
            keep[node.name] = None
    report.kept_fp32 = list(keep)
    try:
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=sorted(keep_ops), node_block_list=list(keep),
            disable_shape_infer=False)
    except Exception as exc:  # noqa: BLE001 - the converter raises plain errors
        raise MmoptError(f"fp16 conversion failed ({summarize(exc)})") from exc
    converted = _sorted(_casts_into_subgraphs(converted))  # its Casts: where they belong, in order
    report.fp16_nodes = sum(1 for graph in _graphs(converted.graph) for n in graph.node
                            if n.op_type != "Cast" and n.name not in keep)
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        raise MmoptError(f"the fp16 model is invalid ({summarize(exc)})") from exc
    return converted, report


def _casts_into_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each Cast of a subgraph's value moved into that subgraph.

    For a node inside an If or Loop body that stays fp32, the converter writes the Cast nodes
    around it into the main graph, where the value they read does not exist (the zoo's
    vad_lstm_if: "the fp16 model is invalid (... is not output of any previous nodes.)"). Such a
    Cast goes into the graph that writes its input, which also reads its output; a Cast of such
    a Cast's output follows it there (the converter chains them: back to fp16, then to fp32 for a
    second fp32 reader)."""
    main = model.graph
    while True:
        # rebuilt each round: rewriting the main graph's node list copies its subgraphs
        where: dict[str, onnx.GraphProto] = {}
        for graph in _graphs(main)[1:]:
            for node in graph.node:
                for name in node.output:
                    where.setdefault(name, graph)
        defined = ({v.name for v in main.input} | {t.name for t in main.initializer}
                   | {name for node in main.node for name in node.output})
        kept = []
        for node in main.node:
            home = where.get(node.input[0]) if node.op_type == "Cast" and node.input else None
            if home is not None and node.input[0] in defined:
                home = None  # the main graph writes it too: not the converter's misplaced Cast
            if home is not None:
                home.node.append(node)
            else:
                kept.append(node)
        if len(kept) == len(main.node):
            return model
        del main.node[:]
        main.node.extend(kept)


def _sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the nodes of every graph, subgraphs included, in topological order.

    The converter appends its Cast nodes at the end of the graph they belong to, in If/Loop
    bodies too, and a Cast of a main-graph value may feed a subgraph (an outer-scope read). This
    sorts on the protobuf: onnx_ir's sort saw neither the out-of-order subgraphs (its reader
    drops a subgraph's read of a value written later in the same subgraph) nor a subgraph's reads
    of the enclosing graph (an If was left before the Cast it reads through its branches)."""
    # innermost first: sorting a graph copies its nodes, subgraphs included, into new messages
    for graph in reversed(_graphs(model.graph)):
        _sort_graph(graph)
    return model


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    out = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out.extend(_graphs(sub))
    return out


def _reads(node: onnx.NodeProto) -> set[str]:
    """The values ``node`` reads: its inputs and, through its subgraphs, outer-scope values."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in sub.node:
                names |= _reads(inner)
            names |= {value.name for value in sub.output}
    return names


def _sort_graph(graph: onnx.GraphProto) -> None:
    """Stable topological order (Kahn's, by original position); a cycle is left as it is, for the
    checker to name."""
    import heapq

    nodes = list(graph.node)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    waits = [{producer[name] for name in _reads(node) if name in producer} - {i}
             for i, node in enumerate(nodes)]
    readers: dict[int, list[int]] = {}
    for i, deps in enumerate(waits):
        for dep in deps:
            readers.setdefault(dep, []).append(i)
    ready = [i for i, deps in enumerate(waits) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for reader in readers.get(i, ()):
            waits[reader].discard(i)
            if not waits[reader]:
                heapq.heappush(ready, reader)
    if len(order) == len(nodes) and order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


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
