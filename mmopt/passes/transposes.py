"""optimize_transposes: Transpose chains composed or cancelled, Transposes sunk through layout-agnostic ops.

Notation: ``T_p(x)`` is ``Transpose(x, perm=p)``; output axis ``i`` is input axis ``p[i]``.

Composition and identity:

    T_q(T_p(x)) = T_r(x),  r[i] = p[q[i]]          (and = x when r is the identity)
    T_p(x) = x             when p is the identity

Sinking (moving a Transpose below an op that does not care about axis order, so that it meets, and
cancels with, the next Transpose; a Transpose that meets none just ends up lower, never duplicated):

    f(T_p(x)) = T_p(f(x))                      f elementwise with only scalar-constant other inputs
    g(T_p(x), c) = T_p(g(x, c'))               g elementwise binary, c constant, c' = T_p⁻¹(c)
                                               (c left-padded with 1s to the rank first)
    g(T_p(x), T_p(y)) = T_p(g(x, y))           same rank, same perm
    Concat(T_p(x₁), …, T_p(x_k); a) = T_p(Concat(x₁, …, x_k; p[a]))
    GlobalAveragePool(T_p(x)) = T_p(ReduceMean(x; axes = p[2:], keepdims = 1))   (Max likewise)
    Resize(T_p(x); roi, scales, sizes) = T_p(Resize(x; roi', scales', sizes'))    scales'[p[i]] = scales[i]

Every sink requires the Transpose to feed only the op it moves below. The sinks that merge
Transposes (binary op or Concat of equally transposed inputs) always pay; the others only move a
Transpose, so they fire only when, below the op, a chain of single-consumer sinkable ops leads to
another Transpose to cancel or compose with; otherwise the graph is left as it is. A constant operand
must not grow the result (its broadcast with T_p(x)'s static shape is that shape). A Transpose is
sunk through Resize only when the new Resize still resizes axes 2.. alone: TVM's importer reads the
sizes of axes 2.. and ignores the others, so a Resize of the channel axis would be miscompiled, not
rejected.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult

from mmopt.passes._rules import (Rule, RulePass, attr, constant, fail, new_initializer, rank,
                                 single_use, static_shape)

#: elementwise ops whose output at a position depends only on the input at that position
UNARY_ELEMENTWISE = (
    "Abs", "Acos", "Asin", "Atan", "Ceil", "Celu", "Clip", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor",
    "HardSigmoid", "HardSwish", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg", "Not",
    "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign",
    "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Cast",
)
BINARY_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu")
_COMMUTATIVE = ("Add", "Mul", "Max", "Min")


def perm_of(node, r: int | None) -> list[int] | None:
    """The node's perm (default: reversed axes when the rank is known)."""
    perm = attr(node, "perm")
    if perm is not None:
        return list(perm)
    return None if r is None else list(range(r - 1, -1, -1))


def inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def _sinks_to_transpose(value, depth: int = 64) -> bool:
    """Whether single-consumer sinkable ops lead from ``value`` down to a Transpose."""
    for _ in range(depth):
        if not single_use(value):
            return False
        node = value.uses()[0].node
        if node.op_type == "Transpose":
            return True
        if node.op_type in BINARY_ELEMENTWISE:
            other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
            producer = other.producer() if other is not None else None
            if constant(other) is None and (producer is None or producer.op_type != "Transpose"):
                return False
        elif node.op_type == "Concat":
            if any(v is None or v.producer() is None or v.producer().op_type != "Transpose"
                   for v in node.inputs if v is not value):
                return False
        elif node.op_type not in (*UNARY_ELEMENTWISE, "GlobalAveragePool", "GlobalMaxPool", "Resize"):
            return False
        value = node.outputs[0]
    return False


def _transposed_perm(t) -> list[int] | None:
    """perm of the Transpose producing ``t`` (rank from its input)."""
    node = t.producer()
    return perm_of(node, rank(node.inputs[0]))


class FoldTransposePair(Rule):
    name = "fold_transpose_pair"

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, _outputs=["inner"]), _outputs=["outer"])

    def check(self, context, x, inner, outer, **_) -> MatchResult:
        if _transposed_perm(inner) is None or perm_of(outer.producer(), rank(inner)) is None:
            return fail("rank unknown")
        return MatchResult()

    def rewrite(self, op, x, inner, outer, **_):
        p, q = _transposed_perm(inner), perm_of(outer.producer(), rank(inner))
        r = [p[i] for i in q]
        if r == list(range(len(r))):
            return op.Identity(x)
        return op.Transpose(x, perm=r, _name=outer.producer().name)


class EliminateIdentityTranspose(Rule):
    name = "eliminate_identity_transpose"

    def pattern(self, op, x):
        return op.Transpose(x, _outputs=["out"])

    def check(self, context, x, out, **_) -> MatchResult:
        perm = perm_of(out.producer(), rank(x))
        if perm is None or perm != list(range(len(perm))):
            return fail("not the identity permutation")
        return MatchResult()

    def rewrite(self, op, x, out, **_):
        return op.Identity(x)


