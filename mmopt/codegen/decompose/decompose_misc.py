"""decompose_misc: small operators with a direct expression in operators TVM converts well.

* ``Squeeze``/``Unsqueeze`` with constant axes on a static shape -> ``Reshape`` to the result shape
  (always: TVM's converters mishandle negative axes, up to an allocation failure at build time);
  on an unknown shape, 0-d axes become 1-D (TVM's converters iterate over them).
* ``LpNormalization(x, axis, p)`` -> ``x / ReduceLp(x, axis, keepdims=1)`` (``p`` 1 or 2).
* ``CumProd(x, axis)`` -> a log-step (Hillis-Steele) scan: ``y = x``; for ``s = 1, 2, 4, ...``:
  ``y = y · shift(y, s)`` where ``shift`` moves ``s`` places along the axis and fills with 1.
  ``exclusive`` shifts the input by one first; ``reverse`` runs on the flipped axis. Exact for
  integers; floating-point products are associated differently than a sequential loop.
* ``ReverseSequence(x, lens)`` -> ``GatherElements`` with index ``lens[b]-1-t`` where ``t < lens[b]``
  and ``t`` elsewhere (computed with graph ops, so ``lens`` may be a runtime input).
* ``Pow`` whose operands have different types, or an integer base (TVM's power is float-only) ->
  computed in float64 and cast to the base's type (ONNX: the result has the base's type).
* ``Col2Im(cols, image_shape, block_shape)`` -> a grouped ``ConvTranspose`` with one-hot weights:
  column ``c·K + k`` (``k`` the kernel offset) is scattered to offset ``k`` of channel ``c``, which
  is exactly what a stride-``strides``, dilation-``dilations`` transposed convolution with weight
  ``W[c·K + k, 0, ...] = onehot(k)`` and ``group = C`` computes (overlaps summed).
* ``OneHot`` whose ``values`` are not constant -> ``OneHot(indices, depth, [0, 1])`` mapped to
  ``off + hot · (on - off)``.
* ``ReduceMax``/``ReduceMin`` over bool -> on uint8 between casts (TVM reduces numbers only).
* ``ConvTranspose`` with ``output_shape`` -> the pads (or output padding) it implies.
* ``TensorScatter`` (KV-cache write) -> ``ScatterElements`` at ``write_indices[b] + s``
  (mod the cache length for ``circular``).
* ``Compress`` with a constant condition -> ``Gather`` of the selected indices.
* ``MaxPool`` with a used ``Indices`` output -> the values plus, per output, the first window tap
  equal to the maximum.
* ``Det`` of up to 5x5 matrices -> the Leibniz formula (signed sum of permutation products).
* ai.onnx.ml ``Binarizer(x, threshold)`` -> ``Where(x > threshold, 1, 0)``;
  ``ArrayFeatureExtractor(x, idx)`` -> ``Gather(x, idx, axis=-1)``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from mmopt.extend.rules import (
    op as _op,
    Context,
    Decomposition,
    attr,
    const,
    constant,
    dtype_of,
    ints,
    present,
    reduce,
    static_shape,
)


class SqueezeToReshape(Decomposition):
    name = "squeeze_to_reshape"
    op_types = ("Squeeze", "Unsqueeze")
    always = True

    def wanted(self, node: ir.Node, ctx: Context) -> bool:
        if self._axes(node) is None:
            return False
        return static_shape(node.inputs[0]) is not None or self._scalar_axes(node)

    @staticmethod
    def _scalar_axes(node: ir.Node) -> bool:
        """Axes given as a 0-d tensor (TVM's converters need 1-D)."""
        return len(node.inputs) > 1 and node.inputs[1] is not None and const(node.inputs[1]).ndim == 0

    @staticmethod
    def _axes(node: ir.Node):
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            axes = const(node.inputs[1])
            return None if axes is None else [int(a) for a in axes.reshape(-1)]
        axes = attr(node, "axes", None)
        if axes is None and node.op_type == "Squeeze":
            return []
        return None if axes is None else list(axes)

    def rewrite(self, node, tape, ctx):
        axes = self._axes(node)
        if static_shape(node.inputs[0]) is None:  # unknown shape: only make the axes 1-D
            return [tape.op(node.op_type, [node.inputs[0], ints(tape, axes)])]
        shape = list(static_shape(node.inputs[0]))
        if node.op_type == "Squeeze":
            rank = len(shape)
            drop = {a % rank for a in axes} if axes else {i for i, d in enumerate(shape) if d == 1}
            out = [d for i, d in enumerate(shape) if i not in drop]
        else:
            rank = len(shape) + len(axes)
            add = sorted(a % rank for a in axes)
            out, it = [], iter(shape)
            for i in range(rank):
                out.append(1 if i in add else next(it))
        return [_op(tape, "Reshape", node.inputs[0], ints(tape, out))]


class DecomposeLpNormalization(Decomposition):
    name = "decompose_lp_normalization"
    op_types = ("LpNormalization",)

    def check(self, node, ctx):
        return None if attr(node, "p", 2) in (1, 2) else "only p = 1 and p = 2 exist"

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        axis = attr(node, "axis", -1)
        op_type = "ReduceL1" if attr(node, "p", 2) == 1 else "ReduceL2"
        norm = reduce(tape, op_type, x, [axis], ctx.opset, keepdims=1)
        # an all-zero slice normalizes to 0 (as onnxruntime computes it), not 0/0
        zero = constant(tape, np.zeros((), dtype=dtype_of(x).numpy()))
        return [_op(tape, "Where", _op(tape, "Equal", norm, zero), zero, _op(tape, "Div", x, norm))]


def _reverse_axis(tape, x, axis: int, length: int):
    return _op(tape, "Gather", x, ints(tape, list(range(length - 1, -1, -1))), axis=axis)


class DecomposeCumProd(Decomposition):
    name = "decompose_cumprod"
    op_types = ("CumProd",)

    def check(self, node, ctx):
        if static_shape(node.inputs[0]) is None:
            return "the input shape is not static"
        if const(node.inputs[1]) is None:
            return "the axis is not a constant"
        return None

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        shape = list(static_shape(x))
        axis = int(const(node.inputs[1]).reshape(-1)[0]) % len(shape)
        length = shape[axis]
        np_dtype = dtype_of(x).numpy()
        reverse, exclusive = attr(node, "reverse", 0), attr(node, "exclusive", 0)

        def shift(y, s):
            """``y`` moved ``s`` places forward along ``axis``, the first ``s`` filled with 1."""
            ones_shape = list(shape)
            ones_shape[axis] = s
            ones = constant(tape, np.ones(ones_shape, dtype=np_dtype))
            head = _op(tape, "Slice", y, ints(tape, [0]), ints(tape, [length - s]), ints(tape, [axis]))
            return _op(tape, "Concat", ones, head, axis=axis)

        y = _reverse_axis(tape, x, axis, length) if reverse else x
        if exclusive:
            y = shift(y, 1) if length > 1 else constant(tape, np.ones(shape, dtype=np_dtype))
        for step in range(int(math.ceil(math.log2(length))) if length > 1 else 0):
            s = 1 << step
            y = _op(tape, "Mul", y, shift(y, s))
        if reverse:
            y = _reverse_axis(tape, y, axis, length)
        return [y]


class DecomposeReverseSequence(Decomposition):
    name = "decompose_reverse_sequence"
    op_types = ("ReverseSequence",)

    def check(self, node, ctx):
        shape = static_shape(node.inputs[0])
        return None if shape is not None and len(shape) >= 2 else "the input shape is not static"

    def rewrite(self, node, tape, ctx):
        x, lens = node.inputs[0], node.inputs[1]
        shape = list(static_shape(x))
        time_axis = attr(node, "time_axis", 0)  # batch_axis is the other of the first two
        steps = shape[time_axis]
        # t and len broadcast to [T, B] (time-major) or [B, T]
        t_shape = [1, 1]
        t_shape[time_axis] = steps
        t = constant(tape, np.arange(steps, dtype=np.int64).reshape(t_shape))
        lens64 = _op(tape, "Unsqueeze", _op(tape, "Cast", lens, to=ir.DataType.INT64),
                     ints(tape, [time_axis]))
        valid = _op(tape, "Less", t, lens64)
        flipped = _op(tape, "Sub", _op(tape, "Sub", lens64, ints(tape, 1)), t)
        plain = _op(tape, "Expand", t, ints(tape, [shape[0], shape[1]]))
        index = _op(tape, "Where", valid, flipped, plain)
        if len(shape) > 2:
            index = _op(tape, "Reshape", index, ints(tape, shape[:2] + [1] * (len(shape) - 2)))
            index = _op(tape, "Expand", index, ints(tape, shape))
        return [_op(tape, "GatherElements", x, index, axis=time_axis)]


class DecomposeMixedPow(Decomposition):
    name = "decompose_mixed_pow"
    op_types = ("Pow",)
    always = True

    _FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}

    def wanted(self, node, ctx):
        base, exponent = dtype_of(node.inputs[0]), dtype_of(node.inputs[1])
        if base is None or exponent is None:
            return False
        return base != exponent or base not in self._FLOATS

    def rewrite(self, node, tape, ctx):
        base, exponent = node.inputs
        f64 = ir.DataType.DOUBLE
        result = _op(tape, "Pow", _op(tape, "Cast", base, to=f64), _op(tape, "Cast", exponent, to=f64))
        return [_op(tape, "Cast", result, to=dtype_of(base))]


