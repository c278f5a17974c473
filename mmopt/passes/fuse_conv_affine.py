"""fuse_conv_affine: a constant per-channel (or scalar) Add, Sub, Mul or Div after a Conv or ConvTranspose
is folded into the convolution's weight and bias.

For ``y = W∗x + b`` (per output channel ``o``) and a constant ``c`` that broadcasts along the channel
axis only (shape ``[C]`` after dropping leading/trailing 1s, e.g. ``[1, C, 1, 1]``, or a scalar):

    y + c  = W∗x + (b + c)              b' = b + c
    y − c  = W∗x + (b − c)              b' = b − c
    y · c  = (W·c)∗x + b·c              W'[o] = W[o]·c[o],  b' = b·c
    y / c  = (W/c)∗x + b/c              W'[o] = W[o]/c[o],  b' = b/c   (c ≠ 0)

A missing bias is ``b = 0``. This covers the separate "bias Add" that many exporters write after a
bias-less convolution, and the learnable affine "scale" layers (``Mul`` then ``Add``) of PP-LCNet-style
networks. For ConvTranspose the output channel ``o = gi·(O/g) + j`` is axis 1 of the weight viewed as
``[g, I/g, O/g, k...]`` (see fuse_batchnorm).

The same holds on the input side of a Conv (``*_into_next_conv``), for ``c`` per *input* channel:

    Conv(x · c) = Conv'(x),   W'[o, i] = W[o, i] · c[ch(o, i)]
    Conv(x + c) = Conv''(x),  b''[o] = b[o] + Σ_{i,k} W[o, i, k] · c[ch(o, i)]

where ``ch(o, i) = (o div (O/g))·(I/g) + i`` is the input channel that weight ``[o, i]`` reads (group
``g``). The scale commutes with zero padding (0·c = 0), so ``x · c`` folds at any padding; ``x + c``
does not (the padded zeros would need to be ``c``), so it folds only into a Conv with all pads 0.
Sub and Div are Add of −c and Mul by 1/c. This catches the learnable affine blocks (``x·a + b`` after
each activation) of PP-LCNetV3, the backbone of the PaddleOCR v4 models.

Rejected: ``c`` not constant, or broadcasting along any axis but the channel axis (that would change
the result's shape or mix positions), non-float weights, a Div by a constant containing 0, and a node
between the two whose output also feeds other nodes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult

from mmopt.passes._rules import Rule, RulePass, attr, channel_vector, constant, fail, new_initializer


def _out_channels(op_type: str, node, weight: np.ndarray) -> int:
    if op_type == "Conv":
        return weight.shape[0]
    return weight.shape[1] * attr(node, "group", 1)


def _scale_weight(op_type: str, node, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    if op_type == "Conv":
        return weight * s.reshape((-1,) + (1,) * (weight.ndim - 1))
    g = attr(node, "group", 1)
    cin, cout_g, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
    grouped = weight.reshape(g, cin // g, cout_g, *kernel)
    return (grouped * s.reshape(g, 1, cout_g, *(1,) * len(kernel))).reshape(weight.shape)


class _FuseAffineIntoConv(Rule):
    conv_op: ClassVar[str]
    arith: ClassVar[str]

    def pattern(self, op, x, c):
        conv = getattr(op, self.conv_op)(x, _allow_other_inputs=True, _outputs=["conv"])
        return getattr(op, self.arith)(conv, c)

    def _vector(self, conv, c) -> np.ndarray | None:
        node = conv.producer()
        weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        array = constant(c)
        if weight is None or array is None:
            return None
        return channel_vector(array, weight.ndim, _out_channels(self.conv_op, node, weight))

    def check(self, context, x, conv, c, **_) -> MatchResult:
        node = conv.producer()
        if constant(c) is None:
            return fail(f"{self.arith} operand is not a constant")
        weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or weight.dtype.kind != "f":
            return fail(f"{self.conv_op} weight is not a float constant")
        if len(node.inputs) > 2 and node.inputs[2] is not None and constant(node.inputs[2]) is None:
            return fail(f"{self.conv_op} bias is not a constant")
        if constant(c).dtype != weight.dtype:
            return fail("operand dtype differs from the weight's")
        vector = self._vector(conv, c)
        if vector is None:
            return fail("operand does not broadcast along the channel axis only")
        if self.arith == "Div" and not np.all(vector):
            return fail("division by a constant containing 0")
        return MatchResult()

    def rewrite(self, op, x, conv, c, **_):
        node = conv.producer()
        weight = constant(node.inputs[1])
        vector = self._vector(conv, c).astype(np.float64)
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        bias = constant(node.inputs[2]).astype(np.float64) if has_bias else np.zeros_like(vector)
        new_weight = None
        if self.arith == "Add":
            bias = bias + vector
        elif self.arith == "Sub":
            bias = bias - vector
        else:
            s = vector if self.arith == "Mul" else 1.0 / vector
            new_weight = _scale_weight(self.conv_op, node, weight.astype(np.float64), s)
            bias = bias * s
        w_name = node.inputs[1].name or f"{node.name}.weight"
        w = (node.inputs[1] if new_weight is None
             else new_initializer(op, node.graph, f"{w_name}.scaled", new_weight.astype(weight.dtype)))
        b = new_initializer(op, node.graph, f"{w_name}.bias", bias.astype(weight.dtype))
        return op.op(self.conv_op, x, w, b, _name=node.name, **dict(node.attributes))


class FuseAddIntoConv(_FuseAffineIntoConv):
    name, conv_op, arith, commute = "fuse_add_into_conv", "Conv", "Add", True


class FuseSubIntoConv(_FuseAffineIntoConv):
    name, conv_op, arith = "fuse_sub_into_conv", "Conv", "Sub"


class FuseMulIntoConv(_FuseAffineIntoConv):
    name, conv_op, arith, commute = "fuse_mul_into_conv", "Conv", "Mul", True


class FuseDivIntoConv(_FuseAffineIntoConv):
    name, conv_op, arith = "fuse_div_into_conv", "Conv", "Div"


class FuseAddIntoConvTranspose(_FuseAffineIntoConv):
    name, conv_op, arith, commute = "fuse_add_into_conv_transpose", "ConvTranspose", "Add", True


class FuseSubIntoConvTranspose(_FuseAffineIntoConv):
    name, conv_op, arith = "fuse_sub_into_conv_transpose", "ConvTranspose", "Sub"


class FuseMulIntoConvTranspose(_FuseAffineIntoConv):
    name, conv_op, arith, commute = "fuse_mul_into_conv_transpose", "ConvTranspose", "Mul", True


class FuseDivIntoConvTranspose(_FuseAffineIntoConv):
    name, conv_op, arith = "fuse_div_into_conv_transpose", "ConvTranspose", "Div"


def _input_channel_map(node, weight: np.ndarray) -> np.ndarray:
    """``[O, I/g]`` array of the input channel each weight reads."""
    g = attr(node, "group", 1)
    cout, cin_g = weight.shape[0], weight.shape[1]
    group_of_out = np.arange(cout) // (cout // g)
    return group_of_out[:, None] * cin_g + np.arange(cin_g)[None, :]


class _FuseAffineIntoNextConv(Rule):
    arith: ClassVar[str]

    def pattern(self, op, x, c):
        return op.Conv(getattr(op, self.arith)(x, c), _allow_other_inputs=True, _outputs=["conv"])

    def _vector(self, conv, c) -> np.ndarray | None:
        node = conv.producer()
        weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        array = constant(c)
        if weight is None or array is None:
            return None
        return channel_vector(array, weight.ndim, weight.shape[1] * attr(node, "group", 1))

    def check(self, context, x, c, conv, **_) -> MatchResult:
        node = conv.producer()
        weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or weight.dtype.kind != "f" or constant(c) is None:
            return fail("weight or operand is not a float constant")
        if constant(c).dtype != weight.dtype:
            return fail("operand dtype differs from the weight's")
        if len(node.inputs) > 2 and node.inputs[2] is not None and constant(node.inputs[2]) is None:
            return fail("Conv bias is not a constant")
        vector = self._vector(conv, c)
        if vector is None:
            return fail("operand does not broadcast along the channel axis only")
        if self.arith == "Div" and not np.all(vector):
            return fail("division by a constant containing 0")
        if self.arith in ("Add", "Sub"):
            if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(attr(node, "pads", [0])):
                return fail("Conv pads its input: the padding would not be shifted")
        return MatchResult()

    def rewrite(self, op, x, c, conv, **_):
        node = conv.producer()
        weight = constant(node.inputs[1])
        w64 = weight.astype(np.float64)
        vector = self._vector(conv, c).astype(np.float64)
        per_weight = vector[_input_channel_map(node, weight)]  # [O, I/g]
        per_weight = per_weight.reshape(per_weight.shape + (1,) * (weight.ndim - 2))
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        bias = constant(node.inputs[2]).astype(np.float64) if has_bias else np.zeros(weight.shape[0])
        w_name = node.inputs[1].name or f"{node.name}.weight"
        if self.arith in ("Mul", "Div"):
            scale = per_weight if self.arith == "Mul" else 1.0 / per_weight
            w = new_initializer(op, node.graph, f"{w_name}.in_scaled", (w64 * scale).astype(weight.dtype))
            b = node.inputs[2] if has_bias else None
        else:
            shift = per_weight if self.arith == "Add" else -per_weight
            w = node.inputs[1]
            bias = bias + (w64 * shift).reshape(weight.shape[0], -1).sum(axis=1)
            b = new_initializer(op, node.graph, f"{w_name}.in_bias", bias.astype(weight.dtype))
        inputs = [x, w] + ([b] if b is not None else [])
        return op.Conv(*inputs, _name=node.name, **dict(node.attributes))


class FuseMulIntoNextConv(_FuseAffineIntoNextConv):
    name, arith, commute = "fuse_mul_into_next_conv", "Mul", True


class FuseDivIntoNextConv(_FuseAffineIntoNextConv):
    name, arith = "fuse_div_into_next_conv", "Div"


class FuseAddIntoNextConv(_FuseAffineIntoNextConv):
    name, arith, commute = "fuse_add_into_next_conv", "Add", True


class FuseSubIntoNextConv(_FuseAffineIntoNextConv):
    name, arith = "fuse_sub_into_next_conv", "Sub"


class FuseConvAffinePass(RulePass):
    """Constant per-channel Add/Sub/Mul/Div after a Conv/ConvTranspose, or before a Conv, folded into
    its weight and bias."""

    rules = (FuseMulIntoConv, FuseDivIntoConv, FuseAddIntoConv, FuseSubIntoConv,
             FuseMulIntoConvTranspose, FuseDivIntoConvTranspose, FuseAddIntoConvTranspose,
             FuseSubIntoConvTranspose,
             FuseMulIntoNextConv, FuseDivIntoNextConv, FuseAddIntoNextConv, FuseSubIntoNextConv)
    anchor_ops = frozenset({"Conv", "ConvTranspose"})
