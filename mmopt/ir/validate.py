"""The front door: every model mmopt loads is checked here before any verb works on it.

    validate(model, "model.onnx")          # raises ModelLoadError with one line, or returns

In order, cheapest first; the first problem found is the error:

1. text: every name (graphs, nodes, values, op types, domains, attributes) is valid UTF-8. A
   flipped byte in a name parses fine, and later fails far from its cause;
2. well-formedness of the main graph and every subgraph, in Python with node names: at least one
   output; each node reads only values defined before it (graph inputs, initializers, earlier
   nodes, enclosing scopes); no value is written twice; each graph output is defined;
3. ``onnx.checker`` (attribute types, unknown attributes, opset imports, tensor data); an op of
   ONNX's own domain it has no schema for is left to onnxruntime, which defines a few there
   (``SimplifiedLayerNormalization``): accepted when onnxruntime accepts the model;
3b. attribute values that onnxruntime accepts but that make the model compute NaN: a
   normalization's ``epsilon`` must be a finite number >= 0 (onnxruntime takes -1 or NaN and
   computes NaN, which compiled code need not reproduce: a ReLU after it may give 0);
4. onnxruntime as the oracle of what a runtime accepts: a CPU session with graph optimizations off
   resolves the graph (ONNX shape and type inference, strict about attribute values) and
   constructs every kernel, each of which validates its attributes. What it refuses is refused,
   with the node's name: from onnxruntime's message, or, when the message names no node (a kernel
   constructor's check), by opening the nodes one at a time until one fails. A missing kernel
   (``NOT_IMPLEMENTED``: onnxruntime lacks the operator, mmopt may not), or a failure that says a
   feature is not supported (batch-major RNNs) or the machine lacks something (a locale), is not
   a defect of the model; then ``onnx.checker``'s full check (strict shape inference) judges.

Models past the 2 GiB protobuf limit get steps 1-2 and the checker on what it can see.
"""

from __future__ import annotations

import logging
import math
import re
import time

import onnx

from mmopt.errors import ModelLoadError, summarize

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
#: how long locating a node that onnxruntime refuses may take (it only runs on a refusal)
LOCATE_BUDGET_S = 5.0


def validate(model: onnx.ModelProto, where: str, *, serialized: bytes | None = None) -> None:
    """Raise :class:`ModelLoadError` (one line, starting with ``where``) unless ``model`` is a
    well-formed ONNX model that onnxruntime accepts. ``serialized``: the model's bytes, when the
    caller has them (saves serializing a large model again)."""
    _check_text(model, where)
    _check_structure(model.graph, set(), where, "graph")
    fits = serialized is not None or _fits(model)
    if fits and serialized is None:
        serialized = model.SerializeToString()
    unknown = None
    try:
        _check_onnx(serialized if fits else model, where, full=False)
    except ModelLoadError as exc:
        if not fits or not _NO_SCHEMA.search(exc.message):
            raise
        # an op of ONNX's own domain that onnx has no schema for: onnxruntime defines some
        # (SimplifiedLayerNormalization, written by its transformers optimizer); it judges
        unknown = exc
    _check_values(model, where)
    if not fits:
        logger.info("%s: past the 2 GiB protobuf limit: onnxruntime's check is skipped", where)
        return
    verdict = _onnxruntime_verdict(serialized)
    if verdict is None:
        return
    if unknown is not None:
        raise unknown
    if verdict == "not implemented":
        _check_onnx(serialized, where, full=True)
        return
    node = _node_in(verdict, model)
    if node is None:
        node = _locate(model)
    reason = _reason(verdict)
    prefix = f"node {node.name or '(unnamed)'} ({node.op_type}): " if node is not None else ""
    raise ModelLoadError(f"{where}: invalid model, onnxruntime refuses it: {prefix}{reason}")


# --------------------------------------------------------------------------------------------------
# 1. text


def _bad_text(value) -> bool:
    """A proto2 ``string`` field holding invalid UTF-8 reads back as ``bytes``."""
    return isinstance(value, bytes)


