"""collapse_reshapes: chains of Reshape / Flatten / Squeeze / Unsqueeze become one Reshape, or nothing.

These four ops only reinterpret the shape of a row-major buffer; none moves data. Composing any two
gives another pure reinterpretation, determined by the final shape alone:

    S2(S1(x)) = Reshape(x, shape(S2(S1(x))))

and a reinterpretation to the shape the tensor already has is the identity:

    S(x) = x   when shape(S(x)) = shape(x).

Both need the final shape to be static (known integers, none 0: a 0 in a Reshape target means "copy
this dim"); the pass runs shape inference first. The inner node of a chain must feed only the outer one
(otherwise it stays and nothing is gained).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult
from onnxscript.rewriter.pattern import OrValue

from mmopt.passes._rules import Rule, RulePass, fail, new_initializer, static_shape

SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _shape_op(op, name: str, x, outputs: list[str] | None = None):
    kwargs = {"_outputs": outputs} if outputs else {}
    if name == "Flatten":
        return op.Flatten(x, **kwargs)
    return getattr(op, name)(x, _allow_other_inputs=True, **kwargs)


class _CollapseChain(Rule):
    """outer(inner(x)) for outer, inner among the four reinterpreting ops."""

    name = "collapse_reshape_chain"
    outer: ClassVar[str]

    def pattern(self, op, x):
        inner = OrValue([_shape_op(op, n, x) for n in SHAPE_OPS])
        return _shape_op(op, self.outer, inner, ["out"])

    def check(self, context, x, out, **_) -> MatchResult:
        shape = static_shape(out)
        if shape is None or 0 in shape:
            return fail("result shape is not static")
        return MatchResult()

    def rewrite(self, op, x, out, **_):
        shape = static_shape(out)
        if shape == static_shape(x):
            return op.Identity(x)
        node = out.producer()
        target = new_initializer(op, node.graph, f"{node.name or 'reshape'}.shape",
                                 np.array(shape, np.int64))
        return op.Reshape(x, target, _name=node.name)


def _chain_rules() -> tuple[type[Rule], ...]:
    return tuple(type(f"Collapse{n}Chain", (_CollapseChain,), {"outer": n}) for n in SHAPE_OPS)


class _EliminateNoopReshape(Rule):
    """A single reinterpreting op whose output shape equals its input shape."""

    name = "eliminate_noop_reshape"
    op_name: ClassVar[str]

    def pattern(self, op, x):
        return _shape_op(op, self.op_name, x, ["out"])

    def check(self, context, x, out, **_) -> MatchResult:
        shape = static_shape(out)
        if shape is None or shape != static_shape(x):
            return fail("shape changes or is unknown")
        return MatchResult()

    def rewrite(self, op, x, out, **_):
        return op.Identity(x)


def _noop_rules() -> tuple[type[Rule], ...]:
    return tuple(type(f"EliminateNoop{n}", (_EliminateNoopReshape,), {"op_name": n}) for n in SHAPE_OPS)


class CollapseReshapesPass(RulePass):
    """Reshape/Flatten/Squeeze/Unsqueeze chains collapsed into one Reshape; no-op ones removed."""

    rules = (*_noop_rules(), *_chain_rules())
    anchor_ops = frozenset(SHAPE_OPS)
    needs_shapes = True
