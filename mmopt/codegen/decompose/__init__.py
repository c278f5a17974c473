"""Import-time decompositions: rewrite what TVM's Relax ONNX importer cannot convert into what it can.

Runs right before the import (:func:`mmopt.codegen.relax_import.to_relax`), after the graph passes,
on the final ONNX model. Each round, top to bottom:

1. ``fold_constants`` (:mod:`.fold_constants`): shape inference, then constant folding with
   onnxscript's folder: ``Shape``/``Size`` of static tensors become constants, shape-computing
   subgraphs collapse, ``If`` with a constant condition is replaced by the taken branch. The importer
   needs these constant (axes, shapes, pads, ...). Runs first so rules see constants and shapes;
2. the rule families, in this order (:data:`FAMILIES`); a rule rewrites a node only when TVM cannot
   convert it (or the rule is marked ``always``) and its ``check`` passes:

   * :mod:`.expand_functions`: operators ONNX defines as functions (losses, Attention, ...)
     become their function body (the specification's own definition);
   * :mod:`.decompose_rnn`: RNN / GRU / LSTM unrolled over their static sequence length;
   * :mod:`.decompose_integer_ops`: ConvInteger, QLinearConv, QLinearMatMul computed exactly in
     int32 (or float64 where TVM has no integer kernel), with ONNX's rounding;
   * :mod:`.unroll_loops`: Scan with a static length and Loop with a constant trip count unrolled;
   * :mod:`.decompose_training_mode`: BatchNormalization / Dropout with a constant
     ``training_mode``;
   * :mod:`.decompose_resize`: Resize features TVM lacks (antialias, axes, aspect-ratio policies,
     exact scales) as per-axis interpolation matrices;
   * :mod:`.decompose_tfidf`: TfIdfVectorizer over integer tokens as comparisons and sums;
   * :mod:`.decompose_deform_conv`: 2-D DeformConv as bilinear sampling and a matrix product;
   * :mod:`.decompose_tree_ensemble`: ai.onnx.ml TreeEnsemble as path indicators and a MatMul;
   * :mod:`.decompose_misc`: small operators with a direct expression in others.

   Before them, :mod:`.fold_constants`' own rule rewrites ``Constant`` nodes into the one form
   TVM reads.

   Function expansion goes first: a function body may contain ops the later families handle
   (LinearAttention's body has a Scan).

Every rule is registered through the public extension API (:func:`mmopt.extend.register`, as
mmopt's com.microsoft ops in :mod:`mmopt.ops.microsoft` and plugins are); a round asks the registry
which rules to try on each node (plugins' first, then these families in order, see
:mod:`mmopt.extend._registry`). Kernel-level extensions rewrite their node into a
``mmopt.kernel`` node that the importer converts with the extension's code
(:mod:`mmopt.extend.kernels`).

Rounds repeat until nothing changes (an expansion can expose a foldable shape computation, a fold
can make a Loop's trip count constant). Whatever is still unsupported afterwards is reported by
:func:`mmopt.codegen.relax_import.check_supported`, with the reason each rule gave for not applying.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from mmopt import extend
from mmopt import ir as mir
from mmopt.codegen.decompose import (
    decompose_deform_conv,
    decompose_integer_ops,
    decompose_misc,
    decompose_resize,
    decompose_rnn,
    decompose_tfidf,
    decompose_training_mode,
    decompose_tree_ensemble,
    expand_functions,
    fold_constants,
    unroll_loops,
)
from mmopt.errors import MmoptError, summarize
from mmopt.extend._registry import BUILTIN, Extension
from mmopt.extend.plugins import PluginError
from mmopt.extend.rules import DEFAULT_DOMAINS, Context, Decomposition, Tape

logger = logging.getLogger(__name__)

#: the rule families, in the order a round applies them (see the module docstring)
FAMILIES: tuple[tuple[Decomposition, ...], ...] = (
    fold_constants.RULES,
    expand_functions.RULES,
    decompose_rnn.RULES,
    decompose_integer_ops.RULES,
    unroll_loops.RULES,
    decompose_training_mode.RULES,
    decompose_resize.RULES,
    decompose_tfidf.RULES,
    decompose_deform_conv.RULES,
    decompose_tree_ensemble.RULES,
    decompose_misc.RULES,
)
MAX_ROUNDS = 8

for _family in FAMILIES:
    for _rule in _family:
        extend.register(_rule, source=BUILTIN)
del _family, _rule


def _label(node: ir.Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs and node.outputs[0] is not None
                         else node.op_type)


def _op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


@dataclass
class Handled:
    """A node an extension (or one of mmopt's own rules) rewrote."""

    node: str
    op: str
    rule: str
    #: "mmopt" or the plugin's name
    source: str
    #: "decomposition", "function" or "kernel"
    kind: str


@dataclass
class Rejection:
    node: str
    op: str
    rule: str
    reason: str
    #: name of the node's first output (how unnamed nodes are identified)
    output: str = ""


class DecomposePass(ir.passes.InPlacePass):
    """Fold and decompose until TVM can import every node (or no rule applies any more).

    ``counts[rule name]`` = nodes rewritten by that rule; ``rewritten[op]`` = rule names that
    rewrote nodes of that op type; ``handled`` = per node of the input model, the rule (and its
    source) that rewrote it; ``rejections`` = for nodes still unsupported, each rule that matched
    them and why it did not apply. ``only`` limits the rewrites to the nodes it accepts, ``kinds``
    to rules of those kinds (the reference evaluator decomposes plugin ops that way).
    """

    def __init__(self, supported: frozenset[str], *, fold: bool = True, only=None,
                 kinds: tuple[str, ...] | None = None):
        super().__init__()
        self.supported = supported
        self.fold = fold
        self.only = only
        self.kinds = kinds
        self.counts: Counter[str] = Counter()
        self.rewritten: dict[str, set[str]] = {}
        self.handled: list[Handled] = []
        self.rejections: list[Rejection] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        registry = extend.registry()
        if "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
            # rewrites emit default-domain ops; a model of ml-domain ops only may not import it
            model.opset_imports[""] = mir.MIN_OPSET
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        ctx = Context(opset=opset, supported=self.supported, model=model)
        # the model's own nodes (kept alive: ids of removed nodes could be reused)
        original = {id(n): n for n in ir.traversal.RecursiveGraphIterator(model.graph)}
        modified = False
        for _round in range(MAX_ROUNDS):
            changed = fold_constants.fold(model) if self.fold else False
            ctx.used_names = _names(model)
            self.rejections = []
            rewrote = self._rewrite_round(model, ctx, registry, original)
            if rewrote:
                expand_functions.inline_expansions(model)
            changed |= rewrote
            modified |= changed
            if not changed:
                break
        return ir.passes.PassResult(model, modified=modified)

    def _rewrite_round(self, model: ir.Model, ctx: Context, registry, original: dict) -> bool:
        changed = False
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.graph is None:  # removed by an earlier rewrite of this round
                continue
            if self.only is not None and not self.only(node):
                continue
            version = (ctx.opset if node.domain in DEFAULT_DOMAINS
                       else model.opset_imports.get(node.domain, 1))
            rejected: list[tuple[Decomposition, str]] = []
            for entry in registry.candidates(node, version):
                rule = entry.rule
                if self.kinds is not None and rule.kind not in self.kinds:
                    continue
                if not rule.wanted(node, ctx):
                    continue
                why = _guarded(entry, "check", node, lambda: rule.check(node, ctx))
                if why is not None:
                    rejected.append((rule, why))
                    continue
                label = _label(node)
                _guarded(entry, "rewrite", node, lambda: _replace(node, rule, ctx))
                self.counts[rule.name] += 1
                self.rewritten.setdefault(_op_key(node), set()).add(rule.name)
                if original.get(id(node)) is node:
                    self.handled.append(Handled(label, _op_key(node), rule.name, entry.source,
                                                rule.kind))
                changed = True
                break
            else:
                # a rule written for this op says more than a generic one (function expansion)
                specific = [r for r in rejected if not r[0].generic] or rejected
                first = node.outputs[0].name if node.outputs and node.outputs[0] else ""
                self.rejections.extend(Rejection(_label(node), _op_key(node), rule.name, why,
                                                 first or "") for rule, why in specific)
        return changed


def _guarded(entry: Extension, step: str, node: ir.Node, call):
    """``call()``; an exception in a plugin's rule becomes a :class:`PluginError` naming it."""
    if entry.source == BUILTIN:
        return call()
    try:
        return call()
    except MmoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - third-party code
        raise PluginError(f"{entry.source}: rule {entry.rule.name} failed to {step} node "
                          f"{_label(node)} ({_op_key(node)}): {type(exc).__name__}: "
                          f"{summarize(exc)}") from exc


def _names(model: ir.Model) -> set[str]:
    names = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.name:
            names.add(node.name)
        names.update(v.name for v in node.outputs if v is not None and v.name)
    names.update(v.name for v in model.graph.inputs if v.name)
    names.update(model.graph.initializers)
    return names


def _replace(node: ir.Node, rule: Decomposition, ctx: Context) -> None:
    """Swap ``node`` for the nodes ``rule`` builds; the new values take the old outputs' names."""
    graph = node.graph
    tape = Tape()  # unowned nodes: replace_nodes_and_values inserts them in place
    new_outputs = list(rule.rewrite(node, tape, ctx))
    old_values, replacements = [], []
    for old, new in zip(node.outputs, new_outputs + [None] * (len(node.outputs) - len(new_outputs))):
        if old is None or not (old.uses() or old.is_graph_output()):
            continue
        if new is None:
            raise RuntimeError(f"{rule.name} did not compute output {old.name} of {node.name}")
        # A graph input or output, an initializer, or a value already standing in for another
        # output keeps its own name: it goes through an Identity that takes the old one.
        if (new.is_graph_input() or new.is_graph_output() or new in replacements
                or (new.const_value is not None and new.producer() is None)):
            new = tape.op("Identity", [new])
        old_values.append(old)
        replacements.append(new)
    base = ctx.fresh(node.name or node.op_type)
    for i, new in enumerate(tape.nodes):
        if not new.name:
            new.name = f"{base}/{new.op_type}_{i}"
        for out in new.outputs:
            if out is not None and not out.name:
                out.name = ctx.fresh(f"{base}/{new.op_type}_{i}")
    ir.convenience.replace_nodes_and_values(graph, node, [node], list(tape.nodes), old_values,
                                            replacements)


@dataclass
class DecomposeReport:
    counts: dict[str, int] = field(default_factory=dict)
    rewritten: dict[str, list[str]] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    handled: list[Handled] = field(default_factory=list)


def decompose(model: onnx.ModelProto, supported: frozenset[str]
              ) -> tuple[onnx.ModelProto, DecomposeReport]:
    """Run :class:`DecomposePass` on a ``ModelProto``; returns the new model and what happened."""
    work = ir.serde.deserialize_model(model)
    pass_ = DecomposePass(supported)
    result = pass_(work)
    report = DecomposeReport(dict(pass_.counts),
                             {k: sorted(v) for k, v in pass_.rewritten.items()},
                             pass_.rejections, pass_.handled)
    if not result.modified:
        return model, report
    ir.passes.common.RemoveUnusedNodesPass()(result.model)
    ir.passes.common.RemoveUnusedFunctionsPass()(result.model)
    return ir.serde.serialize_model(result.model), report


__all__ = ["FAMILIES", "DecomposePass", "DecomposeReport", "Handled", "Rejection", "decompose"]