def _check_text(model: onnx.ModelProto, where: str) -> None:
    def fail(what: str, raw: bytes):
        shown = raw.decode("utf-8", "backslashreplace")[:60]
        raise ModelLoadError(f"{where}: corrupt model: {what} '{shown}' is not valid UTF-8 text "
                             "(the file is damaged)")

    for opset in model.opset_import:
        if _bad_text(opset.domain):
            fail("an opset domain", opset.domain)
    for key in ("producer_name", "producer_version", "domain"):
        if _bad_text(getattr(model, key)):
            fail(f"the model's {key}", getattr(model, key))
    for prop in model.metadata_props:
        if _bad_text(prop.key) or _bad_text(prop.value):
            fail("a metadata entry", prop.key if _bad_text(prop.key) else prop.value)
    graphs = [model.graph]
    for function in model.functions:
        for field in (function.name, function.domain, *function.input, *function.output):
            if _bad_text(field):
                fail("a function's name or value", field)
        graphs.append(function)
    while graphs:
        graph = graphs.pop()
        if isinstance(graph, onnx.GraphProto):
            if _bad_text(graph.name):
                fail("a graph name", graph.name)
            for value in (*graph.input, *graph.output, *graph.value_info):
                if _bad_text(value.name):
                    fail("a value name", value.name)
            for tensor in graph.initializer:
                if _bad_text(tensor.name):
                    fail("an initializer name", tensor.name)
        for node in graph.node:
            for field, what in ((node.name, "a node name"), (node.op_type, "an operator type"),
                                (node.domain, "a node's domain")):
                if _bad_text(field):
                    fail(what, field)
            for name in (*node.input, *node.output):
                if _bad_text(name):
                    fail(f"a value name of node {node.name!r}", name)
            for attr in node.attribute:
                if _bad_text(attr.name) or _bad_text(attr.ref_attr_name):
                    fail(f"an attribute name of node {node.name!r}",
                         attr.name if _bad_text(attr.name) else attr.ref_attr_name)
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


# --------------------------------------------------------------------------------------------------
# 2. well-formedness


def _check_structure(graph: onnx.GraphProto, outer: set[str], where: str, label: str) -> None:
    """Definition before use, single assignment and defined outputs, recursively."""
    if label == "graph" and not graph.output:
        raise ModelLoadError(f"{where}: the graph has no outputs")
    defined: dict[str, str] = {}
    for value in graph.input:
        defined[value.name] = "a graph input"
    for tensor in graph.initializer:
        defined.setdefault(tensor.name, "an initializer")
    for sparse in graph.sparse_initializer:
        defined.setdefault(sparse.values.name, "an initializer")
    later = {name: node for node in graph.node for name in node.output if name}
    for node in graph.node:
        who = f"node {node.name or '(unnamed)'} ({node.op_type})"
        for name in node.input:
            if not name or name in defined or name in outer:
                continue
            if name in later:
                raise ModelLoadError(
                    f"{where}: invalid model: {who} in the {label} reads '{name}' before node "
                    f"{later[name].name or '(unnamed)'} writes it (the nodes are out of order or "
                    "form a cycle)")
            raise ModelLoadError(f"{where}: invalid model: {who} in the {label} reads '{name}', "
                                 "which no node, graph input or initializer defines")
        for attr in node.attribute:
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for sub in subgraphs:
                _check_structure(sub, outer | set(defined), where,
                                 f"{attr.name} of node {node.name or '(unnamed)'}")
        for name in node.output:
            if not name:
                continue
            if name in defined or name in outer:
                origin = defined.get(name, "a value of an enclosing graph")
                raise ModelLoadError(f"{where}: invalid model: {who} in the {label} writes "
                                     f"'{name}', which is already {origin}")
            defined[name] = f"written by node {node.name or '(unnamed)'}"
    for value in graph.output:
        if value.name not in defined and value.name not in outer:
            raise ModelLoadError(f"{where}: invalid model: output '{value.name}' of the {label} "
                                 "is not defined by any node, input or initializer")


# --------------------------------------------------------------------------------------------------
# 3. onnx.checker


_CONTEXT = re.compile(r"Name:\s*(\S*)\s+OpType:\s*(\S+)")


