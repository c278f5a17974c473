"""Per-layer localization: where between input and output does the candidate go wrong?

Both ONNX models run on onnxruntime (graph optimizations off, so every tensor keeps its name) with
their intermediate tensors exposed as extra outputs. Tensors are matched by name: for every node
output of the reference, the candidate tensor of the same name. Where the candidate quantizes that
tensor (``T -> QuantizeLinear -> DequantizeLinear``, as QDQ models do), the dequantized value is
compared, since that is what the candidate's next layer reads; the same holds for the reference.

For each matched float tensor the data set gives (sums over all samples):

- ``snr_db = 10 log10(Σ r² / Σ (c − r)²)`` and cosine similarity;
- ``input_snr_db``: the lowest SNR among the producing node's inputs. An input with no counterpart
  in the candidate inherits the lowest SNR of *its* producer's inputs (those nodes are listed as
  ``via``); weights, constants and integer tensors count as exact;
- ``drop_db = min(input_snr_db, cap_db) − snr_db``: how much accuracy this layer lost. The cap
  (40 dB, about what int8 rounding of one tensor leaves) keeps a layer fed by exact values from
  looking like a jump merely because it was quantized.

The **culprit** is the first layer, in graph order, whose drop reaches ``jump_db`` (10 dB by
default): errors that small layers add stay below it, a wrong scale or a badly clipped range
exceeds it by far. When no layer reaches it, none is named and ``worst`` (the largest drop) is still
reported. The culprit is the layer to exclude from quantization (or to calibrate again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from mmopt.check.metrics import cosine, difference, snr_db
from mmopt.runtime import ort

DEFAULT_JUMP_DB = 10.0
DEFAULT_CAP_DB = 40.0
#: the pseudo-op naming a graph input in the layer table
INPUT_OP = "(input)"


@dataclass
class LayerStat:
    index: int
    node: str
    op_type: str
    tensor: str
    candidate_tensor: str
    snr_db: float
    cosine: float
    max_abs: float
    input_snr_db: float
    drop_db: float
    #: reference nodes without a counterpart in the candidate between this layer and its inputs
    via: list[str] = field(default_factory=list)


@dataclass
class PerLayerReport:
    samples: int
    jump_db: float
    cap_db: float
    layers: list[LayerStat]
    #: float tensors of the reference that the candidate has no tensor for (or a different shape)
    unmatched: list[str]
    culprit: LayerStat | None = None
    worst: LayerStat | None = None

    def to_dict(self) -> dict:
        return {"samples": self.samples, "jump_db": self.jump_db, "cap_db": self.cap_db,
                "culprit": asdict(self.culprit) if self.culprit else None,
                "worst": asdict(self.worst) if self.worst else None,
                "unmatched": self.unmatched, "layers": [asdict(layer) for layer in self.layers]}


class _Graph:
    """Name lookups on one model: producers, consumers, tensors, the QDQ-followed names."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.inputs = [i.name for i in graph.input]
        self.initializers = {t.name for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.tensors = set(self.producer) | set(self.inputs)

    def carried(self, name: str) -> str:
        """What the next layer reads for ``name``: its dequantized copy where it is quantized."""
        for q in self.consumers.get(name, []):
            if q.op_type == "QuantizeLinear" and q.input[0] == name:
                for dq in self.consumers.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        return dq.output[0]
        return name


def _exposing(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` added as graph outputs (onnxruntime infers their types)."""
    exposed = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in exposed.graph.output} | {i.name for i in exposed.graph.input}
    for name in names:
        if name not in have:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    return exposed


@dataclass
class _Acc:
    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    cand_sq: float = 0.0
    max_abs: float = 0.0
    comparable: bool = True


def _graph_order(reference: onnx.ModelProto) -> list[tuple[str, onnx.NodeProto | None]]:
    """Reference tensors in graph order: inputs, then node outputs."""
    ref = _Graph(reference)
    order: list[tuple[str, onnx.NodeProto | None]] = [(n, None) for n in ref.inputs
                                                      if n not in ref.initializers]
    for node in reference.graph.node:
        if node.op_type != "Constant":
            order.extend((o, node) for o in node.output if o)
    return order


def compare_layers(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                   samples: Iterable[Mapping[str, np.ndarray]], *,
                   jump_db: float = DEFAULT_JUMP_DB, cap_db: float = DEFAULT_CAP_DB,
                   labels: tuple[str, str] = ("reference", "candidate")) -> PerLayerReport:
    """Compare every intermediate tensor of two ONNX models over ``samples`` (see module docs)."""
    ref, cand = _Graph(reference), _Graph(candidate)
    order = _graph_order(reference)
    pairs = {name: (ref.carried(name), cand.carried(name)) for name, _ in order
             if name in cand.tensors}
    # the reference engine whatever --eval-engine says: optimizations would fuse tensors away
    ref_run = ort.session(_exposing(reference, [r for r, _ in pairs.values()]), label=labels[0])
    cand_run = ort.session(_exposing(candidate, [c for _, c in pairs.values()]), label=labels[1])
    ref_names = [o.name for o in ref_run.get_outputs()]
    cand_names = [o.name for o in cand_run.get_outputs()]

    def values():
        for feeds in samples:
            r_values = dict(zip(ref_names, ort.run(ref_run, feeds, label=labels[0])))
            c_values = dict(zip(cand_names, ort.run(cand_run, feeds, label=labels[1])))
            yield {**r_values, **feeds}, {**c_values, **feeds}

    return analyse_layers(reference, order, pairs, values(), jump_db=jump_db, cap_db=cap_db)


def analyse_layers(reference: onnx.ModelProto, order, pairs: dict[str, tuple[str, str]],
                   values: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], *,
                   jump_db: float = DEFAULT_JUMP_DB,
                   cap_db: float = DEFAULT_CAP_DB) -> PerLayerReport:
    """The statistics and the culprit (module docs) from ``values``: per sample, the reference's
    and the candidate's tensors by name; ``pairs``: reference tensor -> (its name in the
    reference's values, its name in the candidate's)."""
    is_float = _float_types(reference)
    acc = {name: _Acc() for name in pairs}
    count = 0
    for r_values, c_values in values:
        count += 1
        for name, (r_name, c_name) in pairs.items():
            a = acc[name]
            r, c = r_values.get(r_name), c_values.get(c_name)
            if (not a.comparable or r is None or c is None or r.shape != c.shape
                    or r.dtype.kind != "f" or c.dtype.kind != "f"):
                a.comparable = False
                continue
            r64, c64, diff = difference(r, c)
            finite = np.isfinite(r64)
            a.signal += float(np.dot(r64[finite], r64[finite]))
            a.noise += float(np.dot(diff, diff)) if np.isfinite(diff).all() else math.inf
            if np.isfinite(c64).all() and finite.all():
                a.dot += float(np.dot(r64, c64))
                a.cand_sq += float(np.dot(c64, c64))
            a.max_abs = max(a.max_abs, float(diff.max()) if diff.size else 0.0)

    compared = {n for n, a in acc.items() if a.comparable and count}
    snr = {n: snr_db(acc[n].signal, acc[n].noise) for n in compared}
    # One pass in graph order: what reaches each node's inputs. A tensor without a counterpart in
    # the candidate carries the lowest SNR of its producer's inputs (and records the producer).
    carried: dict[str, tuple[float, list[str]]] = {}

    def reaching(node: onnx.NodeProto) -> tuple[float, list[str]]:
        lowest, passed = math.inf, []
        for i in node.input:
            if i in compared:
                lowest = min(lowest, snr[i])
            elif i in carried:
                value, path = carried[i]
                lowest = min(lowest, value)
                passed.extend(p for p in path if p not in passed)
        return lowest, passed

    inputs_of: dict[int, tuple[float, list[str]]] = {}
    for node in reference.graph.node:
        if node.op_type == "Constant":
            continue
        inputs_of[id(node)] = lowest, passed = reaching(node)
        for o in node.output:
            if o and o not in compared and is_float(o):
                carried[o] = (lowest, passed + [node.name or node.op_type])

    layers: list[LayerStat] = []
    unmatched: list[str] = []
    for index, (name, node) in enumerate(order):
        if name not in compared:
            if is_float(name):
                unmatched.append(name)
            continue
        a = acc[name]
        input_snr, passed = (math.inf, []) if node is None else inputs_of[id(node)]
        value = snr[name]
        layers.append(LayerStat(
            index=index, node=name if node is None else (node.name or f"{node.op_type}_{index}"),
            op_type=INPUT_OP if node is None else node.op_type, tensor=name,
            candidate_tensor=pairs[name][1], snr_db=value,
            cosine=cosine(a.dot, a.signal, a.cand_sq), max_abs=a.max_abs,
            input_snr_db=input_snr, drop_db=min(input_snr, cap_db) - value, via=passed))
    report = PerLayerReport(count, jump_db, cap_db, layers, unmatched)
    report.culprit = next((layer for layer in layers if layer.drop_db >= jump_db), None)
    report.worst = max(layers, key=lambda layer: (_num(layer.drop_db), -layer.index), default=None)
    return report


def _num(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _float_types(model: onnx.ModelProto):
    """A predicate: may tensor ``name`` be float? (False only where shape inference says otherwise.)"""
    from mmopt import ir as mir

    inferred = mir.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
              onnx.TensorProto.BFLOAT16, onnx.TensorProto.UNDEFINED}
    return lambda name: types.get(name, onnx.TensorProto.UNDEFINED) in floats