class _SinkUnary(Rule):
    name = "sink_transpose_through_elementwise"
    op_type: ClassVar[str]

    def pattern(self, op, x):
        t = op.Transpose(x, _outputs=["t"])
        return getattr(op, self.op_type)(t, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, t, out, **_) -> MatchResult:
        node = out.producer()
        if any(v is not None and (constant(v) is None or constant(v).size != 1) for v in node.inputs[1:]):
            return fail("other inputs are not scalar constants")
        if _transposed_perm(t) is None:
            return fail("rank unknown")
        if not _sinks_to_transpose(out):
            return fail("no Transpose below to cancel with")
        return MatchResult()

    def rewrite(self, op, x, t, out, **_):
        node = out.producer()
        y = op.op(node.op_type, x, *node.inputs[1:], _name=node.name, **dict(node.attributes))
        return op.Transpose(y, perm=_transposed_perm(t), _name=t.producer().name)


def _unary_rules() -> tuple[type[Rule], ...]:
    return tuple(type(f"SinkTransposeThrough{n}", (_SinkUnary,), {"op_type": n}) for n in UNARY_ELEMENTWISE)


class _SinkBinaryConstant(Rule):
    name = "sink_transpose_through_elementwise"
    op_type: ClassVar[str]
    transposed_first: ClassVar[bool]

    def pattern(self, op, x, c):
        t = op.Transpose(x, _outputs=["t"])
        a, b = (t, c) if self.transposed_first else (c, t)
        return getattr(op, self.op_type)(a, b, _outputs=["out"])

    def _constant_for_x(self, t, c) -> np.ndarray | None:
        array, perm, shape = constant(c), _transposed_perm(t), static_shape(t)
        if array is None or perm is None or shape is None or array.ndim > len(perm):
            return None
        try:
            if np.broadcast_shapes(shape, array.shape) != shape:
                return None
        except ValueError:
            return None
        padded = array.reshape((1,) * (len(perm) - array.ndim) + array.shape)
        return np.transpose(padded, inverse(perm))

    def check(self, context, x, c, t, out, **_) -> MatchResult:
        if self._constant_for_x(t, c) is None:
            return fail("operand is not a constant that keeps the shape")
        if not _sinks_to_transpose(out):
            return fail("no Transpose below to cancel with")
        return MatchResult()

    def rewrite(self, op, x, c, t, out, **_):
        node = out.producer()
        c2 = new_initializer(op, node.graph, f"{c.name or 'const'}.t", self._constant_for_x(t, c))
        a, b = (x, c2) if self.transposed_first else (c2, x)
        y = op.op(node.op_type, a, b, _name=node.name, **dict(node.attributes))
        return op.Transpose(y, perm=_transposed_perm(t), _name=t.producer().name)


class _SinkBinaryPair(Rule):
    name = "sink_transpose_through_elementwise"
    op_type: ClassVar[str]

    def pattern(self, op, x, y):
        a = op.Transpose(x, _outputs=["ta"])
        b = op.Transpose(y, _outputs=["tb"])
        return getattr(op, self.op_type)(a, b, _outputs=["out"])

    def check(self, context, x, y, ta, tb, out, **_) -> MatchResult:
        pa, pb = _transposed_perm(ta), _transposed_perm(tb)
        if pa is None or pa != pb:
            return fail("different or unknown perms")
        return MatchResult()

    def rewrite(self, op, x, y, ta, tb, out, **_):
        node = out.producer()
        z = op.op(node.op_type, x, y, _name=node.name, **dict(node.attributes))
        return op.Transpose(z, perm=_transposed_perm(ta), _name=ta.producer().name)


def _binary_rules() -> tuple[type[Rule], ...]:
    rules: list[type[Rule]] = []
    for n in BINARY_ELEMENTWISE:
        rules.append(type(f"SinkTransposeThrough{n}Const", (_SinkBinaryConstant,),
                          {"op_type": n, "transposed_first": True}))
        if n in _COMMUTATIVE or n in ("Sub", "Div", "Pow"):
            rules.append(type(f"SinkTransposeThroughConst{n}", (_SinkBinaryConstant,),
                              {"op_type": n, "transposed_first": False}))
        if n != "PRelu":
            rules.append(type(f"SinkTransposeThrough{n}Pair", (_SinkBinaryPair,), {"op_type": n}))
    return tuple(rules)