class DecomposeCol2Im(Decomposition):
    name = "decompose_col2im"
    op_types = ("Col2Im",)

    def check(self, node, ctx):
        if static_shape(node.inputs[0]) is None:
            return "the input shape is not static"
        if const(node.inputs[1]) is None or const(node.inputs[2]) is None:
            return "image_shape and block_shape must be constants"
        return None

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        n, ck, _ = static_shape(x)
        image = [int(v) for v in const(node.inputs[1]).reshape(-1)]
        block = [int(v) for v in const(node.inputs[2]).reshape(-1)]
        dims = len(image)
        dilations = list(attr(node, "dilations", None) or [1] * dims)
        pads = list(attr(node, "pads", None) or [0] * (2 * dims))
        strides = list(attr(node, "strides", None) or [1] * dims)
        k = int(np.prod(block))
        channels = ck // k
        # blocks along each spatial dim of the (padded) image
        counts = [(image[i] + pads[i] + pads[i + dims] - dilations[i] * (block[i] - 1) - 1)
                  // strides[i] + 1 for i in range(dims)]
        cols = _op(tape, "Reshape", x, ints(tape, [n, ck, *counts]))
        weight = np.zeros((ck, 1, *block), dtype=dtype_of(x).numpy())
        for c in range(channels):
            for offset, position in enumerate(np.ndindex(*block)):
                weight[c * k + offset, 0, *position] = 1
        # the transposed conv gives (count-1)·stride + dilation·(block-1) + 1 - pads; output_padding
        # covers the rows past the last block that no block reaches (they stay 0)
        natural = [(counts[i] - 1) * strides[i] + dilations[i] * (block[i] - 1) + 1
                   - pads[i] - pads[i + dims] for i in range(dims)]
        y = _op(tape, "ConvTranspose", cols, constant(tape, weight), group=channels,
                strides=strides, dilations=dilations, pads=pads,
                output_padding=[image[i] - natural[i] for i in range(dims)])
        return [y]


_INTEGERS = {ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64,
             ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.UINT64}


class NormalizeOneHot(Decomposition):
    """OneHot with runtime ``values``, a floating-point ``depth`` or indices, or a negative axis
    (TVM needs constant values, integer depth and indices, and an axis >= 0)."""

    name = "normalize_onehot"
    op_types = ("OneHot",)
    always = True

    def wanted(self, node, ctx):
        non_integer = [t is not None and t not in _INTEGERS
                       for t in (dtype_of(node.inputs[0]), dtype_of(node.inputs[1]))]
        negative_axis = attr(node, "axis", -1) < 0 and static_shape(node.inputs[0]) is not None
        return const(node.inputs[2]) is None or any(non_integer) or negative_axis

    def rewrite(self, node, tape, ctx):
        indices, depth, values = node.inputs
        rank = len(static_shape(indices)) if static_shape(indices) is not None else None
        # ONNX: non-integer indices and depth are cast to int64
        if dtype_of(indices) not in _INTEGERS:
            indices = _op(tape, "Cast", indices, to=ir.DataType.INT64)
        if dtype_of(depth) not in _INTEGERS:
            depth = _op(tape, "Cast", depth, to=ir.DataType.INT64)
        axis = attr(node, "axis", -1)
        if axis < 0 and rank is not None:  # TVM's one_hot takes axis >= 0 only
            axis += rank + 1
        if const(values) is not None:
            return [_op(tape, "OneHot", indices, depth, values, axis=axis)]
        dtype = dtype_of(values)
        unit = constant(tape, np.array([0, 1], dtype=dtype.numpy()))
        hot = _op(tape, "OneHot", indices, depth, unit, axis=axis)
        off = _op(tape, "Gather", values, ints(tape, 0), axis=0)
        on = _op(tape, "Gather", values, ints(tape, 1), axis=0)
        return [_op(tape, "Add", off, _op(tape, "Mul", hot, _op(tape, "Sub", on, off)))]


class DecomposeBinarizer(Decomposition):
    name = "decompose_binarizer"
    op_types = ("Binarizer",)
    domain = "ai.onnx.ml"

    def check(self, node, ctx):
        return None if dtype_of(node.inputs[0]) is not None else "the input type is unknown"

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        np_dtype = dtype_of(x).numpy()
        threshold = constant(tape, np.asarray(attr(node, "threshold", 0.0), dtype=np_dtype))
        return [_op(tape, "Where", _op(tape, "Greater", x, threshold),
                    constant(tape, np.asarray(1, dtype=np_dtype)),
                    constant(tape, np.asarray(0, dtype=np_dtype)))]


class DecomposeArrayFeatureExtractor(Decomposition):
    name = "decompose_array_feature_extractor"
    op_types = ("ArrayFeatureExtractor",)
    domain = "ai.onnx.ml"

    def check(self, node, ctx):
        shape = static_shape(node.inputs[0])
        return None if shape is not None and len(shape) >= 2 else "needs a static input of rank >= 2"

    def rewrite(self, node, tape, ctx):
        x, index = node.inputs
        flat = _op(tape, "Reshape", index, ints(tape, [-1]))
        return [_op(tape, "Gather", x, flat, axis=-1)]


class ReduceBoolAsInteger(Decomposition):
    """ReduceMax/ReduceMin over bool (any/all) computed on uint8 (TVM has no bool reduction)."""

    name = "reduce_bool_as_integer"
    op_types = ("ReduceMax", "ReduceMin")
    always = True

    def wanted(self, node, ctx):
        return dtype_of(node.inputs[0]) == ir.DataType.BOOL

    def rewrite(self, node, tape, ctx):
        as_int = _op(tape, "Cast", node.inputs[0], to=ir.DataType.UINT8)
        reduced = tape.op(node.op_type, [as_int, *node.inputs[1:]])
        for a in node.attributes.values():
            reduced.producer().attributes[a.name] = a
        return [_op(tape, "Cast", reduced, to=ir.DataType.BOOL)]


class ConvTransposeOutputShape(Decomposition):
    """ConvTranspose with ``output_shape``: the pads (or output padding) it implies, which TVM's
    converter ignores. ONNX: ``total = stride·(in−1) + output_padding + (k−1)·dilation + 1 − out``,
    split between begin and end (the odd one goes to the begin for ``SAME_UPPER``, else to the
    end); a negative total (a larger output) becomes output padding."""

    name = "convtranspose_output_shape"
    op_types = ("ConvTranspose",)
    always = True

    def wanted(self, node, ctx):
        return "output_shape" in node.attributes

    def check(self, node, ctx):
        if static_shape(node.inputs[0]) is None or static_shape(node.inputs[1]) is None:
            return "the input or weight shape is not static"
        return None

    def rewrite(self, node, tape, ctx):
        x_shape, w_shape = static_shape(node.inputs[0]), static_shape(node.inputs[1])
        dims = len(x_shape) - 2
        out_shape = list(attr(node, "output_shape"))[-dims:]
        strides = list(attr(node, "strides", None) or [1] * dims)
        dilations = list(attr(node, "dilations", None) or [1] * dims)
        kernel = list(attr(node, "kernel_shape", None) or w_shape[2:])
        extra = list(attr(node, "output_padding", None) or [0] * dims)
        upper = attr(node, "auto_pad", "NOTSET") == "SAME_UPPER"
        pads, output_padding = [0] * (2 * dims), list(extra)
        for i in range(dims):
            total = (strides[i] * (x_shape[i + 2] - 1) + extra[i] + (kernel[i] - 1) * dilations[i]
                     + 1 - out_shape[i])
            if total >= 0:
                small, large = total // 2, total - total // 2
                pads[i], pads[i + dims] = (large, small) if upper else (small, large)
            else:
                output_padding[i] += -total
        attributes = {k: a.value for k, a in node.attributes.items()
                      if k not in ("output_shape", "pads", "auto_pad", "output_padding")}
        return [tape.op("ConvTranspose", list(node.inputs),
                        {**attributes, "pads": pads, "output_padding": output_padding})]


class DecomposeTensorScatter(Decomposition):
    """TensorScatter (a KV-cache write) -> ScatterElements with the cache index of every update
    element: ``write_indices[b] + s`` along ``axis`` (mod the cache length when circular)."""

    name = "decompose_tensor_scatter"
    op_types = ("TensorScatter",)

    def check(self, node, ctx):
        if static_shape(node.inputs[0]) is None or static_shape(node.inputs[1]) is None:
            return "the cache and update shapes are not static"
        return None

    def rewrite(self, node, tape, ctx):
        past, update = node.inputs[0], node.inputs[1]
        write = present(node, 2)
        cache_shape, update_shape = static_shape(past), static_shape(update)
        rank = len(cache_shape)
        axis = attr(node, "axis", -2) % rank
        steps = [1] * rank
        steps[axis] = update_shape[axis]
        index = constant(tape, np.arange(update_shape[axis], dtype=np.int64).reshape(steps))
        if write is not None:
            offsets = _op(tape, "Reshape", _op(tape, "Cast", write, to=ir.DataType.INT64),
                          ints(tape, [-1] + [1] * (rank - 1)))
            index = _op(tape, "Add", index, offsets)
        if attr(node, "mode", "linear") == "circular":
            index = _op(tape, "Mod", index, ints(tape, cache_shape[axis]))
        index = _op(tape, "Expand", index, ints(tape, update_shape))
        return [_op(tape, "ScatterElements", past, index, update, axis=axis)]


class DecomposeDet(Decomposition):
    """Det of ``[..., M, M]`` (M <= :attr:`MAX_SIZE`) by the Leibniz formula: the signed sum over the
    M! permutations ``p`` of ``prod_i x[i, p(i)]``, as one Gather, a product and a sum."""

    name = "decompose_det"
    op_types = ("Det",)
    MAX_SIZE = 5

    def check(self, node, ctx):
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) < 2:
            return "the input shape is not static"
        if shape[-1] > self.MAX_SIZE:
            return f"{shape[-1]}x{shape[-1]} matrices; decomposed up to {self.MAX_SIZE}x{self.MAX_SIZE}"
        return None

    def rewrite(self, node, tape, ctx):
        import itertools

        x = node.inputs[0]
        shape = list(static_shape(x))
        m = shape[-1]
        perms = list(itertools.permutations(range(m)))
        index = np.array([[i * m + p[i] for i in range(m)] for p in perms], dtype=np.int64)
        signs = np.array([(-1) ** sum(p[i] > p[j] for i in range(m) for j in range(i + 1, m))
                          for p in perms], dtype=dtype_of(x).numpy())
        flat = _op(tape, "Reshape", x, ints(tape, shape[:-2] + [m * m]))
        terms = _op(tape, "Gather", flat, constant(tape, index), axis=len(shape) - 2)  # [..., P, M]
        products = reduce(tape, "ReduceProd", terms, [-1], ctx.opset, keepdims=0)
        signed = _op(tape, "Mul", products, constant(tape, signs))
        return [reduce(tape, "ReduceSum", signed, [-1], ctx.opset, keepdims=0)]


