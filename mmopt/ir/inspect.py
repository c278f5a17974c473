"""Static inspection of ONNX models: I/O signature, parameter counts and MACs.

`inspect_model` looks at an ``onnx.ModelProto`` without running it and returns an
`InspectReport`; `render` prints that report as rich tables.

Shapes of intermediate tensors come from ONNX shape inference (run with data
propagation, so shapes computed by ``Shape -> Concat -> Reshape`` chains are
resolved).  When inference fails, the shapes already stored in the model are used.

MACs (multiply-accumulates) are counted for the compute-heavy ops only: Conv,
ConvTranspose, Gemm and MatMul, plus their quantized twins (ConvInteger,
QLinearConv, MatMulInteger, QLinearMatMul), all in the default ONNX domain.
Element-wise ops, pooling, normalisation, bias additions etc. are not counted.
MACs are counted for nodes of the main graph only: bodies of ``If``/``Loop``/``Scan``
may run any number of times (or not at all), so their cost is not statically known.
Their nodes *are* counted in the op histogram and ``node_count``, and their
initializers / Constant nodes in the parameter totals.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto

__all__ = ["TensorInfo", "InspectReport", "inspect_model", "render"]

# Domains that mean "the standard ONNX operator set".
_DEFAULT_DOMAINS = ("", "ai.onnx")

# Element types stored with fewer than 8 bits per element (packed).
_SUB_BYTE_BITS: dict[int, int] = {
    getattr(TensorProto, name): bits
    for name, bits in (
        ("INT4", 4),
        ("UINT4", 4),
        ("FLOAT4E2M1", 4),
        ("INT2", 2),
        ("UINT2", 2),
        ("FLOAT6E2M3", 6),
        ("FLOAT6E3M2", 6),
    )
    if hasattr(TensorProto, name)  # older onnx releases lack some of these
}


# --------------------------------------------------------------------------- #
# Report data classes
# --------------------------------------------------------------------------- #


@dataclass
class TensorInfo:
    """Name, element type and shape of a graph input or output.

    ``dtype`` is the numpy name of the element type (``"float32"``, ``"int64"``,
    ``"bfloat16"``...), ``"string"`` for string tensors, and a description such as
    ``"seq(float32)"`` for non-tensor values.  ``shape`` has an ``int`` for each
    known axis, a ``str`` for a symbolic axis and ``None`` for an unknown one; it is
    empty for scalars and also when not even the rank is known.
    """

    name: str
    dtype: str
    shape: list[int | str | None]


@dataclass
class InspectReport:
    """Result of `inspect_model`.  See the module docstring for what is counted."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int  # version of the default ("" / ai.onnx) domain, 0 if not imported
    producer: str  # producer_name, followed by producer_version when set
    node_count: int  # all nodes, including those of subgraphs (= sum of op_histogram)
    # op type ("domain::op" outside the default domain) -> count, most frequent first
    op_histogram: dict[str, int]
    parameter_count: int  # elements in initializers and Constant nodes
    parameter_bytes: int  # storage size of those elements
    # total MACs of the main graph's Conv/ConvTranspose/Gemm/MatMul nodes whose
    # shapes are known; None when such nodes exist but none of them could be
    # computed (0 when the model has no such node at all)
    macs: int | None
    macs_by_op: dict[str, int] = field(default_factory=dict)  # op type -> MACs
    # names of MAC-counted nodes whose MACs could not be computed (missing or
    # symbolic dimensions); they are left out of ``macs``
    unknown_shape_nodes: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int | None:
        """Floating-point operations, counting one MAC as two operations."""
        return None if self.macs is None else 2 * self.macs

    def to_dict(self) -> dict:
        """Plain-python (JSON-serializable) view of the report, ``flops`` included."""
        data = asdict(self)
        data["flops"] = self.flops
        return data


# --------------------------------------------------------------------------- #
# Type / tensor helpers
# --------------------------------------------------------------------------- #


def _dtype_name(elem_type: int) -> str:
    """Numpy name for an ONNX element type (``TensorProto.FLOAT`` -> ``"float32"``)."""
    if elem_type == TensorProto.UNDEFINED:
        return "undefined"
    if elem_type == TensorProto.STRING:
        return "string"  # numpy would say "object", which reads badly
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # types numpy (or ml_dtypes) cannot represent
        try:
            return TensorProto.DataType.Name(elem_type).lower()
        except ValueError:
            return f"type{elem_type}"


