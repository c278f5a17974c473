"""fuse_layernorm: the decomposed layer normalization subgraph → LayerNormalization (opset 17+).

Over the trailing axes ``A = [r−k, ..., r−1]`` of ``x`` (rank r):

    μ = ReduceMean(x, A)          d = x − μ
    σ² = ReduceMean(d², A)        (d² as Pow(d, 2) or d·d)
    y = d / sqrt(σ² + ε)          (or d · Reciprocal(sqrt(σ² + ε)))

is ``LayerNormalization(x, 1, 0; axis = r−k, epsilon = ε)``. The affine part that follows is folded
into the new node's scale and bias by two more rules:

    LayerNormalization(x, s, b) · g  =  LayerNormalization(x, s·g, b·g)
    LayerNormalization(x, s, b) + c  =  LayerNormalization(x, s, b + c)

valid for constants ``g``, ``c`` that broadcast along the normalized axes only (their shape,
left-padded to rank r, is 1 on every axis before ``r−k``). Both ReduceMeans must reduce the same
trailing axes with ``keepdims=1``; the normalized shape must be static (the scale is a tensor of that
shape).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult
from onnxscript.rewriter.pattern import OrValue

from mmopt.passes._rules import (Rule, RulePass, attr, constant, fail, is_scalar, new_initializer,
                                 rank, scalar, static_shape)


def _reduced_axes(node: ir.Node, r: int) -> list[int] | None:
    """The normalized (sorted, non-negative) axes a ReduceMean reduces, or None if unknown."""
    if attr(node, "keepdims", 1) != 1:
        return None
    axes = attr(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant(node.inputs[1])
        axes = None if array is None else array.reshape(-1).tolist()
    if axes is None:
        return None  # all axes (or noop_with_empty_axes): not a layer norm
    return sorted(int(a) % r for a in axes)


class _FuseLayerNorm(Rule):
    min_opset = 17
    commute = True
    reciprocal: ClassVar[bool]

    def pattern(self, op, x, two, eps):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        d = op.Sub(x, mean)
        square = OrValue([op.Pow(d, two), op.Mul(d, d)])
        var = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["var"])
        std = op.Sqrt(op.Add(var, eps))
        return op.Mul(d, op.Reciprocal(std)) if self.reciprocal else op.Div(d, std)

    def check(self, context, x, two, eps, mean, var, **_) -> MatchResult:
        r = rank(x)
        if r is None or x.dtype is None or not x.dtype.is_floating_point():
            return fail("input rank or float type unknown")
        if two is not None and not is_scalar(two, 2.0):
            return fail("Pow exponent is not 2")
        e = scalar(eps)
        if e is None or e < 0:
            return fail("epsilon is not a non-negative scalar constant")
        axes = _reduced_axes(mean.producer(), r)
        if axes is None or axes != _reduced_axes(var.producer(), r):
            return fail("mean and variance reduce different or unknown axes")
        if axes != list(range(r - len(axes), r)):
            return fail("reduced axes are not the trailing ones")
        shape = x.shape.dims[axes[0]:]
        if not all(isinstance(d, int) for d in shape):
            return fail("normalized shape is not static")
        return MatchResult()

    def rewrite(self, op, x, two, eps, mean, var, **_):
        r = rank(x)
        axes = _reduced_axes(mean.producer(), r)
        shape = tuple(x.shape.dims[axes[0]:])
        dtype = x.dtype.numpy()
        graph = mean.producer().graph
        base = (mean.producer().name or "layernorm").rsplit(".", 1)[0]
        scale = new_initializer(op, graph, f"{base}.ln_scale", np.ones(shape, dtype))
        bias = new_initializer(op, graph, f"{base}.ln_bias", np.zeros(shape, dtype))
        return op.LayerNormalization(x, scale, bias, axis=axes[0], epsilon=scalar(eps),
                                     _name=f"{base}.layernorm")


class FuseLayerNorm(_FuseLayerNorm):
    name = "fuse_layernorm"
    reciprocal = False


class FuseLayerNormReciprocal(_FuseLayerNorm):
    name = "fuse_layernorm"
    reciprocal = True


class _FoldIntoLayerNorm(Rule):
    min_opset = 17
    commute = True
    arith: ClassVar[str]

    def pattern(self, op, x, s, b, c):
        ln = op.LayerNormalization(x, s, b, _outputs=["ln"])
        return getattr(op, self.arith)(ln, c)

    def _folded(self, ln, s, b, c):
        """(new scale, new bias) or None when ``c`` does not fit."""
        scale, bias, operand = constant(s), constant(b), constant(c)
        if scale is None or bias is None or operand is None or operand.dtype != scale.dtype:
            return None
        node = ln.producer()
        r = rank(ln)
        if r is None:
            return None
        axis = attr(node, "axis", -1) % r
        norm = static_shape(s)
        if norm is None or operand.ndim > r:
            return None
        padded = operand.reshape((1,) * (r - operand.ndim) + operand.shape)
        if any(d != 1 for d in padded.shape[:axis]):
            return None
        tail = padded.reshape(padded.shape[axis:])
        try:
            target = np.broadcast_shapes(tail.shape, scale.shape, bias.shape)
        except ValueError:
            return None
        if target != tuple(ln.shape.dims[axis:]):
            return None
        scale = np.broadcast_to(scale, target).astype(np.float64)
        bias = np.broadcast_to(bias, target).astype(np.float64)
        if self.arith == "Mul":
            return scale * tail, bias * tail
        return scale, bias + tail

    def check(self, context, x, s, b, c, ln, **_) -> MatchResult:
        if static_shape(ln) is None and ln.shape is None:
            return fail("LayerNormalization output shape unknown")
        if self._folded(ln, s, b, c) is None:
            return fail("operand is not a constant broadcasting along the normalized axes")
        return MatchResult()

    def rewrite(self, op, x, s, b, c, ln, **_):
        node = ln.producer()
        scale, bias = self._folded(ln, s, b, c)
        dtype = constant(s).dtype
        graph = node.graph
        return op.LayerNormalization(
            x, new_initializer(op, graph, f"{node.name or 'layernorm'}.scale", scale.astype(dtype)),
            new_initializer(op, graph, f"{node.name or 'layernorm'}.bias", bias.astype(dtype)),
            _name=node.name, **dict(node.attributes))


class FoldScaleIntoLayerNorm(_FoldIntoLayerNorm):
    name, arith = "fold_scale_into_layernorm", "Mul"


class FoldBiasIntoLayerNorm(_FoldIntoLayerNorm):
    name, arith = "fold_bias_into_layernorm", "Add"


class FuseLayerNormPass(RulePass):
    """Decomposed LayerNorm -> LayerNormalization, with the following Mul/Add folded into it."""

    rules = (FuseLayerNorm, FuseLayerNormReciprocal, FoldScaleIntoLayerNorm, FoldBiasIntoLayerNorm)
    anchor_ops = frozenset({"ReduceMean", "LayerNormalization"})
    needs_shapes = True