class SinkTransposeThroughConcat(Rule):
    name = "sink_transpose_through_concat"

    def pattern(self, op, x):
        return op.Concat(op.Transpose(x, _outputs=["t"]), _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, t, out, **_) -> MatchResult:
        perm = _transposed_perm(t)
        node = out.producer()
        for v in node.inputs:
            producer = v.producer() if v is not None else None
            if producer is None or producer.op_type != "Transpose":
                return fail("an input is not a Transpose")
            if not single_use(v) or _transposed_perm(v) != perm or perm is None:
                return fail("inputs' Transposes differ or feed other nodes")
        return MatchResult()

    def rewrite(self, op, x, t, out, **_):
        node = out.producer()
        perm = _transposed_perm(t)
        axis = attr(node, "axis") % len(perm)
        sources = [v.producer().inputs[0] for v in node.inputs]
        y = op.Concat(*sources, axis=perm[axis], _name=node.name)
        return op.Transpose(y, perm=perm, _name=t.producer().name)


class _SinkGlobalPool(Rule):
    name = "sink_transpose_through_global_pool"
    pool: ClassVar[str]
    reduce: ClassVar[str]

    def pattern(self, op, x):
        return getattr(op, self.pool)(op.Transpose(x, _outputs=["t"]), _outputs=["out"])

    def check(self, context, x, t, out, **_) -> MatchResult:
        perm = _transposed_perm(t)
        if perm is None or len(perm) < 3:
            return fail("rank unknown")
        if not _sinks_to_transpose(out):
            return fail("no Transpose below to cancel with")
        return MatchResult()

    def rewrite(self, op, x, t, out, **_):
        perm = _transposed_perm(t)
        axes = sorted(perm[2:])
        node = out.producer()
        if self.opset >= 18:
            axes_value = new_initializer(op, node.graph, f"{node.name or 'pool'}.axes",
                                         np.array(axes, np.int64))
            y = op.op(self.reduce, x, axes_value, keepdims=1, _name=node.name)
        else:
            y = op.op(self.reduce, x, axes=axes, keepdims=1, _name=node.name)
        return op.Transpose(y, perm=perm, _name=t.producer().name)


class SinkTransposeThroughGlobalAveragePool(_SinkGlobalPool):
    pool, reduce = "GlobalAveragePool", "ReduceMean"


class SinkTransposeThroughGlobalMaxPool(_SinkGlobalPool):
    pool, reduce = "GlobalMaxPool", "ReduceMax"


class SinkTransposeThroughResize(Rule):
    name = "sink_transpose_through_resize"
    min_opset = 13

    def pattern(self, op, x):
        return op.Resize(op.Transpose(x, _outputs=["t"]), _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, t, out, **_) -> MatchResult:
        node = out.producer()
        if _transposed_perm(t) is None:
            return fail("rank unknown")
        if attr(node, "axes") is not None:
            return fail("Resize has axes")
        for v in node.inputs[1:]:
            if v is not None and constant(v) is None:
                return fail("roi/scales/sizes are not constants")
        inv = inverse(_transposed_perm(t))
        shape = static_shape(t)
        scales = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        sizes = constant(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if scales is not None and scales.size:
            resized = [scales[inv[j]] != 1 for j in range(2)]
        elif sizes is not None and sizes.size and shape is not None:
            resized = [sizes[inv[j]] != shape[inv[j]] for j in range(2)]
        else:
            return fail("scales/sizes unknown")
        if any(resized):
            return fail("the Resize would resize axis 0 or 1 (importers resize axes 2.. only)")
        if not _sinks_to_transpose(out):
            return fail("no Transpose below to cancel with")
        return MatchResult()

    def rewrite(self, op, x, t, out, **_):
        node = out.producer()
        perm = _transposed_perm(t)
        inv = inverse(perm)
        inputs = [x]
        for i, v in enumerate(node.inputs[1:], start=1):
            array = constant(v) if v is not None else None
            if array is None or array.size == 0:
                inputs.append(v)
                continue
            if i == 1:  # roi: [starts..., ends...]
                r = len(perm)
                permuted = np.concatenate([array[:r][inv], array[r:][inv]])
            else:
                permuted = array[inv]
            inputs.append(new_initializer(op, node.graph, f"{v.name or 'resize'}.t", permuted))
        y = op.Resize(*inputs, _name=node.name, **dict(node.attributes))
        return op.Transpose(y, perm=perm, _name=t.producer().name)


#: composition and sinking
TRANSPOSE_RULES: tuple[type[Rule], ...] = (
    EliminateIdentityTranspose, FoldTransposePair, *_unary_rules(), *_binary_rules(),
    SinkTransposeThroughConcat, SinkTransposeThroughGlobalAveragePool, SinkTransposeThroughGlobalMaxPool,
    SinkTransposeThroughResize,
)


class OptimizeTransposesPass(RulePass):
    """Transpose pairs composed/cancelled, identity Transposes removed, Transposes sunk through
    elementwise ops, Concat, global pools and Resize to meet the next Transpose."""

    rules = TRANSPOSE_RULES
    anchor_ops = frozenset({"Transpose"})
    needs_shapes = True