def _shape_from_proto(shape: onnx.TensorShapeProto) -> list[int | str | None]:
    """Convert a TensorShapeProto into a list of int / str / None dims."""
    dims: list[int | str | None] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _describe_type(tp: onnx.TypeProto) -> tuple[str, list[int | str | None] | None]:
    """(dtype string, shape) of a value's type; shape is None when the rank is unknown."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        t = getattr(tp, kind)
        dtype = _dtype_name(t.elem_type)
        if kind == "sparse_tensor_type":
            dtype = f"sparse({dtype})"
        return dtype, _shape_from_proto(t.shape) if t.HasField("shape") else None
    if kind == "sequence_type":
        return f"seq({_describe_type(tp.sequence_type.elem_type)[0]})", None
    if kind == "optional_type":
        return f"optional({_describe_type(tp.optional_type.elem_type)[0]})", None
    if kind == "map_type":
        key = _dtype_name(tp.map_type.key_type)
        return f"map({key}, {_describe_type(tp.map_type.value_type)[0]})", None
    return "unknown", None


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    dtype, shape = _describe_type(vi.type)
    return TensorInfo(name=vi.name, dtype=dtype, shape=shape or [])


def _bytes_for(elem_type: int, numel: int) -> int:
    """Storage bytes of ``numel`` elements of a (non-string) ONNX element type."""
    bits = _SUB_BYTE_BITS.get(elem_type)
    if bits is not None:
        return (numel * bits + 7) // 8  # packed sub-byte types
    try:
        return numel * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 0  # unknown element type: size unknown, count it as nothing


def _tensor_size(t: TensorProto) -> tuple[int, int]:
    """(element count, byte size) of a TensorProto.

    Computed from dims and the element type, so tensors kept in external data
    files that were not loaded are measured correctly.
    """
    numel = math.prod(t.dims)
    if t.data_type == TensorProto.STRING:
        return numel, sum(len(s) for s in t.string_data)
    return numel, _bytes_for(t.data_type, numel)


def _sparse_tensor_size(st: onnx.SparseTensorProto) -> tuple[int, int]:
    """(dense element count, stored bytes = values + indices) of a sparse tensor."""
    numel = math.prod(st.dims)
    nbytes = _tensor_size(st.values)[1] + _tensor_size(st.indices)[1]
    return numel, nbytes


def _constant_size(node: NodeProto) -> tuple[int, int]:
    """(element count, byte size) of the value held by a Constant node."""
    for attr in node.attribute:
        if attr.name == "value":
            return _tensor_size(attr.t)
        if attr.name == "sparse_value":
            return _sparse_tensor_size(attr.sparse_tensor)
        if attr.name == "value_float":
            return 1, 4
        if attr.name == "value_int":
            return 1, 8
        if attr.name == "value_floats":
            return len(attr.floats), 4 * len(attr.floats)
        if attr.name == "value_ints":
            return len(attr.ints), 8 * len(attr.ints)
        if attr.name == "value_string":
            return 1, len(attr.s)
        if attr.name == "value_strings":
            return len(attr.strings), sum(len(s) for s in attr.strings)
    return 0, 0


def _constant_shape(node: NodeProto) -> list[int] | None:
    """Shape of a Constant node's output (None if it cannot be read off the node)."""
    for attr in node.attribute:
        if attr.name == "value":
            return list(attr.t.dims)
        if attr.name == "sparse_value":
            return list(attr.sparse_tensor.dims)
        if attr.name in ("value_float", "value_int", "value_string"):
            return []
        if attr.name in ("value_floats", "value_ints", "value_strings"):
            return [len(attr.floats) or len(attr.ints) or len(attr.strings)]
    return None


# --------------------------------------------------------------------------- #
# Graph walking
# --------------------------------------------------------------------------- #


