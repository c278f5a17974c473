"""decompose_deform_conv: 2-D DeformConv as bilinear sampling (GatherElements) and a matrix product.

For output position ``p`` and kernel tap ``k`` the sampling point is
``(top(p) + k_h·d_h + Δy, left(p) + k_w·d_w + Δx)``, ``Δ`` read from ``offset`` laid out as
``[N, offset_group, kH, kW, 2 (y, x), oH, oW]``. Each point is sampled bilinearly from its four
integer neighbours, a neighbour outside the image counting as 0 (GridSample with zero padding and
aligned corners, as ONNX defines the operator). With the samples of every input channel and tap
laid out as columns ``[N, C·kH·kW, oH·oW]`` (times ``mask`` when given), the convolution is one
``MatMul`` per group with the weights ``[oC/group, C/group·kH·kW]``, plus the bias.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mmopt.extend.rules import (
    op as _op,
    Context,
    Decomposition,
    attr,
    constant,
    dtype_of,
    ints,
    present,
    static_shape,
)


class DecomposeDeformConv(Decomposition):
    name = "decompose_deform_conv"
    op_types = ("DeformConv",)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        shapes = [static_shape(node.inputs[i]) for i in range(3)]
        if any(s is None for s in shapes):
            return "the input, weight and offset shapes must be static"
        if len(shapes[0]) != 4:
            return "only 2-D deformable convolution is decomposed"
        if dtype_of(node.inputs[0]) not in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
            return "only float32/float64 inputs are decomposed"
        return None

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        x, w, offset = node.inputs[0], node.inputs[1], node.inputs[2]
        bias, mask = present(node, 3), present(node, 4)
        n, c, height, width = static_shape(x)
        out_c, c_per_group, kh, kw = static_shape(w)
        oh, ow = static_shape(offset)[2:]
        np_dtype = dtype_of(x).numpy()
        group = attr(node, "group", 1)
        groups_off = attr(node, "offset_group", 1)
        sh, sw = attr(node, "strides", None) or [1, 1]
        dh, dw = attr(node, "dilations", None) or [1, 1]
        pads = attr(node, "pads", None) or [0, 0, 0, 0]
        taps, points = kh * kw, oh * ow
        c_off = c // groups_off

        # base sampling coordinates [K, P]
        ky, kx = np.meshgrid(np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
        py, px = np.meshgrid(np.arange(oh) * sh - pads[0], np.arange(ow) * sw - pads[1],
                             indexing="ij")
        base_y = (ky.reshape(-1, 1) + py.reshape(1, -1)).astype(np_dtype)
        base_x = (kx.reshape(-1, 1) + px.reshape(1, -1)).astype(np_dtype)

        deltas = _op(tape, "Reshape", offset, ints(tape, [n, groups_off, taps, 2, points]))
        y = _op(tape, "Add", constant(tape, base_y),
                _op(tape, "Gather", deltas, ints(tape, 0), axis=3))  # [N, G, K, P]
        xs = _op(tape, "Add", constant(tape, base_x),
                 _op(tape, "Gather", deltas, ints(tape, 1), axis=3))
        y0, x0 = _op(tape, "Floor", y), _op(tape, "Floor", xs)
        ly, lx = _op(tape, "Sub", y, y0), _op(tape, "Sub", xs, x0)
        one = constant(tape, np.ones((), np_dtype))
        weights_y = [_op(tape, "Sub", one, ly), ly]
        weights_x = [_op(tape, "Sub", one, lx), lx]
        image = _op(tape, "Reshape", x, ints(tape, [n, groups_off, c_off, height * width]))
        sampled = None
        for iy in (0, 1):
            yy = _op(tape, "Add", y0, constant(tape, np.asarray(iy, np_dtype)))
            for ix in (0, 1):
                xx = _op(tape, "Add", x0, constant(tape, np.asarray(ix, np_dtype)))
                inside = _op(tape, "And",
                             _op(tape, "And", _op(tape, "GreaterOrEqual", yy, self._zero(tape, np_dtype)),
                                 _op(tape, "Less", yy, constant(tape, np.asarray(height, np_dtype)))),
                             _op(tape, "And", _op(tape, "GreaterOrEqual", xx, self._zero(tape, np_dtype)),
                                 _op(tape, "Less", xx, constant(tape, np.asarray(width, np_dtype)))))
                weight = _op(tape, "Where", inside, _op(tape, "Mul", weights_y[iy], weights_x[ix]),
                             self._zero(tape, np_dtype))
                row = _op(tape, "Clip", yy, self._zero(tape, np_dtype),
                          constant(tape, np.asarray(height - 1, np_dtype)))
                col = _op(tape, "Clip", xx, self._zero(tape, np_dtype),
                          constant(tape, np.asarray(width - 1, np_dtype)))
                flat = _op(tape, "Cast", _op(tape, "Add", _op(tape, "Mul", row, constant(
                    tape, np.asarray(width, np_dtype))), col), to=ir.DataType.INT64)
                index = _op(tape, "Expand", _op(tape, "Reshape", flat,
                                                 ints(tape, [n, groups_off, 1, taps * points])),
                            ints(tape, [n, groups_off, c_off, taps * points]))
                values = _op(tape, "GatherElements", image, index, axis=3)
                term = _op(tape, "Mul", values, _op(tape, "Reshape", weight, ints(
                    tape, [n, groups_off, 1, taps * points])))
                sampled = term if sampled is None else _op(tape, "Add", sampled, term)
        if mask is not None:
            sampled = _op(tape, "Mul", sampled, _op(tape, "Reshape", mask, ints(
                tape, [n, groups_off, 1, taps * points])))
        columns = _op(tape, "Reshape", sampled, ints(tape, [n, c * taps, points]))
        kernel = _op(tape, "Reshape", w, ints(tape, [out_c, c_per_group * taps]))
        outs = []
        per_in, per_out = c_per_group * taps, out_c // group
        for g in range(group):
            cols = columns if group == 1 else _op(tape, "Slice", columns, ints(tape, [g * per_in]),
                                                  ints(tape, [(g + 1) * per_in]), ints(tape, [1]))
            weights = kernel if group == 1 else _op(tape, "Slice", kernel, ints(tape, [g * per_out]),
                                                    ints(tape, [(g + 1) * per_out]), ints(tape, [0]))
            outs.append(_op(tape, "MatMul", weights, cols))  # [N, oC/g, P]
        result = outs[0] if group == 1 else _op(tape, "Concat", *outs, axis=1)
        if bias is not None:
            result = _op(tape, "Add", result, _op(tape, "Reshape", bias, ints(tape, [out_c, 1])))
        return [_op(tape, "Reshape", result, ints(tape, [n, out_c, oh, ow]))]

    @staticmethod
    def _zero(tape, np_dtype):
        return constant(tape, np.zeros((), np_dtype))


RULES = (DecomposeDeformConv(),)
