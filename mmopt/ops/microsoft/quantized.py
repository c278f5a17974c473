"""Dynamically quantized com.microsoft ops, decomposed into the same integer arithmetic.

``onnxruntime.quantization.quantize_dynamic`` writes ``DynamicQuantizeLSTM``; onnxruntime's graph
optimizer (extended level) fuses its ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul``
chains into ``DynamicQuantizeMatMul``. Both quantize their float input at run time, as
``DynamicQuantizeLinear`` defines it (uint8, asymmetric, over the whole tensor):

    lo = min(min(x), 0), hi = max(max(x), 0), s = (hi - lo) / 255 (1 when hi = lo)
    z = round(clip(-lo / s, 0, 255)), q = clip(round(x / s) + z, 0, 255)      round: half to even

then multiply exactly in int32 (``MatMulInteger`` with both zero points) and scale back:
``y = float(acc) · (s · w_scale) + bias``, ``w_scale`` per tensor or per output column. The integer
products are exact; what may differ from onnxruntime is float rounding of ``x / s`` on ties and of
the final scaling, far below one quantization step.

* ``DynamicQuantizeMatMul(A, B, b_scale, b_zero_point?, bias?)`` = the above.
* ``MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point?, b_zero_point?, bias?)``: ``A`` is
  already quantized: ``y = float(MatMulInteger(A, B, a_zero_point, b_zero_point)) · (a_scale ·
  b_scale) + bias`` (onnxruntime's graph optimizer writes it for ``MatMulInteger -> Cast -> Mul``
  chains whose input quantization it does not fuse too, e.g. a ``DynamicQuantizeLinear`` feeding
  several products). ``a_scale`` and ``a_zero_point`` must be scalars; ``b_scale`` and
  ``b_zero_point`` scalars or one per output column.
* ``DynamicQuantizeLSTM(X, W, R, B?, sequence_lens?, initial_h?, initial_c?, P?, W_scale,
  W_zero_point, R_scale, R_zero_point)``: the LSTM of
  :class:`mmopt.codegen.decompose.decompose_rnn.UnrollRecurrence` with its two products quantized
  this way: ``X · W`` once over all time steps (``X`` quantized as one tensor, as onnxruntime's
  input projection does) and ``H_{t-1} · R`` at every step (``H`` quantized per step and batch
  entry, as onnxruntime's recurrent product does; measured against it). ``W`` is
  ``[D, I, 4H]`` and ``R`` ``[D, H, 4H]`` (transposed relative to ONNX's LSTM), scales and zero
  points ``[D]`` or ``[D, 4H]``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mmopt import extend
from mmopt.codegen.decompose.decompose_rnn import UnrollRecurrence
from mmopt.extend.rules import (
    Decomposition,
    attr,
    constant,
    dtype_of,
    op,
    present,
    reduce,
    static_shape,
)

DOMAIN = "com.microsoft"


def quantize_dynamic(tape, x: ir.Value, opset: int, *, per_row: bool = False
                     ) -> tuple[ir.Value, ir.Value, ir.Value]:
    """``(q uint8, scale float32, zero point uint8)`` of ``x`` (module docstring): scalars, or with
    ``per_row`` one per row (reduced over the last axis, kept as ``[..., 1]``)."""
    f = lambda v: constant(tape, np.asarray(v, np.float32))  # noqa: E731
    if per_row:
        x_min = reduce(tape, "ReduceMin", x, [-1], opset, keepdims=1)
        x_max = reduce(tape, "ReduceMax", x, [-1], opset, keepdims=1)
    else:  # over every element, whatever the rank
        flat = op(tape, "Reshape", x, constant(tape, np.asarray([-1], np.int64)))
        x_min = reduce(tape, "ReduceMin", flat, [0], opset, keepdims=0)
        x_max = reduce(tape, "ReduceMax", flat, [0], opset, keepdims=0)
    lo = op(tape, "Min", x_min, f(0.0))
    hi = op(tape, "Max", x_max, f(0.0))
    span = op(tape, "Sub", hi, lo)
    scale = op(tape, "Where", op(tape, "Equal", span, f(0.0)), f(1.0),
               op(tape, "Div", span, f(255.0)))
    zero = op(tape, "Round", op(tape, "Clip", op(tape, "Neg", op(tape, "Div", lo, scale)),
                                f(0.0), f(255.0)))
    q = op(tape, "Clip", op(tape, "Add", op(tape, "Round", op(tape, "Div", x, scale)), zero),
           f(0.0), f(255.0))
    u8 = ir.DataType.UINT8
    return op(tape, "Cast", q, to=u8), scale, op(tape, "Cast", zero, to=u8)


def dynamic_quantized_matmul(tape, x: ir.Value, w: ir.Value, w_scale: ir.Value,
                             w_zero: ir.Value | None, opset: int, *, per_row: bool = False
                             ) -> ir.Value:
    """``x @ dequantize(w)`` with ``x`` quantized at run time (float32 result, no bias): as one
    tensor (``MatMulInteger``), or row by row (``per_row``: the zero points differ per row, so the
    int32 differences are multiplied with an int32 ``MatMul``; exact as well)."""
    q, scale, zero = quantize_dynamic(tape, x, opset, per_row=per_row)
    if per_row:
        i32 = ir.DataType.INT32
        a = op(tape, "Sub", op(tape, "Cast", q, to=i32), op(tape, "Cast", zero, to=i32))
        b = op(tape, "Cast", w, to=i32)
        if w_zero is not None:
            b = op(tape, "Sub", b, op(tape, "Cast", w_zero, to=i32))
        acc = op(tape, "MatMul", a, b)
    else:
        acc = tape.op("MatMulInteger", [q, w, zero] + ([w_zero] if w_zero is not None else []))
    return op(tape, "Mul", op(tape, "Cast", acc, to=ir.DataType.FLOAT),
              op(tape, "Mul", scale, w_scale))


class DecomposeDynamicQuantizeMatMul(Decomposition):
    name = "decompose_dynamic_quantize_matmul"
    domain = DOMAIN
    op_types = ("DynamicQuantizeMatMul",)

    def rewrite(self, node, tape, ctx):
        y = dynamic_quantized_matmul(tape, node.inputs[0], node.inputs[1], node.inputs[2],
                                     present(node, 3), ctx.opset)
        bias = present(node, 4)
        return [op(tape, "Add", y, bias) if bias is not None else y]


def _size(value: ir.Value | None) -> int | None:
    shape = static_shape(value)
    return None if shape is None else int(np.prod(shape, dtype=np.int64))


class DecomposeMatMulIntegerToFloat(Decomposition):
    name = "decompose_matmul_integer_to_float"
    domain = DOMAIN
    op_types = ("MatMulIntegerToFloat",)

    def check(self, node, ctx):
        for index, what in ((2, "a_scale"), (4, "a_zero_point")):
            value = present(node, index)
            if value is not None and _size(value) != 1:
                return f"{what} is not known to be a scalar (per-column A scales are not supported)"
        if dtype_of(node.inputs[2]) not in (None, ir.DataType.FLOAT):
            return "only float32 scales are supported"
        if present(node, 4) is None and present(node, 5) is not None and dtype_of(
                node.inputs[0]) is None:
            return "A's type is unknown (needed for its zero point)"
        return None

    def rewrite(self, node, tape, ctx):
        a, b, a_scale, b_scale = node.inputs[:4]
        a_zero, b_zero, bias = present(node, 4), present(node, 5), present(node, 6)
        inputs = [a, b]
        if a_zero is not None or b_zero is not None:
            if a_zero is None:  # MatMulInteger's inputs are positional: a zero of A's type
                a_zero = constant(tape, np.zeros((), dtype_of(a).numpy()))
            inputs += [a_zero] + ([b_zero] if b_zero is not None else [])
        acc = tape.op("MatMulInteger", inputs)
        y = op(tape, "Mul", op(tape, "Cast", acc, to=ir.DataType.FLOAT),
               op(tape, "Mul", a_scale, b_scale))
        return [op(tape, "Add", y, bias) if bias is not None else y]


class UnrollDynamicQuantizeLSTM(UnrollRecurrence):
    """DynamicQuantizeLSTM unrolled like ONNX's LSTM, with quantized products."""

    name = "unroll_dynamic_quantize_lstm"
    domain = DOMAIN
    op_types = ("DynamicQuantizeLSTM",)

    def cell(self, node):
        return "LSTM"

    def check(self, node, ctx):
        if not attr(node, "hidden_size", None):
            return "hidden_size is not set"
        if any(present(node, i) is None for i in (8, 9, 10, 11)):
            return "the weight scales and zero points must be given"
        return super().check(node, ctx)

    @staticmethod
    def _per_direction(b, value: ir.Value, d: int) -> ir.Value:
        return b.take(value, d)  # [D] -> scalar, [D, 4H] -> [4H]

    def input_projection(self, b, node, xs, d):
        w = b.take(node.inputs[1], d)  # [I, 4H]
        return dynamic_quantized_matmul(b.tape, xs, w, self._per_direction(b, node.inputs[8], d),
                                        self._per_direction(b, node.inputs[9], d),
                                        self._opset(node))

    def recurrent_weights(self, b, node, d):
        return (b.take(node.inputs[2], d), self._per_direction(b, node.inputs[10], d),
                self._per_direction(b, node.inputs[11], d))

    def recurrent_product(self, b, node, h, weights):
        r, scale, zero = weights
        # onnxruntime quantizes the state row by row (batch entry by batch entry)
        return dynamic_quantized_matmul(b.tape, h, r, scale, zero, self._opset(node), per_row=True)

    @staticmethod
    def _opset(node) -> int:
        graph = node.graph
        model_opsets = graph.opset_imports if graph is not None else {}
        return model_opsets.get("", 17)


extend.register(DecomposeDynamicQuantizeMatMul())
extend.register(DecomposeMatMulIntegerToFloat())
extend.register(UnrollDynamicQuantizeLSTM())
