"""One quantization range for a concatenation and its inputs, where that costs little precision.

A QDQ ``Concat`` dequantizes each input with its own scale and quantizes the result with the
output's: every element is requantized, ``q_out = round((q_in - z_in) * s_in / s_out) + z_out``,
a pass over the whole tensor that an integer kernel cannot skip. When every input and the output
share one scale and zero point, that pass is the identity, and the compiled concatenation copies
bytes (:mod:`mmopt.codegen.quantized`); TFLite's int8 specification requires exactly this of its
concatenations, and MNN's converter does the same.

:func:`share_concat_ranges` gives the tensors around each quantized ``Concat`` one range, the union
of their calibrated ranges (no tensor is clipped more than before). A tensor whose own range is
much narrower than the union would lose resolution: a step ``width(union) / width(own)`` times
coarser. A concatenation is therefore joined only when that factor stays within ``limit`` (4 by
default: at most two bits lost) for every tensor involved; otherwise its tensors keep their own
ranges (YOLOv8n's box decoding joins box centres and sizes, a factor of 39).

Tensors onnxruntime's QDQ writer already ties together count as one: the outputs of element
copies and pools (``Split``, ``MaxPool``, ``Reshape``, ``Resize``, ...) are quantized with their
input's parameters (its ``quantize_output_same_as_input``), so a range chosen for a ``Split``'s
halves is, in effect, chosen for its input. Groups are joined in graph order, one concatenation
at a time; a range changes only in groups that joined at least one concatenation.

A concatenation that is not joined quantizes its output with a range that spans all its inputs,
so its narrow inputs lose that resolution at its output anyway. Where nothing quantized reads the
output (a detector's final ``Concat`` of pixel boxes and ``[0, 1]`` class scores: quantized with
the boxes' step of ~2.6, every score became 0), :func:`float_output_concats` names the
concatenation to stay float, and its output with it.

Numerics: the written QDQ model *is* the model; onnxruntime's reference execution and the compiled
artifact evaluate the shared scales alike. Against the float model, each joined tensor trades
some resolution (bounded as above) for one rounding fewer at the concatenation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import onnx

#: op types whose outputs onnxruntime's QDQ writer quantizes with their input's parameters
SAME_AS_INPUT = frozenset({
    "AveragePool", "Flatten", "Gather", "GatherElements", "MaxPool", "Pad", "Reshape", "Resize",
    "Slice", "Split", "Squeeze", "TopK", "Transpose", "Unsqueeze"})
#: the most a joined tensor's quantization step may grow (union width / own width)
DEFAULT_LIMIT = 4.0


@dataclass
class SharedScales:
    """What :func:`share_concat_ranges` did, for the quantize report."""

    limit: float
    #: one entry per group given one range: its concatenations, tensors and range
    groups: list[dict] = field(default_factory=list)
    #: concatenations left with their own ranges: ``{"node", "factor"}`` (the step growth that
    #: joining would have cost the narrowest tensor)
    kept: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"limit": self.limit, "groups": self.groups, "kept": self.kept}


class _Groups:
    """Union-find over tensor names."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        root = self.parent.setdefault(name, name)
        while root != self.parent[root]:
            root = self.parent[root]
        while name != root:  # path compression
            self.parent[name], name = root, self.parent[name]
        return root

    def join(self, names: Iterable[str]) -> str:
        names = list(names)
        root = self.find(names[0])
        for name in names[1:]:
            self.parent[self.find(name)] = root
        return root

    def members(self, names: Iterable[str]) -> set[str]:
        roots = {self.find(n) for n in names}
        return {n for n in self.parent if self.find(n) in roots}


def _width(lo: float, hi: float) -> float:
    return max(hi - lo, 0.0)


def _spread(ranges: Mapping[str, tuple[float, float]], names: Iterable[str]) -> float:
    """How many times coarser the narrowest of ``names``' ranges would be as their union (inf
    when one is empty)."""
    names = list(names)
    lo = min(ranges[n][0] for n in names)
    hi = max(ranges[n][1] for n in names)
    narrowest = min(_width(*ranges[n]) for n in names)
    return _width(lo, hi) / narrowest if narrowest > 0 else float("inf")


def share_concat_ranges(
    ranges: Mapping[str, tuple[float, float]],
    quantized: Iterable[onnx.NodeProto],
    *,
    limit: float = DEFAULT_LIMIT,
) -> tuple[dict[str, tuple[float, float]], SharedScales]:
    """The ranges with each joinable concatenation's tensors given their union (module docs).
    ``quantized``: the nodes the QDQ writer quantizes
    (:func:`mmopt.quantize.qdq.quantized_nodes`)."""
    quantized = list(quantized)
    groups = _Groups()
    tied: set[str] = set()  # outputs whose parameters are their input's
    for node in quantized:
        if node.op_type in SAME_AS_INPUT and node.input and node.input[0] in ranges:
            outs = [o for o in node.output if o in ranges]
            groups.join([node.input[0], *outs])
            tied.update(outs)
    for name in ranges:
        groups.find(name)
    report = SharedScales(limit=limit)
    joined: dict[str, list[str]] = {}  # group root -> its concatenations
    for node in quantized:
        if node.op_type != "Concat":
            continue
        names = [*node.input, *node.output]
        if not all(n in ranges for n in names):
            continue  # a constant input (not calibrated): the concatenation cannot copy bytes
        factor = _spread(ranges, (n for n in groups.members(names) if n not in tied))
        if factor > limit:
            report.kept.append({"node": node.name, "factor": round(factor, 2)})
            continue
        concats = [c for n in names for c in joined.pop(groups.find(n), [])]
        root = groups.join(names)
        joined[root] = [*dict.fromkeys(concats), node.name]
    out = dict(ranges)
    for root, concats in joined.items():
        members = sorted(groups.members([root]))
        free = [n for n in members if n not in tied]
        lo = min(ranges[n][0] for n in free)
        hi = max(ranges[n][1] for n in free)
        for name in members:
            out[name] = (lo, hi)
        report.groups.append({"concats": concats, "tensors": members,
                              "lo": float(lo), "hi": float(hi)})
    return out, report


def float_output_concats(
    model: onnx.ModelProto,
    ranges: Mapping[str, tuple[float, float]],
    quantized: Iterable[onnx.NodeProto],
    *,
    limit: float = DEFAULT_LIMIT,
) -> list[str]:
    """Concatenations to keep float (module docs): the inputs' ranges differ by more than
    ``limit`` (union width over the narrowest input's width), and no quantized node reads the
    output (graph outputs and float readers only; a reader kept float by this counts as float)."""
    quantized = list(quantized)
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    wide = {}
    for node in quantized:
        names = [n for n in node.input if n in ranges]
        if node.op_type == "Concat" and len(names) > 1 and _spread(ranges, names) > limit:
            wide[node.name] = node
    quantized_names = {n.name for n in quantized}
    chosen: list[str] = []
    changed = True
    while changed:  # a float concatenation may leave the one before it read by float only
        changed = False
        for name, node in wide.items():
            if name in chosen:
                continue
            if all(r not in quantized_names or r in chosen
                   for out in node.output for r in readers.get(out, [])):
                chosen.append(name)
                changed = True
    return chosen
