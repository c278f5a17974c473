"""expand_functions: operators that ONNX itself defines as a function of other operators are inlined.

Many newer ONNX operators (``NegativeLogLikelihoodLoss``, ``SoftmaxCrossEntropyLoss``, ``Attention``,
``RotaryEmbedding``, ``CenterCropPad``, ``Celu``, ``Swish``, the window functions, ...) carry a
*function body* in their schema: a subgraph of simpler operators with the same meaning, sometimes
built for the concrete node (a "context-dependent" function: it depends on the node's attributes and
input types). When TVM cannot convert such a node, the node is replaced by that body, taken from the
schema of the model's opset, so the expansion is the ONNX specification's own definition.

The node's attributes (with the schema's defaults) are substituted for the body's attribute
references first. The body may be written for an older opset than the model's; it is then brought
to the model's opset with onnx's version converter (which rewrites the ops whose signature changed,
e.g. reduction axes becoming an input). If the converter cannot, the body is used only when every
operator in it has the same definition (``since_version``) at both opsets.

A few operators TVM *does* convert are expanded anyway, because the converter is wrong for them
(:data:`ALWAYS_EXPAND`), and half-precision attention-like ops are first moved to float32
(:class:`ComputeHalfInFloat`), as onnxruntime computes them.

The expansion goes through a model-local function (domain :data:`DOMAIN`) that onnx_ir's inliner
then inlines, renaming the body's values uniquely.
"""

from __future__ import annotations

import itertools
import logging

import onnx
import onnx_ir as ir

from mmopt.extend.rules import DEFAULT_DOMAINS, Context, Decomposition

logger = logging.getLogger(__name__)

#: domain of the temporary local functions (inlined by the driver right after a round of rewrites)
DOMAIN = "mmopt.expand"


def _extra_outputs_used(node: ir.Node) -> bool:
    return any(v is not None and (v.uses() or v.is_graph_output()) for v in node.outputs[1:])


def _axis_not_last(node: ir.Node) -> bool:
    axis = node.attributes["axis"].value if "axis" in node.attributes else -1
    shape = node.inputs[0].shape
    return axis != -1 and (shape is None or axis != len(shape) - 1)


#: op -> (when, why): default-domain ops TVM has a converter for that are expanded anyway when
#: ``when(node)``, because the converter is wrong for them
ALWAYS_EXPAND = {
    # TVM maps "Attention" to Microsoft's contrib op (needs num_heads, packed QKV weights); the
    # default-domain op (opset 23) is a different operator.
    "Attention": (lambda node: True,
                  "TVM converts com.microsoft::Attention, not the ONNX (opset 23) operator"),
    # the converter returns placeholders for Mean and InvStdDev and mis-extends negative axes
    "LayerNormalization": (lambda node: _extra_outputs_used(node) or _axis_not_last(node),
                           "TVM computes only Y, over the last axes"),
    # the converter's rms_norm needs a scale of the normalized rank
    "RMSNormalization": (_axis_not_last, "TVM normalizes over the last axis only"),
}

_counter = itertools.count()


def _schema(node: ir.Node, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain if node.domain != "ai.onnx" else "")
    except onnx.defs.SchemaError:
        return None


def _function_version(schema, opset: int) -> tuple[int, bool] | None:
    """(opset version of the body to use, context-dependent?) or None when there is no body."""
    plain = [v for v in schema.function_opset_versions if v <= opset]
    context = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if plain or context:
        best_plain = max(plain, default=-1)
        best_ctx = max(context, default=-1)
        return (best_ctx, True) if best_ctx > best_plain else (best_plain, False)
    return None


def _body(node: ir.Node, opset: int) -> tuple[onnx.FunctionProto | None, str | None]:
    """The function body of ``node`` at ``opset``, or (None, why not)."""
    schema = _schema(node, opset)
    if schema is None:
        return None, "no ONNX schema for this operator"
    chosen = _function_version(schema, opset)
    if chosen is None:
        return None, "ONNX defines no function body for this operator"
    version, context = chosen
    if context:
        proto = ir.serde.serialize_node(node)
        types = []
        for value in node.inputs:
            type_proto = onnx.TypeProto()
            if value is not None and value.type is not None:
                type_proto = ir.serde.serialize_value(value).type
            elif value is not None:
                return None, f"the type of input {value.name} is unknown"
            types.append(type_proto.SerializeToString())
        try:
            data = schema.get_context_dependent_function_with_opset_version(
                version, proto.SerializeToString(), types)
        except Exception as exc:  # noqa: BLE001 - onnx raises plain C++ errors here
            return None, f"ONNX could not build the function body ({exc})"
    else:
        data = schema.get_function_with_opset_version(version)
    function = onnx.FunctionProto()
    function.ParseFromString(data)
    if not function.node:
        return None, "ONNX defines no function body for these attributes and input types"
    function, why = _fit_outputs(function, node)
    if function is None:
        return None, why
    _resolve_attribute_references(function, _attributes(node, schema))
    converted = _convert_body(function, opset)
    if converted is None:
        why = _same_meaning(function, opset)
        return (function, None) if why is None else (None, why)
    return converted, None


