"""Decompositions written as functions rather than :class:`~mmopt.extend.rules.Decomposition`
classes.

* :class:`FunctionDecomposition`: the node is replaced by an ONNX function body -- an onnxscript
  ``@script()`` function or an ``onnx.FunctionProto`` -- with the node's attributes (and the
  function's defaults) substituted for its attribute references; a body written for another opset
  than the model's is converted with onnx's version converter. This is how
  :mod:`mmopt.codegen.decompose.expand_functions` inlines the bodies ONNX defines for its own ops.
* :class:`BuilderDecomposition`: ``fn(node, op) -> value(s)`` builds the replacement with an
  :class:`OpBuilder` (``op.Mul(x, y)``, ``op.Gemm(a, b, c, transB=1)``, ``op.const(0.5, x)``); an
  onnx_ir rewrite without a class.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from mmopt.extend.rules import Context, Decomposition, constant, dtype_of


def _as_function_proto(function) -> onnx.FunctionProto:
    if isinstance(function, onnx.FunctionProto):
        return function
    if hasattr(function, "to_function_proto"):  # onnxscript's OnnxFunction
        return function.to_function_proto()
    raise TypeError(f"expected an onnxscript function or an onnx.FunctionProto, got "
                    f"{type(function).__name__}")


class FunctionDecomposition(Decomposition):
    """Replace the node by an ONNX function body (see the module docstring)."""

    kind = "function"

    def __init__(self, domain: str, op_type: str, function, *, since_version: int = 1,
                 name: str | None = None, check: Callable[[ir.Node], str | None] | None = None,
                 always: bool = False):
        self.proto = _as_function_proto(function)
        self.domain, self.op_types, self.since_version = domain, (op_type,), since_version
        self.always = always
        self.name = name or f"inline_{self.proto.name or op_type}"
        self.function_module = getattr(function, "__module__", None) or getattr(
            getattr(function, "function", None), "__module__", None)
        self._check = check

    def _attributes(self, node: ir.Node) -> dict[str, onnx.AttributeProto]:
        values = {a.name: a for a in self.proto.attribute_proto}
        values.update({a.name: a for a in ir.serde.serialize_node(node).attribute})
        return values

    def _body(self, node: ir.Node, ctx: Context) -> tuple[onnx.FunctionProto | None, str | None]:
        from mmopt.codegen.decompose import expand_functions as ef

        function = copy.deepcopy(self.proto)
        if len(node.inputs) > len(function.input):
            return None, (f"the node has {len(node.inputs)} inputs, the function "
                          f"{len(function.input)}")
        if len(node.outputs) > len(function.output):
            return None, (f"the node has {len(node.outputs)} outputs, the function "
                          f"{len(function.output)}")
        ef._resolve_attribute_references(function, self._attributes(node))  # noqa: SLF001
        converted = ef._convert_body(function, ctx.opset)  # noqa: SLF001
        if converted is None:
            why = ef._same_meaning(function, ctx.opset)  # noqa: SLF001
            return (function, None) if why is None else (None, why)
        return converted, None

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if self._check is not None:
            why = self._check(node)
            if why is not None:
                return why
        return self._body(node, ctx)[1]

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        from mmopt.codegen.decompose.expand_functions import call_body

        function, _ = self._body(node, ctx)
        return call_body(function, node, tape, ctx)[:len(node.outputs)]


class OpBuilder:
    """Builds nodes on a rewrite's tape: ``op.Add(x, y)``, ``op.Gemm(a, b, transB=1)``,
    ``op.node("Foo", x, domain="acme", outputs=2)``, ``op.const(array)``, ``op.const(0.5, like=x)``.
    """

    def __init__(self, tape, ctx: Context):
        self.tape, self.ctx = tape, ctx

    @property
    def opset(self) -> int:
        """The model's default-domain opset version."""
        return self.ctx.opset

    def node(self, op_type: str, *inputs, domain: str = "", outputs: int = 1, **attributes):
        """One node; its output value (a list of them when ``outputs`` > 1)."""
        if outputs == 1:
            return self.tape.op(op_type, list(inputs), attributes or None, domain=domain)
        return self.tape.op_multi_out(op_type, list(inputs), attributes or None, domain=domain,
                                      num_outputs=outputs)

    def const(self, value, dtype=None, *, like: ir.Value | None = None) -> ir.Value:
        """A constant; ``like``: in that value's element type."""
        if like is not None:
            dtype = dtype_of(like).numpy()
        return constant(self.tape, np.asarray(value), dtype)

    def __getattr__(self, op_type: str):
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return functools.partial(self.node, op_type)


class BuilderDecomposition(Decomposition):
    """``fn(node, op) -> value or values`` as a rule (see the module docstring)."""

    def __init__(self, domain: str, op_type: str | Sequence[str], fn: Callable, *,
                 since_version: int = 1, name: str | None = None,
                 check: Callable[[ir.Node], str | None] | None = None, always: bool = False):
        self.domain = domain
        self.op_types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
        self.since_version, self.always = since_version, always
        self.fn, self._check = fn, check
        self.name = name or getattr(fn, "__name__", f"decompose_{self.op_types[0]}")
        self.function_module = getattr(fn, "__module__", None)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        return self._check(node) if self._check is not None else None

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        result = self.fn(node, OpBuilder(tape, ctx))
        if isinstance(result, ir.Value) or result is None:
            return [result]
        return list(result)
