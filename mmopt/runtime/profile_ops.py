"""A profile's time by ONNX op type, for mmopt's kernels as onnxruntime's profile counts its nodes.

onnxruntime's side of ``mmopt profile --vs onnxruntime`` is a time per op type: its profiler
reports nodes, and a fused node counts under the op it was built from (Conv + Relu, or an NCHWc
Conv with its residual Add, is a ``Conv``). mmopt's kernels are fused too, and each is matched to
the ONNX nodes it computes (:func:`mmopt.runtime.profile.map_kernels`). Counted the same way -- a
kernel under the op that carries its work (:func:`kernel_op`) -- the two engines' times line up op
type by op type (:func:`side_by_side`), which says where one engine is slower: its convolutions,
its matrix products, or the element-wise and layout work between them.

Each op type's time in one inference is the median over the instrumented runs of that run's sum
over the op's kernels (onnxruntime's side is computed the same way): a sum of per-kernel medians
falls short of a typical run, since timing noise only ever adds
(:attr:`mmopt.runtime.profile.ProfileResult.kernel_sum_ms`).

What does not pair: op types onnxruntime renames when it fuses (a quantized ``Conv`` between
QDQ nodes runs as ``QLinearConv``; ``FusedConv`` is paired with ``Conv``, and matrix products of any
name with each other, :data:`PAIRED_AS`), and work one engine does in a kernel of its own that the
other fuses into its neighbour (mmopt's layout copies, onnxruntime's ``ReorderInput`` /
``ReorderOutput``; a SiLU that mmopt computes in its convolution's kernel and onnxruntime as a node
of its own, ``QuickGelu``). Such rows show one engine's side only, and the op a fusion went into
shows that work on one side: read a row's ratio with its neighbours.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

#: the ops a fused kernel counts under when it computes one of them (the first in its node list):
#: the contraction or recurrence that carries the kernel's work, as onnxruntime names its fused
#: nodes after them
ANCHOR_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger",
    "QLinearMatMul", "MatMulNBits", "FusedConv", "FusedGemm", "FusedMatMul", "LSTM", "GRU", "RNN",
    "Attention", "MultiHeadAttention", "Einsum"})
#: the row an op type is paired under (both engines' sides): onnxruntime's fused ops with the op
#: they were fused from, and matrix products together -- onnxruntime's transformer fusions turn a
#: MatMul + Add into a Gemm (a ViT's projections), which mmopt counts under the source's MatMul
PAIRED_AS = {"FusedConv": "Conv", "Gemm": "MatMul/Gemm", "MatMul": "MatMul/Gemm",
             "FusedGemm": "MatMul/Gemm", "FusedMatMul": "MatMul/Gemm"}
#: the op type of an mmopt kernel that only converts a layout (``mapping == "copy"``)
LAYOUT_COPY = "(layout copy)"
#: the op type of a kernel whose ONNX nodes are not known
UNKNOWN = "?"


def kernel_op(mapping: str, onnx_ops: Sequence[str]) -> str:
    """The op type a kernel call counts under: the first of its ONNX ops that carries the work
    (:data:`ANCHOR_OPS`), else its first op (an element-wise chain, a reduction, a Resize);
    :data:`LAYOUT_COPY` for a layout conversion, :data:`UNKNOWN` when its nodes are not known."""
    if mapping == "copy":
        return LAYOUT_COPY
    if not onnx_ops:
        return UNKNOWN
    return next((op for op in onnx_ops if op in ANCHOR_OPS), onnx_ops[0])


@dataclass
class OpTime:
    """One op type's share of an inference."""

    op_type: str
    #: kernel calls (mmopt) counted under it
    calls: int
    #: its time in one inference: median over runs of the run's sum over these calls
    median_ms: float
    #: median_ms as a percentage of the total (uninstrumented) latency
    percent: float


def op_times(runs: Sequence[Sequence[tuple[Hashable, float]]], op_of: Mapping[Hashable, str],
             total_ms: float) -> list[OpTime]:
    """Per op type, slowest first: ``runs`` holds each instrumented run's ``(call, ms)`` pairs,
    ``op_of`` the op type of each call (calls it lacks count as :data:`UNKNOWN`); a run without
    any call of an op counts 0 for it."""
    calls: dict[str, set] = {}
    sums = []  # each run's time per op type
    for run in runs:
        per_op: dict[str, float] = {}
        for call, ms in run:
            op = op_of.get(call, UNKNOWN)
            calls.setdefault(op, set()).add(call)
            per_op[op] = per_op.get(op, 0.0) + ms
        sums.append(per_op)
    rows = []
    for op, members in calls.items():
        ms = statistics.median(s.get(op, 0.0) for s in sums)
        rows.append(OpTime(op, len(members), ms, 100 * ms / total_ms if total_ms else 0.0))
    rows.sort(key=lambda r: (-r.median_ms, r.op_type))
    return rows


def side_by_side(mmopt_ops: Sequence[Mapping], ort_ops: Sequence[Mapping]) -> list[dict]:
    """Rows pairing mmopt's op times (:func:`op_times`, as dicts) with onnxruntime's
    (``{"op_type", "nodes", "median_ms", ...}``, :func:`mmopt.runtime.profile.onnxruntime_profile`),
    op types paired as :data:`PAIRED_AS` says: per row ``op_type``, ``mmopt_calls``, ``mmopt_ms``,
    ``onnxruntime_nodes``, ``onnxruntime_ms`` (None where that engine has none; a row an engine
    has under two op types adds their medians), ``mmopt_ops`` and ``onnxruntime_ops`` (the op
    types in the row) and ``ratio`` (mmopt / onnxruntime; None unless both have time). Slowest
    first, by the slower engine's time."""
    rows: dict[str, dict] = {}

    def add(engine: str, op: Mapping, count: int) -> None:
        name = PAIRED_AS.get(op["op_type"], op["op_type"])
        r = rows.setdefault(name, {"op_type": name, "mmopt_calls": None, "mmopt_ms": None,
                                   "onnxruntime_nodes": None, "onnxruntime_ms": None,
                                   "mmopt_ops": [], "onnxruntime_ops": [], "ratio": None})
        counted = "mmopt_calls" if engine == "mmopt" else "onnxruntime_nodes"
        r[counted] = (r[counted] or 0) + count
        r[f"{engine}_ms"] = (r[f"{engine}_ms"] or 0.0) + op["median_ms"]
        r[f"{engine}_ops"].append(op["op_type"])

    for op in mmopt_ops:
        add("mmopt", op, op["calls"])
    for op in ort_ops:
        add("onnxruntime", op, op["nodes"])
    for r in rows.values():
        if r["mmopt_ms"] is not None and r["onnxruntime_ms"]:
            r["ratio"] = r["mmopt_ms"] / r["onnxruntime_ms"]
    return sorted(rows.values(),
                  key=lambda r: (-max(r["mmopt_ms"] or 0.0, r["onnxruntime_ms"] or 0.0),
                                 r["op_type"]))