def _check_onnx(model, where: str, *, full: bool) -> None:
    try:
        onnx.checker.check_model(model, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        context = _CONTEXT.search(text)
        node = f" (node {context.group(1) or '(unnamed)'}, {context.group(2)})" if context else ""
        raise ModelLoadError(f"{where}: invalid ONNX model: {first}{node}") from exc
    except UnicodeDecodeError as exc:
        # the checker's message quotes bytes of the model that are not text
        raise ModelLoadError(f"{where}: corrupt model: onnx.checker rejects it and its message "
                             "quotes bytes that are not valid text (the file is damaged)") from exc


# --------------------------------------------------------------------------------------------------
# 3b. attribute values


def _check_values(model: onnx.ModelProto, where: str) -> None:
    """Attribute values outside what the operator means, which onnxruntime computes with anyway."""
    for node in _all_nodes(model.graph):
        if not node.op_type.endswith("Normalization"):
            continue
        for attr in node.attribute:
            if (attr.name == "epsilon" and attr.type == onnx.AttributeProto.FLOAT
                    and not (math.isfinite(attr.f) and attr.f >= 0)):
                raise ModelLoadError(
                    f"{where}: invalid model: node {node.name or '(unnamed)'} ({node.op_type}): "
                    f"epsilon is {attr.f:g}; it must be a finite number >= 0 (it is added to the "
                    "variance to keep the divisor positive)")


# --------------------------------------------------------------------------------------------------
# 4. onnxruntime


#: onnx.checker's refusal of an op of ONNX's domain it has no schema for
_NO_SCHEMA = re.compile(r"No Op registered for ")
#: onnxruntime's refusal of an op it has no schema for (a custom domain's): not a defect either
_UNKNOWN_OP = re.compile(r"is not a registered function/op")
#: onnxruntime failures that state a limit of onnxruntime or of this machine, not a defect of the
#: model: a valid batch-major LSTM/GRU/RNN ("Batchwise recurrent operations (layout == 1) are not
#: supported"), a StringNormalizer whose locale this machine lacks. mmopt may handle these.
_LIMITATION = re.compile(r"not (yet )?supported|not implemented|unsupported|construct locale",
                         re.IGNORECASE)


def _onnxruntime_verdict(serialized: bytes) -> str | None:
    """None when onnxruntime accepts the model; ``"not implemented"`` when it lacks a kernel, does
    not know the op, or says a feature of the model is beyond it (:data:`_LIMITATION`); else its
    one-line reason."""
    from mmopt.errors import MmoptError
    from mmopt.frontends._native import native_output_silenced
    from mmopt.runtime import ort

    try:
        with native_output_silenced():  # onnxruntime also logs the failure from C++
            ort.session(serialized, label="validate", threads=1, inter_op_threads=1)
    except MmoptError as exc:
        cause = exc.__cause__
        if cause is not None and (type(cause).__name__ == "NotImplemented"
                                  or _UNKNOWN_OP.search(str(cause))
                                  or _LIMITATION.search(str(cause))):
            # no kernel, an op of a domain onnxruntime does not know (a plugin's), or a feature
            # or locale onnxruntime or this machine lacks
            logger.info("onnxruntime cannot open part of the model (%s); onnx's full check "
                        "judges it instead", summarize(cause))
            return "not implemented"
        return summarize(cause) if cause is not None else exc.message
    return None


#: onnxruntime's ways of naming a node in an error
_ORT_NODE = (
    re.compile(r'In Node, \("([^"]*)", ([\w.]+),'),
    re.compile(r"Node \(([^)]*)\) Op \(([\w.]+)\)"),
    re.compile(r"node (?:name[: ]+)?'?([^' ]+)'?(?: \(| of type )"),
)


def _node_in(message: str, model: onnx.ModelProto) -> onnx.NodeProto | None:
    names = {n.name: n for n in _all_nodes(model.graph) if n.name}
    for pattern in _ORT_NODE:
        match = pattern.search(message)
        if match and match.group(1) in names:
            return names[match.group(1)]
    return None


def _reason(message: str) -> str:
    """onnxruntime's message without its code prefix, source paths and node dumps."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", message.strip())
    text = re.sub(r"Exception during initialization: \S+:\d+ ", "", text)
    text = re.sub(r"^Load model from \S+ failed:", "", text)
    match = re.search(r"In Node, \(.*?\) : \(.*?\) -> \(.*?\) , Error (.*)$", text)
    if match:
        text = match.group(1)
    text = re.sub(r"Node \([^)]*\) Op \([\w.]+\) ", "", text)
    # "f(args) cond was false. Reason" (ORT_ENFORCE): keep the reason
    match = re.search(r" was false\. (.+)$", text)
    if match:
        text = match.group(1)
    return text.strip()[:300]


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _locate(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The first main-graph node that onnxruntime refuses on its own (its inputs typed by shape
    inference, its initializers included), within :data:`LOCATE_BUDGET_S`; None if none does."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model onnxruntime refuses may break inference too
        inferred = model
    graph = inferred.graph
    types = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    inits = {t.name: t for t in graph.initializer}
    start = time.perf_counter()
    for node in graph.node:
        if time.perf_counter() - start > LOCATE_BUDGET_S:
            logger.info("locating the refused node: out of time")
            return None
        if any(a.HasField("g") or a.graphs for a in node.attribute):
            continue
        inputs, initializers = [], []
        for name in dict.fromkeys(n for n in node.input if n):
            if name in inits:
                initializers.append(inits[name])
            elif name in types and types[name].type.HasField("tensor_type"):
                inputs.append(types[name])
            else:
                break
        else:
            single = onnx.helper.make_graph([node], "probe", inputs,
                                            [onnx.ValueInfoProto(name=o) for o in node.output if o],
                                            initializer=initializers)
            probe = onnx.helper.make_model(single, opset_imports=model.opset_import,
                                           ir_version=model.ir_version)
            verdict = _onnxruntime_verdict(probe.SerializeToString())
            if verdict not in (None, "not implemented"):
                return next(n for n in model.graph.node if n.name == node.name) \
                    if node.name else node
    return None


def _fits(model: onnx.ModelProto) -> bool:
    try:
        return model.ByteSize() < PROTOBUF_LIMIT
    except Exception:  # noqa: BLE001 - protobuf raises plain errors past 2 GiB on some builds
        return False


__all__ = ["validate"]