def _subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    """Graphs held in a node's attributes (If branches, Loop/Scan bodies...)."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """The graph itself followed by all of its nested subgraphs, depth first."""
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_graphs(sub)


def _op_key(node: NodeProto) -> str:
    """Histogram key: the op type, prefixed by its domain outside standard ONNX."""
    if node.domain in _DEFAULT_DOMAINS:
        return node.op_type
    return f"{node.domain}::{node.op_type}"


def _node_label(node: NodeProto, index: int) -> str:
    """A name to report a node by; unnamed nodes get ``"<OpType #index>"``."""
    return node.name or f"<{node.op_type} #{index}>"


def _sorted_by_count(counts: dict[str, int]) -> dict[str, int]:
    """Order a histogram by count (descending), then by key for stable output."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- #
# MAC computation
# --------------------------------------------------------------------------- #

def _ints(dims: Iterable[int | str | None] | None) -> list[int] | None:
    """``dims`` as a list of ints, or None if any dim (or the rank) is not known."""
    if dims is None:
        return None
    dims = list(dims)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return dims  # type: ignore[return-value]


def _attr_int(node: NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _input_shape(shapes: dict, node: NodeProto, index: int):
    """Shape of the node's ``index``-th input (None if absent or unknown)."""
    if index >= len(node.input) or not node.input[index]:
        return None
    return shapes.get(node.input[index])


def _output_shape(shapes: dict, node: NodeProto, index: int = 0):
    if index >= len(node.output) or not node.output[index]:
        return None
    return shapes.get(node.output[index])


def _conv_macs(shapes: dict, node: NodeProto, x_idx: int, w_idx: int) -> int | None:
    """Conv: N * C_out * prod(out_spatial) * (C_in / group) * prod(kernel).

    The weight is [C_out, C_in/group, k1, k2, ...]; N and the output spatial size
    come from the output Y = [N, C_out, o1, o2, ...] (falling back to X for N).
    """
    w = _ints(_input_shape(shapes, node, w_idx))
    y = _ints(_output_shape(shapes, node))
    if w is None or y is None or len(w) < 2 or len(y) != len(w):
        return None
    c_out, c_in_per_group, kernel = w[0], w[1], w[2:]
    return y[0] * c_out * math.prod(y[2:]) * c_in_per_group * math.prod(kernel)


def _conv_transpose_macs(shapes: dict, node: NodeProto) -> int | None:
    """ConvTranspose: N * C_in * prod(in_spatial) * (C_out / group) * prod(kernel).

    Every input pixel is scattered through a (C_out/group) x kernel window; the
    weight is [C_in, C_out/group, k1, k2, ...] and X = [N, C_in, i1, i2, ...].
    """
    x = _ints(_input_shape(shapes, node, 0))
    w = _ints(_input_shape(shapes, node, 1))
    if x is None or w is None or len(w) < 2 or len(x) != len(w):
        return None
    n, c_in, in_spatial = x[0], x[1], x[2:]
    c_out_per_group, kernel = w[1], w[2:]
    return n * c_in * math.prod(in_spatial) * c_out_per_group * math.prod(kernel)


def _gemm_macs(shapes: dict, node: NodeProto) -> int | None:
    """Gemm: Y[M, N] = op(A)[M, K] @ op(B)[K, N] (+ C) costs M * N * K."""
    a = _ints(_input_shape(shapes, node, 0))
    b = _ints(_input_shape(shapes, node, 1))
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    m, k = (a[1], a[0]) if _attr_int(node, "transA", 0) else (a[0], a[1])
    n = b[0] if _attr_int(node, "transB", 0) else b[1]
    return m * n * k


def _broadcast_dim(a: int | str | None, b: int | str | None) -> int | str | None:
    """Numpy broadcasting of one axis; a non-int result means "not known"."""
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int):
        return a  # b is a (or an unknown that must equal a for the op to be valid)
    if isinstance(b, int):
        return b
    return a if a == b else None


