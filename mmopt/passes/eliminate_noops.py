"""eliminate_noops: nodes that return their input unchanged are removed.

A node is a no-op when, for every input it can receive, its output equals its first input:

* ``Identity(x)``;
* ``Dropout(x)`` at inference (``training_mode`` absent or false, mask output unused);
* ``Cast(x, to=T)`` when ``x`` already has type ``T``;
* ``Slice(x, starts, ends, axes, steps)`` whose every sliced axis, after clamping, runs from 0 to its
  full (static) length with step 1;
* ``Pad(x, pads)`` with all pads 0;
* ``Expand(x, shape)`` when broadcasting ``x``'s static shape with ``shape`` gives ``x``'s shape;
* ``Concat(x)`` with a single input;
* ``x + 0``, ``x − 0``, ``x · 1``, ``x / 1`` with a constant whose every element is the neutral element
  and which neither widens the type nor grows the shape (every dim 1, rank ≤ rank(x)).

Each rule rewrites ``y = op(x, ...)`` to ``Identity(x)``; the pass then removes the Identity nodes
with :mod:`mmopt.passes.eliminate_identity` (graph input and output names are kept, and a subgraph
keeps the Identity that passes an enclosing scope's value through).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult

from mmopt.passes._rules import Rule, RulePass, constant, fail, rank, static_shape
from mmopt.passes.eliminate_identity import EliminateIdentityPass

_INT64_MAX = np.iinfo(np.int64).max


class EliminateDropout(Rule):
    name = "eliminate_dropout"

    def pattern(self, op, x):
        return op.Dropout(x, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, out, **_) -> MatchResult:
        node = out.producer()
        if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
            return fail("mask output is used")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = constant(node.inputs[2])
            if mode is None or bool(mode.reshape(-1)[0]):
                return fail("training_mode is not a constant false")
        return MatchResult()

    def rewrite(self, op, x, out, **_):
        return op.Identity(x)


class EliminateCastToSameType(Rule):
    name = "eliminate_cast_to_same_type"

    def pattern(self, op, x):
        return op.Cast(x, _outputs=["out"])

    def check(self, context, x, out, **_) -> MatchResult:
        to = out.producer().attributes.get("to")
        if x.dtype is None or to is None or ir.DataType(to.value) != x.dtype:
            return fail("input type unknown or different")
        return MatchResult()

    def rewrite(self, op, x, out, **_):
        return op.Identity(x)


class EliminateNoopSlice(Rule):
    name = "eliminate_noop_slice"

    def pattern(self, op, x, starts, ends):
        return op.Slice(x, starts, ends, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, starts, ends, out, **_) -> MatchResult:
        shape = static_shape(x)
        node = out.producer()
        extra = [constant(v) if v is not None else None for v in node.inputs[3:5]]
        begin, end = constant(starts), constant(ends)
        if shape is None or begin is None or end is None:
            return fail("shape or slice bounds unknown")
        if any(v is not None and e is None for v, e in zip(node.inputs[3:5], extra)):
            return fail("axes or steps are not constants")
        r = len(shape)
        axes = extra[0].reshape(-1) if len(extra) > 0 and extra[0] is not None else np.arange(len(begin))
        steps = extra[1].reshape(-1) if len(extra) > 1 and extra[1] is not None else np.ones(len(begin))
        for axis, b, e, s in zip(axes, begin.reshape(-1), end.reshape(-1), steps):
            dim = shape[int(axis) % r]
            b = int(b) + dim if b < 0 else int(b)
            e = int(e) + dim if e < 0 and e > -_INT64_MAX else int(e)
            if s != 1 or min(max(b, 0), dim) != 0 or min(max(e, 0), dim) != dim:
                return fail("slice is not the full range")
        return MatchResult()

    def rewrite(self, op, x, starts, ends, out, **_):
        return op.Identity(x)


class EliminateNoopPad(Rule):
    name = "eliminate_noop_pad"

    def pattern(self, op, x, pads):
        return op.Pad(x, pads, _allow_other_inputs=True)

    def check(self, context, x, pads, **_) -> MatchResult:
        array = constant(pads)
        if array is None or np.any(array):
            return fail("pads are not all 0")
        return MatchResult()

    def rewrite(self, op, x, pads, **_):
        return op.Identity(x)


class EliminateNoopExpand(Rule):
    name = "eliminate_noop_expand"

    def pattern(self, op, x, shape):
        return op.Expand(x, shape)

    def check(self, context, x, shape, **_) -> MatchResult:
        x_shape, target = static_shape(x), constant(shape)
        if x_shape is None or target is None:
            return fail("shapes unknown")
        try:
            result = np.broadcast_shapes(x_shape, tuple(int(d) for d in target.reshape(-1)))
        except ValueError:
            return fail("shapes do not broadcast")
        return MatchResult() if result == x_shape else fail("Expand grows the tensor")

    def rewrite(self, op, x, shape, **_):
        return op.Identity(x)


class EliminateSingleInputConcat(Rule):
    name = "eliminate_single_input_concat"

    def pattern(self, op, x):
        return op.Concat(x)

    def rewrite(self, op, x, **_):
        return op.Identity(x)


class _EliminateNeutral(Rule):
    arith: ClassVar[str]
    neutral: ClassVar[float]

    def pattern(self, op, x, c):
        return getattr(op, self.arith)(x, c)

    def check(self, context, x, c, **_) -> MatchResult:
        array = constant(c)
        if array is None or x.dtype is None or x.dtype.numpy() != array.dtype:
            return fail("operand is not a constant of x's type")
        r = rank(x)
        if r is None or array.ndim > r or any(d != 1 for d in array.shape):
            return fail("operand could broadcast x to a larger shape")
        if not np.all(array == self.neutral):
            return fail(f"operand is not {self.neutral}")
        return MatchResult()

    def rewrite(self, op, x, c, **_):
        return op.Identity(x)


class EliminateAddZero(_EliminateNeutral):
    name, arith, neutral, commute = "eliminate_add_zero", "Add", 0.0, True


class EliminateSubZero(_EliminateNeutral):
    name, arith, neutral = "eliminate_sub_zero", "Sub", 0.0


class EliminateMulOne(_EliminateNeutral):
    name, arith, neutral, commute = "eliminate_mul_one", "Mul", 1.0, True


class EliminateDivOne(_EliminateNeutral):
    name, arith, neutral = "eliminate_div_one", "Div", 1.0


class EliminateNoopsPass(RulePass):
    """Identity, inference Dropout, same-type Cast, full Slice, zero Pad, no-op Expand, one-input
    Concat, and x+0 / x-0 / x*1 / x/1 removed."""

    rules = (EliminateDropout, EliminateCastToSameType, EliminateNoopSlice, EliminateNoopPad,
             EliminateNoopExpand, EliminateSingleInputConcat, EliminateAddZero, EliminateSubZero,
             EliminateMulOne, EliminateDivOne)
    needs_shapes = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        identity = EliminateIdentityPass()
        identity(model)
        result = super().call(model)
        if identity.removed:
            self.counts["eliminate_identity"] += identity.removed
        return ir.passes.PassResult(model, modified=result.modified or identity.removed > 0)
