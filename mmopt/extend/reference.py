"""Running a model for reference outputs when onnxruntime cannot run all of its ops.

Verification compares a compiled artifact with onnxruntime on the source model. A model with ops
of a plugin's own domain does not load in onnxruntime; :func:`run_reference` then runs it with
onnx's reference evaluator, where

* an op with a registered numpy reference (``reference=`` of :func:`mmopt.extend.register` and
  the decorators, or :func:`mmopt.extend.register_reference`) runs that;
* an op without one, but with a decomposition or function body, is first replaced by it (the
  decomposition is its definition);
* a kernel-only op without a reference cannot be verified: a one-line error says so.

Models onnxruntime can run (com.microsoft ops included) run there, as before. The outputs say which
engine computed them (:attr:`ReferenceOutputs.engine`): reports name it instead of assuming
onnxruntime.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from mmopt.errors import MmoptError, summarize

logger = logging.getLogger(__name__)

#: domains onnxruntime implements (ops of any other domain need a reference)
ONNXRUNTIME_DOMAINS = frozenset({
    "", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
    "com.microsoft.experimental", "ai.onnx.preview.training", "ai.onnx.training",
    "org.pytorch.aten"})


#: the engine name of outputs onnxruntime computed from the model as given
ONNXRUNTIME = "onnxruntime"


class ReferenceOutputs(dict):
    """Output arrays by name, plus ``engine``: what computed them, in words (``"onnxruntime"``,
    ``"onnxruntime (acme.ops::Swish through its extension's decomposition)"``, ``"onnx's reference
    evaluator with numpy references of acme.ops::RMSNorm"``)."""

    def __init__(self, values, engine: str = ONNXRUNTIME):
        super().__init__(values)
        self.engine = engine


def _names(ops) -> str:
    return ", ".join(f"{d}::{o}" for d, o in sorted(ops))


def _foreign_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    local = {(f.domain, f.name) for f in model.functions}
    found = []

    def walk(graph):
        for node in graph.node:
            if node.domain not in ONNXRUNTIME_DOMAINS and (node.domain, node.op_type) not in local:
                found.append(node)
            for a in node.attribute:
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    walk(g)

    walk(model.graph)
    return found


def _opset(model: onnx.ModelProto, domain: str) -> int:
    return next((o.version for o in model.opset_import if o.domain == domain), 1)


def run_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *,
                  label: str = "onnxruntime reference") -> ReferenceOutputs:
    """The model's outputs on ``feeds``: onnxruntime when it runs every op, else onnx's reference
    evaluator with the extensions' references (see the module docstring)."""
    from mmopt.runtime.verify import run_onnxruntime

    foreign = _foreign_nodes(model)
    if not foreign:
        return ReferenceOutputs(run_onnxruntime(model, feeds, label=label))
    from mmopt.extend._registry import registry

    reg = registry()

    def references_of(nodes):
        ops = {(n.domain, n.op_type) for n in nodes}
        return {op: reg.reference(op[0], op[1], _opset(model, op[0])) for op in ops}

    references = references_of(foreign)
    missing = {op for op, fn in references.items() if fn is None}
    decomposed = ""
    if missing:
        model = _decompose(model, missing)
        references = references_of(_foreign_nodes(model))
        left = sorted(op for op, fn in references.items() if fn is None)
        if left:
            names = _names(left)
            raise MmoptError(f"{label}: no reference implementation for {names} (onnxruntime "
                             "cannot run it and its extension registers no reference= or "
                             "decomposition); compile with --no-verify")
        whose = "its extension's decomposition" if len(missing) == 1 else \
            "their extensions' decompositions"
        decomposed = f"{_names(missing)} through {whose}"
        if not references:  # every foreign op decomposed into ops onnxruntime has
            return ReferenceOutputs(run_onnxruntime(model, feeds, label=label),
                                    f"{ONNXRUNTIME} ({decomposed})")
    ops = set(references)
    from onnx.reference import ReferenceEvaluator

    new_ops = [_op_run(domain, op_type, references[(domain, op_type)])
               for domain, op_type in sorted(ops)]
    logger.info("%s: onnxruntime cannot run %s; using onnx's reference evaluator with the "
                "extensions' references", label, _names(ops))
    try:
        evaluator = ReferenceEvaluator(model, new_ops=new_ops)
        names = [o.name for o in model.graph.output]
        values = evaluator.run(None, dict(feeds))
    except Exception as exc:  # noqa: BLE001 - the evaluator and the references raise anything
        raise MmoptError(f"{label}: the reference evaluator failed ({summarize(exc)})") from exc
    engine = f"onnx's reference evaluator with numpy references of {_names(ops)}"
    return ReferenceOutputs(zip(names, (np.asarray(v) for v in values)),
                            engine + (f"; {decomposed}" if decomposed else ""))


def _decompose(model: onnx.ModelProto, ops: set[tuple[str, str]]) -> onnx.ModelProto:
    """``model`` with the nodes of ``ops`` replaced by their extensions' decompositions only."""
    from mmopt.codegen.decompose import DecomposePass
    from mmopt.codegen.relax_import import supported_ops

    work = ir.serde.deserialize_model(model)
    DecomposePass(supported_ops(), fold=False, kinds=("decomposition", "function"),
                  only=lambda node: (node.domain, node.op_type) in ops)(work)
    return ir.serde.serialize_model(work)


def _op_run(domain: str, op_type: str, fn):
    from onnx.reference.op_run import OpRun

    def _run(self, *inputs, **attributes):
        # only the node's own attributes: onnx adds the defaults of a same-named ONNX op's schema
        given = {a.name for a in self.onnx_node.attribute}
        result = fn(*inputs, **{k: v for k, v in attributes.items() if k in given})
        return tuple(result) if isinstance(result, (tuple, list)) else (result,)

    return type(op_type, (OpRun,), {"op_domain": domain, "_run": _run})