class MaxPoolIndices(Decomposition):
    """MaxPool whose ``Indices`` output is used (TVM's converter returns the values only): the
    values stay a MaxPool; the indices pick, over the window's taps in scan order, the first tap
    that equals the maximum. Indices count over the whole input ``[N, C, H, W]`` in row-major order
    (``storage_order=1``: column-major within each ``H x W`` plane)."""

    name = "maxpool_indices"
    op_types = ("MaxPool",)
    always = True

    def wanted(self, node, ctx):
        return len(node.outputs) > 1 and node.outputs[1] is not None and (
            node.outputs[1].uses() or node.outputs[1].is_graph_output())

    def check(self, node, ctx):
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) != 4:
            return "only 2-D max pooling with a static input shape gives indices"
        if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID") or attr(node, "ceil_mode", 0):
            return "auto_pad and ceil_mode are not supported with indices"
        return None

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        n, c, h, w = static_shape(x)
        kh, kw = attr(node, "kernel_shape")
        sh, sw = attr(node, "strides", None) or [1, 1]
        dh, dw = attr(node, "dilations", None) or [1, 1]
        pt, pl, pb, pr = attr(node, "pads", None) or [0, 0, 0, 0]
        oh = (h + pt + pb - ((kh - 1) * dh + 1)) // sh + 1
        ow = (w + pl + pr - ((kw - 1) * dw + 1)) // sw + 1
        np_dtype = dtype_of(x).numpy()
        pooled = tape.op("MaxPool", [x], {k: a.value for k, a in node.attributes.items()
                                          if k != "storage_order"})
        column_major = attr(node, "storage_order", 0)
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        plane = rows * w + cols if not column_major else cols * h + rows
        index_map = (np.arange(n * c).reshape(n, c, 1, 1) * (h * w) + plane).astype(np.int64)
        lowest = np.finfo(np_dtype).min if np_dtype.kind == "f" else np.iinfo(np_dtype).min
        padded = _op(tape, "Pad", x, ints(tape, [0, 0, pt, pl, 0, 0, pb, pr]),
                     constant(tape, np.asarray(lowest, np_dtype)))
        index_padded = np.pad(index_map, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-1)
        result = None
        for i in reversed(range(kh)):  # the first tap in scan order that is the max wins
            for j in reversed(range(kw)):
                top, left = i * dh, j * dw
                window = _op(tape, "Slice", padded, ints(tape, [top, left]),
                             ints(tape, [top + (oh - 1) * sh + 1, left + (ow - 1) * sw + 1]),
                             ints(tape, [2, 3]), ints(tape, [sh, sw]))
                candidates = constant(tape, index_padded[:, :, top:top + (oh - 1) * sh + 1:sh,
                                                         left:left + (ow - 1) * sw + 1:sw])
                hit = _op(tape, "Equal", window, pooled)
                result = candidates if result is None else _op(tape, "Where", hit, candidates, result)
        return [pooled, result]


