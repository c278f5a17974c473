"""Layer normalizations written by onnxruntime's transformers optimizer, decomposed exactly into
ONNX's ``LayerNormalization`` (over the last axis), or for the RMS forms into the ops of their
formula.

* ``SkipLayerNormalization(input, skip, gamma, beta?, bias?)``: ``s = input + skip + bias``;
  outputs ``LN(s)·gamma + beta``, the mean and inverse standard deviation of ``s`` (``[..., 1]``,
  ONNX's LayerNormalization outputs 1 and 2) and ``s`` itself (output 3); ``epsilon`` default
  1e-12.
* ``EmbedLayerNormalization(input_ids, segment_ids?, word_embedding, position_embedding,
  segment_embedding?, gamma, beta?, mask?, position_ids?)``: ``e = word[ids] + position[pos] +
  segment[segment_ids]`` with ``pos = 0..S-1`` unless ``position_ids`` is given; outputs
  ``LN(e)·gamma + beta``, ``mask_index`` = the number of ones in each row of ``mask`` (int32; zeros
  without a mask) and ``e`` (output 2).
* ``SimplifiedLayerNormalization(X, scale)`` (RMSNorm; onnxruntime registers it in ONNX's own
  domain): over the axes ``axis..rank-1`` (``axis`` default -1),
  ``r = 1/√(mean(X²) + epsilon)`` (``epsilon`` default 1e-5), ``Y = X·r·scale``; output 1 is ``r``
  (``[..., 1, ..., 1]``). With ``stash_type`` 1 (the default) a float16/bfloat16 ``X`` is computed
  in float32 and ``Y`` cast back.
* ``SkipSimplifiedLayerNormalization(input, skip, gamma, bias?)`` (com.microsoft): ``s = input +
  skip + bias``, ``Y = SimplifiedLayerNormalization(s, gamma)`` over the last axis (``epsilon``
  default 1e-12); output 2 is ``r``, output 3 is ``s``. Output 1 (a mean) is not defined for an RMS
  normalization: a node whose output 1 is read is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mmopt import extend
from mmopt.extend.rules import (
    Decomposition,
    attr,
    constant_like,
    dtype_of,
    ints,
    op,
    present,
    reduce,
    used,
)

DOMAIN = "com.microsoft"


def _rms_norm(tape, x, scale, epsilon: float, axis: int, rank: int | None, opset: int,
              stash_float: bool):
    """``(x·r·scale, r)`` with ``r = 1/√(mean(x²) + epsilon)`` over ``axis..rank-1``."""
    if axis < 0:
        axes = list(range(axis, 0))
    else:
        axes = list(range(axis, rank))
    dtype = dtype_of(x)
    upcast = stash_float and dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    xf = op(tape, "Cast", x, to=ir.DataType.FLOAT) if upcast else x
    mean_square = reduce(tape, "ReduceMean", op(tape, "Mul", xf, xf), axes, opset, keepdims=1)
    inv = op(tape, "Reciprocal", op(tape, "Sqrt", op(tape, "Add", mean_square,
                                                      constant_like(tape, epsilon, xf))))
    y = op(tape, "Mul", xf, inv)
    if upcast:
        y = op(tape, "Cast", y, to=dtype)
    return op(tape, "Mul", y, scale), inv


def _layer_norm(tape, x, gamma, beta, epsilon: float, outputs: int):
    """ONNX LayerNormalization over the last axis with 1 or 3 outputs."""
    inputs = [x, gamma] + ([beta] if beta is not None else [])
    if outputs == 1:
        return [tape.op("LayerNormalization", inputs, {"axis": -1, "epsilon": epsilon})]
    return list(tape.op_multi_out("LayerNormalization", inputs, {"axis": -1, "epsilon": epsilon},
                                  num_outputs=3))


class DecomposeSkipLayerNorm(Decomposition):
    name = "decompose_skip_layer_norm"
    domain = DOMAIN
    op_types = ("SkipLayerNormalization",)

    def rewrite(self, node, tape, ctx):
        x, skip, gamma = node.inputs[0], node.inputs[1], node.inputs[2]
        beta, bias = present(node, 3), present(node, 4)
        total = op(tape, "Add", x, skip)
        if bias is not None:
            total = op(tape, "Add", total, bias)
        stats = any(used(v) for v in node.outputs[1:3])
        normed = _layer_norm(tape, total, gamma, beta, float(attr(node, "epsilon", 1e-12)),
                             3 if stats else 1)
        return [*normed, *([None, None] if not stats else []), total][:len(node.outputs)]


class DecomposeEmbedLayerNorm(Decomposition):
    name = "decompose_embed_layer_norm"
    domain = DOMAIN
    op_types = ("EmbedLayerNormalization",)

    def check(self, node, ctx):
        ids = node.inputs[0]
        if ids.shape is None or len(ids.shape) != 2:
            return "input_ids of unknown rank (expected [batch, sequence])"
        return None

    def rewrite(self, node, tape, ctx):
        ids, segment_ids = node.inputs[0], present(node, 1)
        word, position, segment = node.inputs[2], node.inputs[3], present(node, 4)
        gamma, beta = node.inputs[5], present(node, 6)
        mask, position_ids = present(node, 7), present(node, 8)
        total = op(tape, "Gather", word, ids)
        if position_ids is None:
            length = op(tape, "Shape", ids, start=1, end=2)
            end = op(tape, "Squeeze", length, ints(tape, [0]))
            position_ids = op(tape, "Range", ints(tape, 0), end, ints(tape, 1))
        total = op(tape, "Add", total, op(tape, "Gather", position, position_ids))
        if segment is not None and segment_ids is not None:
            total = op(tape, "Add", total, op(tape, "Gather", segment, segment_ids))
        (y,) = _layer_norm(tape, total, gamma, beta, float(attr(node, "epsilon", 1e-12)), 1)
        mask_index = None
        if len(node.outputs) > 1 and used(node.outputs[1]):
            if mask is not None:
                counts = op(tape, "Cast", mask, to=ir.DataType.INT32)
                mask_index = reduce(tape, "ReduceSum", counts, [1], ctx.opset, keepdims=0)
            else:
                batch = op(tape, "Shape", ids, start=0, end=1)
                mask_index = op(tape, "ConstantOfShape", batch,
                                value=ir.tensor(np.zeros(1, np.int32)))
        return [y, mask_index, total][:len(node.outputs)]


class DecomposeSimplifiedLayerNorm(Decomposition):
    name = "decompose_simplified_layer_norm"
    domain = ""
    op_types = ("SimplifiedLayerNormalization",)

    def check(self, node, ctx):
        axis = int(attr(node, "axis", -1))
        x = node.inputs[0]
        if axis >= 0 and (x.shape is None):
            return f"axis {axis} on an input of unknown rank"
        types = (dtype_of(x), dtype_of(node.inputs[1]))
        if None not in types and types[0] != types[1]:
            return f"the scale's type ({types[1]}) differs from the input's ({types[0]})"
        return None

    def rewrite(self, node, tape, ctx):
        x, scale = node.inputs[0], node.inputs[1]
        axis = int(attr(node, "axis", -1))
        rank = None if x.shape is None else len(x.shape)
        y, inv = _rms_norm(tape, x, scale, float(attr(node, "epsilon", 1e-5)), axis, rank,
                           ctx.opset, int(attr(node, "stash_type", 1)) == 1)
        return [y, inv][:len(node.outputs)]


class DecomposeSkipSimplifiedLayerNorm(Decomposition):
    name = "decompose_skip_simplified_layer_norm"
    domain = DOMAIN
    op_types = ("SkipSimplifiedLayerNormalization",)

    def check(self, node, ctx):
        if len(node.outputs) > 1 and used(node.outputs[1]):
            return "output 1 (a mean) is read; an RMS normalization defines none"
        return None

    def rewrite(self, node, tape, ctx):
        x, skip, gamma, bias = node.inputs[0], node.inputs[1], node.inputs[2], present(node, 3)
        total = op(tape, "Add", x, skip)
        if bias is not None:
            total = op(tape, "Add", total, bias)
        y, inv = _rms_norm(tape, total, gamma, float(attr(node, "epsilon", 1e-12)), -1, None,
                           ctx.opset, True)
        return [y, None, inv, total][:len(node.outputs)]


extend.register(DecomposeSkipLayerNorm())
extend.register(DecomposeEmbedLayerNorm())
extend.register(DecomposeSimplifiedLayerNorm())
extend.register(DecomposeSkipSimplifiedLayerNorm())