def _matmul_macs(shapes: dict, node: NodeProto, a_idx: int, b_idx: int) -> int | None:
    """MatMul with numpy semantics: prod(batch) * M * N * K.

    A 1-D A of shape [K] acts as [1, K]; a 1-D B of shape [K] acts as [K, 1].
    Batch dims of both operands broadcast against each other.
    """
    a = _input_shape(shapes, node, a_idx)
    b = _input_shape(shapes, node, b_idx)
    if a is None or b is None or len(a) == 0 or len(b) == 0:
        return None
    m = a[-2] if len(a) >= 2 else 1
    k = a[-1]
    n = b[-1] if len(b) >= 2 else 1
    a_batch, b_batch = list(a[:-2]), list(b[:-2])
    # right-align the batch dims, padding the shorter one with 1s
    rank = max(len(a_batch), len(b_batch))
    a_batch = [1] * (rank - len(a_batch)) + a_batch
    b_batch = [1] * (rank - len(b_batch)) + b_batch
    batch = _ints(_broadcast_dim(x, y) for x, y in zip(a_batch, b_batch))
    if batch is None:
        # the output shape may be better known (e.g. symbolic input, resolved output)
        # (Y = batch + [M] unless A is 1-D + [N] unless B is 1-D)
        y = _output_shape(shapes, node)
        trailing = (len(a) >= 2) + (len(b) >= 2)
        if y is not None and len(y) == rank + trailing:
            batch = _ints(y[:rank])
    mkn = _ints([m, k, n])
    if batch is None or mkn is None:
        return None
    return math.prod(batch) * mkn[0] * mkn[1] * mkn[2]


# op type -> function computing the MACs of one node from the shape table
_MAC_FUNCS = {
    "Conv": lambda s, n: _conv_macs(s, n, 0, 1),
    "ConvInteger": lambda s, n: _conv_macs(s, n, 0, 1),
    "QLinearConv": lambda s, n: _conv_macs(s, n, 0, 3),
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": lambda s, n: _matmul_macs(s, n, 0, 1),
    "MatMulInteger": lambda s, n: _matmul_macs(s, n, 0, 1),
    "QLinearMatMul": lambda s, n: _matmul_macs(s, n, 0, 3),
}


def _shape_table(graph: GraphProto) -> dict[str, list[int | str | None] | None]:
    """Map every tensor name of ``graph`` whose type is recorded to its shape."""
    shapes: dict[str, list[int | str | None] | None] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        shapes[vi.name] = _describe_type(vi.type)[1]
    # initializers and Constant outputs have exactly known shapes
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    for sparse in graph.sparse_initializer:
        shapes[sparse.values.name] = list(sparse.dims)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
            const_shape = _constant_shape(node)
            if const_shape is not None:
                shapes[node.output[0]] = const_shape
    return shapes


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def _graph_value_infos(graph: GraphProto) -> Iterator[onnx.ValueInfoProto]:
    yield from graph.input
    yield from graph.value_info
    yield from graph.output


