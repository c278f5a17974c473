"""decompose_integer_ops: ConvInteger, QLinearConv and QLinearMatMul as exact integer arithmetic.

* ``ConvInteger(x, w, x_zp, w_zp)`` = ``Conv(int32(x) − x_zp, int32(w) − w_zp)`` with an int32
  accumulator. Subtracting the zero point before the convolution's zero padding is the same as
  padding ``x`` with ``x_zp``, as the operator defines. ``w_zp`` may be per output channel
  (``[M]``, broadcast as ``[M, 1, ...]``).
* ``QLinearConv`` = the same int32 accumulator, ``+ bias`` (int32), then requantized:
  ``y = saturate(round(acc · (x_scale · w_scale / y_scale)) + y_zp)``, with the multiplier computed
  in float32 in that order and rounding half to even (``Round``), as onnxruntime does (per output
  channel when ``w_scale`` is ``[M]``).
* ``QLinearMatMul`` = ``MatMulInteger(a, b, a_zp, b_zp)`` (which TVM converts, int32), then the
  same requantization with ``a_scale · b_scale / y_scale``.

The int32 ``Conv`` this writes is outside ONNX's type constraints for ``Conv`` (float only), which
is fine for its one consumer, TVM's importer, whose converter is type-generic and lowers it to an
int32 convolution; the decomposed graph is never handed to another runtime. Integer results are
exact (no float accumulation), so they match onnxruntime bit for bit before requantization.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mmopt.extend.rules import (
    op as _op,
    Context,
    Decomposition,
    dtype_of,
    ints,
    present,
    static_shape,
)

_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_RANGES = {ir.DataType.UINT8: (0, 255), ir.DataType.INT8: (-128, 127)}


def _int32(tape, x):
    return _op(tape, "Cast", x, to=ir.DataType.INT32)


def _per_channel(tape, value: ir.Value, rank: int) -> ir.Value:
    """A per-output-channel ``[M]`` tensor reshaped to ``[M, 1, ...]`` (rank ``rank``)."""
    shape = static_shape(value)
    if shape is None or len(shape) == 0 or int(np.prod(shape)) == 1:
        return value
    return _op(tape, "Reshape", value, ints(tape, [-1] + [1] * (rank - 1)))


def _conv_accumulator(node: ir.Node, tape, x, w, x_zp, w_zp) -> ir.Value:
    rank = len(static_shape(w))
    xi = _int32(tape, x)
    if x_zp is not None:
        xi = _op(tape, "Sub", xi, _int32(tape, x_zp))
    wi = _int32(tape, w)
    if w_zp is not None:
        wi = _op(tape, "Sub", wi, _int32(tape, _per_channel(tape, w_zp, rank)))
    attributes = {k: node.attributes[k] for k in _CONV_ATTRIBUTES if k in node.attributes}
    conv = tape.op("Conv", [xi, wi])
    for a in attributes.values():
        conv.producer().attributes[a.name] = a
    return conv


def _requantize(tape, acc: ir.Value, multiplier: ir.Value, y_zp: ir.Value | None,
                out_type: ir.DataType) -> ir.Value:
    """``saturate(round(float(acc) · multiplier) + y_zp)`` in ``out_type``."""
    scaled = _op(tape, "Round", _op(tape, "Mul", _op(tape, "Cast", acc, to=ir.DataType.FLOAT),
                                    multiplier))
    if y_zp is not None:
        scaled = _op(tape, "Add", scaled, _op(tape, "Cast", y_zp, to=ir.DataType.FLOAT))
    lo, hi = _RANGES[out_type]
    clipped = _op(tape, "Clip", scaled, _scalar(tape, lo), _scalar(tape, hi))
    return _op(tape, "Cast", clipped, to=out_type)


def _scalar(tape, value) -> ir.Value:
    return tape.op("Constant", [], {"value": ir.tensor(np.asarray(value, dtype=np.float32))})


def _multiplier(tape, *, scale_a, scale_b, scale_y) -> ir.Value:
    """``scale_a · scale_b / scale_y`` in float32 (onnxruntime's order of operations)."""
    def f32(v):
        return _op(tape, "Cast", v, to=ir.DataType.FLOAT)

    return _op(tape, "Div", _op(tape, "Mul", f32(scale_a), f32(scale_b)), f32(scale_y))


def _check_types(*values: ir.Value | None) -> str | None:
    for v in values:
        if v is not None and dtype_of(v) not in _RANGES:
            return f"{v.name} has type {dtype_of(v)}; only int8/uint8 are supported"
    return None


class LowerConvInteger(Decomposition):
    name = "lower_conv_integer"
    op_types = ("ConvInteger",)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if static_shape(node.inputs[1]) is None:
            return "the weight shape is not static"
        return _check_types(node.inputs[0], node.inputs[1])

    def rewrite(self, node, tape, ctx):
        return [_conv_accumulator(node, tape, node.inputs[0], node.inputs[1], present(node, 2),
                                  present(node, 3))]


class LowerQLinearConv(Decomposition):
    name = "lower_qlinear_conv"
    op_types = ("QLinearConv",)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if static_shape(node.inputs[3]) is None:
            return "the weight shape is not static"
        return _check_types(node.inputs[0], node.inputs[3], node.inputs[7])

    def rewrite(self, node, tape, ctx):
        x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = (present(node, i) for i in range(8))
        bias = present(node, 8)
        rank = len(static_shape(w))
        acc = _conv_accumulator(node, tape, x, w, x_zp, w_zp)
        if bias is not None:
            acc = _op(tape, "Add", acc, _int32(tape, _per_channel(tape, bias, rank - 1)))
        multiplier = _multiplier(tape, scale_a=x_scale, scale_b=_per_channel(tape, w_scale, rank - 1),
                                 scale_y=y_scale)
        out_type = dtype_of(y_zp) if y_zp is not None else ir.DataType.UINT8
        return [_requantize(tape, acc, multiplier, y_zp, out_type)]


class LowerQLinearMatMul(Decomposition):
    name = "lower_qlinear_matmul"
    op_types = ("QLinearMatMul",)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        return _check_types(node.inputs[0], node.inputs[3], node.inputs[7])

    def rewrite(self, node, tape, ctx):
        a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = (present(node, i) for i in range(8))
        acc = tape.op("MatMulInteger", [a, b, a_zp, b_zp])
        multiplier = _multiplier(tape, scale_a=a_scale, scale_b=b_scale, scale_y=y_scale)
        out_type = dtype_of(y_zp) if y_zp is not None else ir.DataType.UINT8
        return [_requantize(tape, acc, multiplier, y_zp, out_type)]


RULES = (LowerConvInteger(), LowerQLinearConv(), LowerQLinearMatMul())