class CompressToGather(Decomposition):
    """Compress with a constant condition -> Gather of the selected indices (the output length is
    then static; TVM's converter always goes through a data-dependent NonZero)."""

    name = "compress_to_gather"
    op_types = ("Compress",)
    always = True

    def wanted(self, node, ctx):
        return const(node.inputs[1]) is not None

    def check(self, node, ctx):
        axis = attr(node, "axis", None)
        shape = static_shape(node.inputs[0])
        if axis is not None and shape is None:
            return "the input shape is not static"
        return None

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        condition = const(node.inputs[1]).reshape(-1).astype(bool)
        axis = attr(node, "axis", None)
        if axis is None:
            x, axis = _op(tape, "Reshape", x, ints(tape, [-1])), 0
        else:
            length = static_shape(node.inputs[0])[axis]
            condition = condition[:length]
        return [_op(tape, "Gather", x, ints(tape, np.flatnonzero(condition)), axis=axis)]


RULES = (
    SqueezeToReshape(),
    CompressToGather(),
    MaxPoolIndices(),
    DecomposeTensorScatter(),
    DecomposeDet(),
    ReduceBoolAsInteger(),
    ConvTransposeOutputShape(),
    DecomposeLpNormalization(),
    DecomposeCumProd(),
    DecomposeReverseSequence(),
    DecomposeMixedPow(),
    DecomposeCol2Im(),
    NormalizeOneHot(),
    DecomposeBinarizer(),
    DecomposeArrayFeatureExtractor(),
)