def _attributes(node: ir.Node, schema) -> dict[str, onnx.AttributeProto]:
    """The node's attributes, with the schema's defaults for those it does not set."""
    given = {a.name: a for a in ir.serde.serialize_node(node).attribute}
    for name, definition in schema.attributes.items():
        default = definition.default_value
        if name not in given and default.type != onnx.AttributeProto.UNDEFINED:
            attribute = onnx.AttributeProto()
            attribute.CopyFrom(default)
            attribute.name = name
            given[name] = attribute
    return given


def _resolve_attribute_references(function: onnx.FunctionProto,
                                  values: dict[str, onnx.AttributeProto]) -> None:
    """Replace ``attr = @ref`` in the body (subgraphs included) by the node's value for ``ref``; an
    attribute referring to one the node does not have is dropped (the inner op's default applies).
    Done before any version conversion, which does not keep references."""
    def fix(nodes) -> None:
        for n in nodes:
            kept = []
            for a in n.attribute:
                if a.ref_attr_name:
                    if a.ref_attr_name in values:
                        resolved = onnx.AttributeProto()
                        resolved.CopyFrom(values[a.ref_attr_name])
                        resolved.name = a.name
                        kept.append(resolved)
                    continue
                if a.type == onnx.AttributeProto.GRAPH:
                    fix(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        fix(g.node)
                kept.append(a)
            del n.attribute[:]
            n.attribute.extend(kept)

    fix(function.node)
    del function.attribute[:]
    del function.attribute_proto[:]


def _fit_outputs(function: onnx.FunctionProto, node: ir.Node):
    """Make the body's outputs match the node's: a context-dependent body omits the outputs the node
    does not have (or does not use); those get a placeholder so positions stay aligned."""
    del function.output[len(node.outputs):]
    produced = {o for n in function.node for o in n.output} | set(function.input)
    for i, name in enumerate(function.output):
        if name in produced:
            continue
        out = node.outputs[i]
        if out is not None and (out.uses() or out.is_graph_output()):
            return None, f"its function body does not compute output {i} ({out.name})"
        function.node.append(onnx.helper.make_node(
            "Constant", [], [name], value=onnx.helper.make_tensor("unused", 1, [], [0.0])))
    return function, None


def _body_opset(function: onnx.FunctionProto, opset: int) -> int:
    return next((o.version for o in function.opset_import if o.domain in DEFAULT_DOMAINS), opset)


def _convert_body(function: onnx.FunctionProto, opset: int) -> onnx.FunctionProto | None:
    """The body converted to ``opset`` by onnx's version converter (which rewrites the ops whose
    signature changed in between, e.g. reduction axes becoming an input), or None if it cannot."""
    if _body_opset(function, opset) == opset:
        return function
    untyped = onnx.TypeProto()
    graph = onnx.helper.make_graph(
        list(function.node), "body", [onnx.helper.make_value_info(n, untyped) for n in function.input],
        [onnx.helper.make_value_info(n, untyped) for n in function.output])
    wrapper = onnx.helper.make_model(graph, opset_imports=list(function.opset_import))
    try:
        converted = onnx.version_converter.convert_version(wrapper, opset)
    except Exception:  # noqa: BLE001 - the converter raises plain C++ errors
        return None
    body = onnx.FunctionProto()
    body.CopyFrom(function)
    del body.node[:]
    for init in converted.graph.initializer:  # functions have no initializers
        body.node.append(onnx.helper.make_node("Constant", [], [init.name], value=init))
    body.node.extend(converted.graph.node)
    for entry in body.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            entry.version = opset
    return body


def _same_meaning(function: onnx.FunctionProto, opset: int) -> str | None:
    """None when every op of the body means the same at ``opset`` as at the body's opset."""
    body_opset = _body_opset(function, opset)
    if body_opset == opset:
        return None

    def nodes(graph_nodes):
        for n in graph_nodes:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from nodes(a.g.node)

    for n in nodes(function.node):
        if n.domain not in DEFAULT_DOMAINS:
            continue
        try:
            then = onnx.defs.get_schema(n.op_type, body_opset).since_version
            now = onnx.defs.get_schema(n.op_type, opset).since_version
        except onnx.defs.SchemaError:
            return f"{n.op_type} in its body has no schema at opset {opset}"
        if then != now:
            return (f"its body (opset {body_opset}) uses {n.op_type}, which changed by opset "
                    f"{opset}")
    return None


class ExpandFunction(Decomposition):
    """Replace a node by its ONNX function body (see the module docstring)."""

    name = "expand_function"
    op_types = ()
    generic = True
    kind = "function"

    def matches(self, node: ir.Node) -> bool:
        return node.domain in DEFAULT_DOMAINS

    def wanted(self, node: ir.Node, ctx: Context) -> bool:
        if node.op_type not in ctx.supported:
            return True
        when = ALWAYS_EXPAND.get(node.op_type)
        return when is not None and when[0](node)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        function, why = _body(node, ctx.opset)
        if function is None:
            return why
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for a in node.attributes.values()):
            return "graph-valued attributes cannot be substituted into a function body"
        return None

    def rewrite(self, node: ir.Node, tape: ir.tape.Tape, ctx: Context):
        function, _ = _body(node, ctx.opset)
        return call_body(function, node, tape, ctx)


