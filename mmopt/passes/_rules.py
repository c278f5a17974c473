"""Shared machinery of the rule passes: a :class:`Rule` base and a :class:`RulePass` that applies a family.

A rule is an onnxscript rewrite rule written as ``pattern`` (ONNX op calls), ``check`` (returns a
failed :class:`MatchResult` with the reason when a match must not be rewritten) and ``rewrite``. Rule
metadata lives on the class, not in branches inside ``rewrite``:

* ``name``: the action, ``fuse_`` / ``fold_`` / ``eliminate_`` / ``sink_`` ...; the report counts by it;
* ``min_opset`` / ``max_opset``: default-domain opsets the rule applies to;
* ``commute``: also match with the operands of commutative ops (Add, Mul) swapped.

A :class:`RulePass` applies its rules in order, one rule name over the whole graph at a time (the
variants that share a name form one onnxscript rule set), and repeats the round until no rule fires.
``counts`` says how often each rule fired; ``modified`` is true exactly when some rule fired. Rules never return an existing value as their result (the rewriter would rename
it, and a graph input must keep its name): a rule that removes a node returns ``Identity(x)``, and the
pass removes those Identity nodes at the end (:mod:`mmopt.passes.eliminate_identity`: keeping the ones
that pass a graph input, or a value of an enclosing scope, straight to a graph output).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as ir_common
from onnxscript.rewriter import MatchResult, RewriteRule, RewriteRuleClassBase, RewriteRuleSet

from mmopt.passes.eliminate_identity import EliminateIdentityPass

logger = logging.getLogger(__name__)


class Rule(RewriteRuleClassBase):
    """A rewrite rule with its metadata; subclasses define ``pattern``, ``check`` and ``rewrite``."""

    name: ClassVar[str]
    min_opset: ClassVar[int] = 1
    max_opset: ClassVar[int | None] = None
    commute: ClassVar[bool] = False

    def __init__(self, opset: int):
        super().__init__(name=type(self).name)
        #: default-domain opset of the model being rewritten (rules that emit different ops per
        #: opset read it; applicability itself is decided by min_opset/max_opset)
        self.opset = opset

    @classmethod
    def applies_to(cls, opset: int) -> bool:
        return cls.min_opset <= opset and (cls.max_opset is None or opset <= cls.max_opset)

    def check(self, context, **_) -> MatchResult:  # noqa: D102 - overridden by most rules
        return MatchResult()

    def to_rewrite_rules(self) -> list[RewriteRule]:
        rule = RewriteRule(self.pattern, self.rewrite, self.check, name=self.name)
        return list(rule.commute()) if self.commute else [rule]


class RulePass(ir.passes.InPlacePass):
    """Apply ``rules`` (a family) to a fixpoint; ``counts[rule name]`` = times fired."""

    rules: ClassVar[Sequence[type[Rule]]] = ()
    #: run ONNX shape inference first (rules that compare shapes need them on every value)
    needs_shapes: ClassVar[bool] = False
    #: op types one of which every rule's pattern contains; a graph without any is skipped (no work)
    anchor_ops: ClassVar[frozenset[str] | None] = None
    max_rounds: ClassVar[int] = 10

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.anchor_ops is not None and not any(
                n.op_type in self.anchor_ops for n in ir.traversal.RecursiveGraphIterator(model.graph)):
            return ir.passes.PassResult(model, modified=False)
        opset = default_opset(model)
        grouped: dict[str, list[RewriteRule]] = {}
        for cls in self.rules:
            if cls.applies_to(opset):
                grouped.setdefault(cls.name, []).extend(cls(opset).to_rewrite_rules())
        rule_sets = [(name, RewriteRuleSet(rules)) for name, rules in grouped.items()]
        for _ in range(self.max_rounds):
            if self.needs_shapes:
                infer_shapes(model)
            fired = 0
            for name, rule_set in rule_sets:
                n = rule_set.apply_to_model(model)
                if n:
                    self.counts[name] += n
                    fired += n
            if not fired:
                break
        else:
            logger.warning("%s: rules still firing after %d rounds", type(self).__name__, self.max_rounds)
        total = sum(self.counts.values())
        if total:
            EliminateIdentityPass()(model)
            ir_common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=total > 0)


# --------------------------------------------------------------------------------------------------
# helpers for checks and rewrites


def default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def infer_shapes(model: ir.Model) -> None:
    """Annotate values with ONNX-inferred shapes/types (annotations only: not a modification)."""
    ir_common.ShapeInferencePass(strict_mode=False)(model)


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant node), or None.

    Initializers that are also graph inputs can be overridden at run time: not constants.
    """
    if value is None or value.is_graph_input():
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is None or producer.op_type != "Constant" or producer.domain not in ("", "ai.onnx"):
            return None
        attr = producer.attributes.get("value")
        if attr is None or attr.type != ir.AttributeType.TENSOR:
            return None
        tensor = attr.as_tensor()
    return tensor.numpy()


def scalar(value: ir.Value | None) -> float | None:
    """A constant holding a single element, as a Python float; None otherwise."""
    array = constant(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


def is_scalar(value: ir.Value | None, expected: float, rtol: float = 1e-4) -> bool:
    got = scalar(value)
    return got is not None and bool(np.isclose(got, expected, rtol=rtol, atol=0.0))


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape when every dim is a known integer."""
    if value is None or value.shape is None:
        return None
    dims = value.shape.dims
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return tuple(dims)


def rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def attr(node: ir.Node, name: str, default=None):
    """A node attribute's Python value (ints, floats, lists, strings), or ``default``."""
    a = node.attributes.get(name)
    return default if a is None else a.value


def fail(reason: str) -> MatchResult:
    return MatchResult().fail(reason)


def single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def new_initializer(op, graph: ir.Graph | None, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer named after ``base``, not clashing with the graph's initializers."""
    base = base or "const"
    name, i = base, 1
    taken = graph.initializers if graph is not None else {}
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return op.initializer(ir.tensor(np.ascontiguousarray(array)), name=name)


def channel_vector(array: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """``array`` as a per-channel vector [C] if it broadcasts against an [N, C, ...] tensor of rank
    ``out_rank`` along axis 1 only (a scalar gives C copies); None otherwise."""
    if array.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - array.ndim) + array.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)).copy()
