"""ONNX -> TVM Relax import, with an up-front support check.

TVM's importer stops at the first operator it cannot convert. mmopt first rewrites what it can into
operators TVM converts (:mod:`mmopt.codegen.decompose`: constant folding, ONNX function bodies,
unrolled recurrences and loops, exact integer arithmetic), then checks the whole graph so the user
sees every node still unsupported at once, each with its name and the reason no decomposition
applied.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx

from mmopt import ir as mir
from mmopt.errors import MmoptError, UnsupportedModelError, summarize
from mmopt.codegen.symbolic_dims import symbolic_vars, with_block_argument, with_dim_bounds
from mmopt.frontends._native import release_native_objects

logger = logging.getLogger(__name__)


@functools.cache
def supported_ops() -> frozenset[str]:
    """Op types (default ONNX domain and Microsoft contrib ops TVM knows) the Relax importer converts."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from mmopt.codegen.decompose.converters import ADDED_OPS

    # "If" is converted by the importer itself (to relax.If), not through the converter table;
    # ADDED_OPS are converters mmopt installs for the import (decompose/converters.py)
    table = onnx_frontend._get_convert_map()  # noqa: SLF001 - no public accessor
    return frozenset(table) | {"If"} | ADDED_OPS


_KNOWN_DOMAINS = ("", "ai.onnx", "com.microsoft", "mmopt")


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``[(node_name, op_type), ...]`` of every node (subgraphs included) TVM cannot import.

    Nodes written by an extension's kernel rule (domain ``mmopt.kernel``) are supported when the
    kernel is registered (:mod:`mmopt.extend.kernels`)."""
    from mmopt.extend import KERNEL_DOMAIN, default_registry

    ops = supported_ops()
    kernels = default_registry().kernels()
    bad: list[tuple[str, str]] = []

    def walk(graph: onnx.GraphProto) -> None:
        for i, node in enumerate(graph.node):
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            if node.domain == KERNEL_DOMAIN:
                if node.op_type not in kernels:
                    bad.append((node.name or f"#{i} ({node.output[0] if node.output else '?'})", op))
            elif node.domain not in _KNOWN_DOMAINS or node.op_type not in ops:
                bad.append((node.name or f"#{i} ({node.output[0] if node.output else '?'})", op))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g)

    walk(model.graph)
    return bad


def check_supported(model: onnx.ModelProto, where: str = "model", reasons=()) -> None:
    """Raise :class:`UnsupportedModelError` naming every node TVM cannot import.

    ``reasons``: :class:`mmopt.codegen.decompose.Rejection` records; a node listed there is shown with
    why its decomposition did not apply (e.g. a Loop whose trip count is not a constant).
    """
    bad = unsupported_nodes(model)
    if bad:
        why: dict[str, str] = {}
        for r in reasons:
            why.setdefault(r.node, r.reason)
            if r.output:
                why.setdefault(f"output:{r.output}", r.reason)

        def describe(name: str, op: str) -> str:
            # unnamed nodes are listed as "#i (first output)"
            key = name if not name.startswith("#") else f"output:{name.partition('(')[2][:-1]}"
            reason = why.get(key) or why.get(name)
            return f"{name} ({op}: {reason})" if reason else f"{name} ({op})"

        listed = ", ".join(describe(name, op) for name, op in bad[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        kinds = sorted({op for _, op in bad})
        raise UnsupportedModelError(
            f"{where}: {len(bad)} node(s) use operators the compiler does not support "
            f"[{', '.join(kinds)}]: {listed}{more}"
        )


def decompose_for_import(model: onnx.ModelProto):
    """The model as the importer will see it: :func:`mmopt.codegen.decompose.decompose` applied.

    Returns ``(model, DecomposeReport)``.
    """
    from mmopt import extend
    from mmopt.codegen.decompose import decompose

    extend.registry()  # mmopt's rules and the installed plugins: a broken plugin fails here
    try:
        return decompose(model, supported_ops())
    except MmoptError:  # a plugin that failed (named in the message), a user-facing error
        raise
    except Exception as exc:  # noqa: BLE001 - a rewrite bug must not hide the model's real problem
        logger.warning("import-time decomposition failed (%s); importing the model as it is",
                       summarize(exc))
        logger.debug("decomposition failure", exc_info=True)
        from mmopt.codegen.decompose import DecomposeReport

        return model, DecomposeReport()


def to_relax(model: onnx.ModelProto, where: str = "model", dims=None):
    """Import an ONNX model into a Relax ``IRModule`` with weights bound as constants.

    Input shapes are static, except the symbolic dims ``dims`` (``{name: DimRange}``,
    :mod:`mmopt.ir.dims`) gives ranges for: each becomes one ``int64`` symbolic variable of
    ``main`` (shared by every input axis of that name), with its range recorded as the function's
    ``tir_var_lower_bound``/``tir_var_upper_bound`` (memory planning allocates for the maximum
    once instead of per call). The model is first decomposed (:func:`decompose_for_import`) into
    operators TVM converts.
    """
    from tvm.relax.frontend.onnx import from_onnx

    from mmopt.codegen.import_legalize import importer_overrides, legalize_for_import

    model, report = decompose_for_import(model)
    if report.counts:
        logger.info("import-time decompositions: %s", report.counts)
    check_supported(model, where, report.rejections)
    model = legalize_for_import(model)
    specs = mir.input_specs(model)
    variables = symbolic_vars(dims or {})
    shape_dict = {name: [variables[d] if isinstance(d, str) else d for d in shape]
                  for name, (shape, _) in specs.items()}
    missing = sorted({d for shape, _ in specs.values() for d in shape
                      if isinstance(d, str) and d not in variables}
                     | {"?" for shape, _ in specs.values() for d in shape if d is None})
    if missing:
        raise UnsupportedModelError(f"{where}: input dims {', '.join(missing)} are symbolic but "
                                    "have no range (--dim NAME=MIN..MAX)")
    dtype_dict = {name: str(dtype) for name, (_, dtype) in specs.items()}
    printed = io.StringIO()  # on a failure the importer prints the node's inputs (a Relax dump)
    try:
        with importer_overrides(), contextlib.redirect_stdout(printed):
            mod = from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict,
                            opset=mir.opset_of(model), keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001 - the importer raises anything from Python or C++
        if printed.getvalue().strip():
            logger.debug("TVM's ONNX importer printed: %s", printed.getvalue().strip())
        release_native_objects(exc)  # its BlockBuilder, which warns from C++ when destroyed
        raise UnsupportedModelError(f"{where}: TVM's ONNX importer failed: {summarize(exc)}") from exc
    sys.stdout.write(printed.getvalue())
    if dims:
        mod = with_dim_bounds(with_block_argument(mod, variables, dims), dims)
    return mod


# --------------------------------------------------------------------------------------------------
# what a model needs: ``mmopt inspect --support``


@dataclass
class OpSupport:
    """How one op type of a model gets compiled."""

    op: str
    count: int
    #: "native" (TVM converts it), "decomposed" (rewritten into native ops), "kernel" (compiled
    #: by an extension's kernel), "folded" (evaluated at compile time), "unsupported", or "partly"
    #: (some nodes decomposed or native, others not)
    status: str
    #: the rules that rewrote it (with the nodes each handled), or why nodes stay unsupported
    detail: str = ""
    #: who provides the rules: "mmopt" (built in) and/or the plugins' names
    extension: str = ""


@dataclass
class SupportReport:
    target: str
    ops: list[OpSupport] = field(default_factory=list)
    #: when every op is supported but TVM's importer still fails on the model, its message
    import_error: str | None = None
    #: each node of the model a rule rewrote: node, op, rule, source (extension), kind
    nodes: list[dict] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        return self.import_error is None and all(
            o.status in ("native", "decomposed", "kernel", "folded") for o in self.ops)

    def to_dict(self) -> dict:
        return {"target": self.target, "supported": self.supported,
                "import_error": self.import_error, "ops": [asdict(o) for o in self.ops],
                "nodes": self.nodes}


def _handled_detail(handled) -> str:
    """``rule (source): node, node, ...`` per rule that rewrote nodes of one op."""
    groups: dict[tuple[str, str], list[str]] = {}
    for h in handled:
        groups.setdefault((h.rule, h.source), []).append(h.node)
    parts = []
    for (rule, source), nodes in groups.items():
        shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        parts.append(f"{rule} ({source}): {shown}")
    return "; ".join(parts)


def _op_counts(model: onnx.ModelProto) -> Counter:
    counts: Counter = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type if node.domain in ("", "ai.onnx")
                   else f"{node.domain}::{node.op_type}"] += 1
            for attr in node.attribute:
                for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                          attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else []):
                    walk(g)

    walk(model.graph)
    return counts


def support_report(model: onnx.ModelProto, target: str = "x86", *, try_import: bool = True
                   ) -> SupportReport:
    """Each op type of ``model`` and whether (and how) it compiles for ``target``.

    The model should have static input shapes (decompositions such as unrolling an LSTM need its
    sequence length). Runs the import-time decompositions and, when every op is supported,
    TVM's import (``try_import``), which catches converter failures on particular attributes or
    non-constant operands. Code generation is not run (``mmopt compile`` does that); the Relax
    import is the same for every target, so ``target`` is validated and recorded.
    """
    from mmopt import targets

    tgt = targets.get(target)
    before = _op_counts(model)
    decomposed, report = decompose_for_import(model)
    after = _op_counts(decomposed)
    remaining: dict[str, list[str]] = {}
    for name, op in unsupported_nodes(decomposed):
        remaining.setdefault(op, []).append(name)
    reasons: dict[str, str] = {}
    for r in report.rejections:
        reasons.setdefault(r.node, r.reason)
        if r.output:
            reasons.setdefault(f"#output:{r.output}", r.reason)

    def why(name: str) -> str:
        key = name if not name.startswith("#") else f"#output:{name.partition('(')[2][:-1]}"
        return f"{name}: {reasons[key]}" if key in reasons else name

    result = SupportReport(tgt.name, nodes=[asdict(h) for h in report.handled])
    handled: dict[str, list] = {}
    for h in report.handled:
        handled.setdefault(h.op, []).append(h)
    for op, count in sorted(before.items(), key=lambda kv: (-kv[1], kv[0])):
        rules = report.rewritten.get(op, [])
        by = handled.get(op, [])
        extension = ", ".join(dict.fromkeys(h.source for h in by))
        left = remaining.get(op, [])
        if left:
            status = "partly" if rules or len(left) < count else "unsupported"
            detail = "; ".join(why(n) for n in left[:5]) + (f"; {len(left) - 5} more"
                                                             if len(left) > 5 else "")
            if rules:
                detail = f"{', '.join(rules)} for the others; unsupported: {detail}"
        elif rules:
            status = "kernel" if by and all(h.kind == "kernel" for h in by) else "decomposed"
            detail = _handled_detail(by) if by else ", ".join(rules)
        elif after.get(op, 0) == 0:
            status, detail = "folded", "computed at compile time (static shapes)"
        else:
            status, detail = "native", ""
        result.ops.append(OpSupport(op, count, status, detail, extension))
    if try_import and not remaining:
        try:
            to_relax(model)
        except UnsupportedModelError as exc:
            result.import_error = exc.message
    return result