def call_body(function: onnx.FunctionProto, node: ir.Node, tape: ir.tape.Tape,
              ctx: Context) -> list[ir.Value]:
    """A call of ``function`` (attribute references resolved, at the model's opset) with the node's
    inputs, through a model-local function that :func:`inline_expansions` inlines after the round;
    one output per output of the function. Also used by :class:`mmopt.extend.FunctionDecomposition`.
    """
    name = f"{node.op_type}_{next(_counter)}"
    function.domain = DOMAIN
    function.name = name
    for opset in function.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            opset.version = ctx.opset
        else:  # the body may call ops of other domains (extension ops)
            ctx.model.opset_imports.setdefault(opset.domain, opset.version)
    local = ir.serde.deserialize_function(function)
    ctx.model.functions[local.identifier()] = local
    ctx.model.opset_imports.setdefault(DOMAIN, 1)
    # attribute references are already resolved in the body: the call needs none
    return list(tape.op_multi_out(name, list(node.inputs), domain=DOMAIN,
                                  num_outputs=max(len(node.outputs), len(function.output))))


_HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


class ComputeHalfInFloat(Decomposition):
    """A half-precision op whose body accumulates (attention, convolutions over state) is computed in
    float32 between casts, as onnxruntime's kernels do; in float16 the softmax and long sums round
    differently. The float32 node is expanded in the next round."""

    name = "compute_half_in_float"
    op_types = ("Attention", "CausalConvWithState", "LinearAttention", "RotaryEmbedding")
    always = True

    def wanted(self, node: ir.Node, ctx: Context) -> bool:
        return any(v is not None and v.dtype in _HALF for v in node.inputs)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if any(v is not None and v.dtype is None for v in node.outputs):
            return "the output types are unknown"
        return None

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        inputs = [tape.op("Cast", [v], {"to": ir.DataType.FLOAT}) if v is not None and v.dtype in _HALF
                  else v for v in node.inputs]
        outputs = tape.op_multi_out(node.op_type, inputs, domain=node.domain,
                                    num_outputs=len(node.outputs))
        for attribute in node.attributes.values():
            tape.nodes[-1].attributes[attribute.name] = attribute
        return [tape.op("Cast", [new], {"to": old.dtype}) if old.dtype in _HALF else new
                for old, new in zip(node.outputs, outputs)]


RULES = (ComputeHalfInFloat(), ExpandFunction())


def inline_expansions(model: ir.Model) -> bool:
    """Inline the local functions :class:`ExpandFunction` created; True if any were."""
    if not any(f.domain == DOMAIN for f in model.functions.values()):
        return False
    ir.passes.common.InlinePass(criteria=lambda f: f.domain == DOMAIN)(model)
    model.opset_imports.pop(DOMAIN, None)
    return True