def _dim_params(graph: GraphProto) -> set[str]:
    """All symbolic dim names used in the value infos of ``graph``."""
    names = set()
    for vi in _graph_value_infos(graph):
        if vi.type.HasField("tensor_type"):
            names.update(d.dim_param for d in vi.type.tensor_type.shape.dim if d.dim_param)
    return names


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy of ``model`` (the model itself if inference fails).

    Shape inference names the dims it cannot determine ``unk__0``, ``unk__1``...;
    those are turned back into unknown dims so they are reported as None rather
    than as symbols the model author never wrote.
    """
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # e.g. >2 GiB protos, malformed or unsupported graphs
        return model
    original = _dim_params(model.graph)
    for vi in _graph_value_infos(inferred.graph):
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param.startswith("unk__") and d.dim_param not in original:
                d.ClearField("dim_param")
    return inferred


def inspect_model(model: onnx.ModelProto) -> InspectReport:
    """Statically summarise ``model``: I/O, opset, ops, parameters and MACs.

    The input model is not modified.  MACs are counted for the main graph only;
    subgraph nodes (If/Loop/Scan bodies) are counted in the op histogram,
    ``node_count`` and the parameter totals but not in ``macs``.
    """
    inferred = _infer(model)
    graph = inferred.graph

    # -- I/O: old-style models list initializers among the inputs; skip those
    init_names = {t.name for t in graph.initializer}
    init_names.update(t.values.name for t in graph.sparse_initializer)
    inputs = [_tensor_info(vi) for vi in graph.input if vi.name not in init_names]
    outputs = [_tensor_info(vi) for vi in graph.output]

    opset = next(
        (op.version for op in inferred.opset_import if op.domain in _DEFAULT_DOMAINS), 0
    )
    producer = " ".join(p for p in (inferred.producer_name, inferred.producer_version) if p)

    # -- Histogram and parameters, over the main graph and every subgraph
    histogram: Counter[str] = Counter()
    param_count = param_bytes = 0
    for g in _all_graphs(graph):
        for node in g.node:
            histogram[_op_key(node)] += 1
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                numel, nbytes = _constant_size(node)
                param_count += numel
                param_bytes += nbytes
        for init in g.initializer:
            numel, nbytes = _tensor_size(init)
            param_count += numel
            param_bytes += nbytes
        for sparse in g.sparse_initializer:
            numel, nbytes = _sparse_tensor_size(sparse)
            param_count += numel
            param_bytes += nbytes

    # -- MACs, main graph only
    shapes = _shape_table(graph)
    macs_by_op: Counter[str] = Counter()
    unknown: list[str] = []
    n_mac_nodes = 0
    for index, node in enumerate(graph.node):
        func = _MAC_FUNCS.get(node.op_type) if node.domain in _DEFAULT_DOMAINS else None
        if func is None:
            continue
        n_mac_nodes += 1
        node_macs = func(shapes, node)
        if node_macs is None:
            unknown.append(_node_label(node, index))
        else:
            macs_by_op[node.op_type] += node_macs

    if n_mac_nodes == 0:
        macs: int | None = 0  # nothing to count: the model has no MAC-heavy op
    elif len(unknown) == n_mac_nodes:
        macs = None  # there are such ops but none of their shapes are known
    else:
        macs = sum(macs_by_op.values())

    return InspectReport(
        inputs=inputs,
        outputs=outputs,
        opset=int(opset),
        producer=producer,
        node_count=sum(histogram.values()),
        op_histogram=_sorted_by_count(dict(histogram)),
        parameter_count=param_count,
        parameter_bytes=param_bytes,
        macs=macs,
        macs_by_op=_sorted_by_count(dict(macs_by_op)),
        unknown_shape_nodes=unknown,
    )


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #


def _format_shape(shape: list[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _format_macs(macs: int | None) -> str:
    """MACs in G when at least 1e9, else in M."""
    if macs is None:
        return "unknown"
    if macs >= 1_000_000_000:
        return f"{macs / 1e9:.3f} G"
    return f"{macs / 1e6:.3f} M"


def _format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def render(report: InspectReport, console=None) -> None:
    """Print ``report`` as rich tables: I/O, summary, MACs by op and op histogram.

    ``console`` is a ``rich.console.Console``; a new one on stdout is used if None.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    # Model-provided strings go through Text so "[...]" is never read as markup.

    io_table = Table(title="Inputs / outputs")
    io_table.add_column("kind")
    io_table.add_column("name")
    io_table.add_column("dtype")
    io_table.add_column("shape")
    for kind, infos in (("input", report.inputs), ("output", report.outputs)):
        for info in infos:
            io_table.add_row(
                kind, Text(info.name), Text(info.dtype), Text(_format_shape(info.shape))
            )
    console.print(io_table)

    summary = Table(title="Summary", show_header=False)
    summary.add_column("field")
    summary.add_column("value", justify="right")
    summary.add_row("producer", Text(report.producer or "-"))
    summary.add_row("opset", str(report.opset))
    summary.add_row("nodes", str(report.node_count))
    summary.add_row(
        "parameters",
        f"{report.parameter_count / 1e6:.3f} M ({report.parameter_count:,})",
    )
    summary.add_row("parameter size", _format_bytes(report.parameter_bytes))
    summary.add_row("MACs", _format_macs(report.macs))
    summary.add_row("FLOPs", _format_macs(report.flops))
    if report.unknown_shape_nodes:
        summary.add_row(
            "MACs unknown for", Text(", ".join(report.unknown_shape_nodes))
        )
    console.print(summary)

    if report.macs_by_op:
        total = sum(report.macs_by_op.values()) or 1
        macs_table = Table(title="MACs by op")
        macs_table.add_column("op")
        macs_table.add_column("MACs", justify="right")
        macs_table.add_column("%", justify="right")
        for op, value in report.macs_by_op.items():
            macs_table.add_row(op, _format_macs(value), f"{100 * value / total:.1f}")
        console.print(macs_table)

    hist = Table(title="Op histogram")
    hist.add_column("op")
    hist.add_column("count", justify="right")
    hist.add_column("%", justify="right")
    total_nodes = report.node_count or 1
    for op, count in report.op_histogram.items():
        hist.add_row(Text(op), str(count), f"{100 * count / total_nodes:.1f}")
    console.print(hist)
