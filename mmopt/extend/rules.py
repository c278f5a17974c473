"""The rule an extension registers: one node rewritten into operators mmopt compiles.

A :class:`Decomposition` replaces one node by a subgraph of operators TVM's Relax importer converts
(standard ONNX ops, other extension ops, or a kernel node, see :mod:`mmopt.extend.kernels`). mmopt's
own import-time decompositions (:mod:`mmopt.codegen.decompose`) are written with it and registered
through :func:`mmopt.extend.register`, like any plugin's. Each rule states its metadata as data and
keeps "why not" separate from "how":

* ``domain`` / ``op_types`` / ``since_version``: the nodes it handles (``since_version``: the
  domain's opset version from which this definition applies; a registration with a higher one for
  the same op replaces it from that version on);
* ``name``: the action (``unroll_lstm``, ``lower_conv_integer``, ...); reports count by it;
* ``always``: rewrite even when TVM has a converter for the op (the converter is wrong or missing
  a feature, e.g. the default-domain ``Attention`` that TVM converts as Microsoft's contrib op).
  Ops of any other domain than ONNX's are always rewritten: TVM's importer ignores domains, so its
  converter of the same name would be for another op;
* ``generic``: the rule applies to any op (function expansion); when an op-specific rule also
  declines a node, its reason is the one reported;
* :meth:`Decomposition.check` returns ``None`` when the node can be rewritten, else the reason
  (shown by ``mmopt inspect --support`` and in the import error that names the node);
* :meth:`Decomposition.rewrite` builds the replacement with a :class:`onnx_ir.tape.Tape` and returns
  one value per output of the node (``None`` for optional outputs nobody reads).

Rewrites that need static shapes (sequence length, hidden size, ...) get them: the driver runs ONNX
shape inference before each round, so values computed by earlier rewrites have them too. Ops ONNX
has no schema for (other domains) get no inferred shapes until they are rewritten; a rule that
declines for want of a shape is asked again in the next round.

The helpers below (:func:`const`, :func:`static_shape`, :func:`attr`, :func:`op`, ...) are public
too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class Context:
    """What a rule may need beyond the node: the model's opset and the set of ops TVM converts."""

    opset: int
    supported: frozenset[str]
    model: ir.Model | None = None
    #: names already used by values and nodes (new names are made unique against it)
    used_names: set[str] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.used_names:
            i += 1
            name = f"{base}_{i}"
        self.used_names.add(name)
        return name


class Decomposition:
    """One rewrite of a node into supported operators (see the module docstring)."""

    name: str
    op_types: tuple[str, ...]
    domain: str = ""
    since_version: int = 1
    always: bool = False
    #: applies to any op (function expansion): its "why not" yields to an op-specific rule's
    generic: bool = False
    #: how the op gets compiled, for reports: "decomposition" (into other ONNX ops), "function"
    #: (an ONNX function body inlined) or "kernel" (a kernel-level implementation)
    kind: ClassVar[str] = "decomposition"

    def matches(self, node: ir.Node) -> bool:
        domain_ok = (node.domain in DEFAULT_DOMAINS) if self.domain in DEFAULT_DOMAINS \
            else node.domain == self.domain
        return domain_ok and node.op_type in self.op_types

    def wanted(self, node: ir.Node, ctx: Context) -> bool:
        """Whether the node should be rewritten at all (by default: TVM cannot convert it; ops of
        other domains always, as TVM's importer looks converters up by op type alone)."""
        return (self.always or node.domain not in DEFAULT_DOMAINS
                or node.op_type not in ctx.supported)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        return None

    def rewrite(self, node: ir.Node, tape: Tape, ctx: Context) -> Sequence[ir.Value | None]:
        raise NotImplementedError


class Tape(ir.tape.Tape):
    """onnx_ir's tape, plus :meth:`append` for nodes built elsewhere (an inlined subgraph's)."""

    def append(self, node: ir.Node) -> None:
        self._nodes.append(node)


def inline_graph(body: ir.Graph, inputs: Sequence[ir.Value], tape: Tape, ctx: Context,
                 prefix: str) -> list[ir.Value]:
    """Append a copy of ``body`` to ``tape`` with its inputs bound to ``inputs``; return the copy's
    outputs. Values the body reads from outer scopes stay shared; its initializers become Constant
    nodes (a subgraph's initializer names may repeat across copies)."""
    copy = body.clone(allow_outer_scope_values=True)
    mapping: dict[ir.Value, ir.Value] = {}
    for name, init in list(copy.initializers.items()):
        copy.initializers.pop(name)
        mapping[init] = tape.op("Constant", [], {"value": init.const_value},
                                name=ctx.fresh(f"{prefix}/{name}"))
    for formal, actual in zip(copy.inputs, inputs):
        mapping[formal] = actual
    for formal, actual in mapping.items():
        ir.convenience.replace_all_uses_with(formal, actual)
    outputs = [mapping.get(v, v) for v in copy.outputs]
    copy.outputs.clear()
    nodes = list(copy)
    copy.remove(nodes)
    for node in nodes:
        node.name = ctx.fresh(f"{prefix}/{node.name or node.op_type}")
        for out in node.outputs:
            if out is not None:
                out.name = ctx.fresh(f"{prefix}/{out.name or node.op_type}")
        tape.append(node)
    return outputs


# --------------------------------------------------------------------------------------------------
# helpers for rules


def const(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant array (initializer or Constant node output), or None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    array = const(value)
    if array is not None:
        return tuple(array.shape)
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


def dtype_of(value: ir.Value | None) -> ir.DataType | None:
    if value is None:
        return None
    if value.dtype is not None:
        return value.dtype
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.dtype


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def present(node: ir.Node, index: int) -> ir.Value | None:
    """Input ``index`` of the node, None when absent or empty."""
    return node.inputs[index] if index < len(node.inputs) else None


def used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def op(tape: ir.tape.Tape, op_type: str, *inputs, **attributes) -> ir.Value:
    """One node on ``tape`` with positional inputs and keyword attributes; returns its output."""
    return tape.op(op_type, list(inputs), attributes or None)


def constant(tape: ir.tape.Tape, array, dtype=None) -> ir.Value:
    """A Constant node with ``array`` (numpy-converted, cast to ``dtype`` when given)."""
    array = np.asarray(array, dtype=dtype)
    return tape.op("Constant", [], {"value": ir.tensor(array)})


def constant_like(tape: ir.tape.Tape, value, like: ir.Value) -> ir.Value:
    """A constant in ``like``'s element type: typed directly when the type is known, else a float32
    constant through ``CastLike`` (values computed by earlier rewrites of a round have no type
    yet)."""
    dtype = dtype_of(like)
    if dtype is not None:
        return constant(tape, np.asarray(value, dtype=dtype.numpy()))
    return tape.op("CastLike", [constant(tape, np.asarray(value, np.float32)), like])


def ints(tape: ir.tape.Tape, values) -> ir.Value:
    return constant(tape, np.asarray(values, dtype=np.int64))


def numpy_dtype(dtype: ir.DataType) -> np.dtype:
    return dtype.numpy()


def reduce(tape: ir.tape.Tape, op_type: str, x: ir.Value, axes: Sequence[int], opset: int, *,
           keepdims: int) -> ir.Value:
    """A Reduce* node in the form the opset defines: axes as an input from opset 18 (ReduceSum:
    13), as an attribute before."""
    if opset >= (13 if op_type == "ReduceSum" else 18):
        return tape.op(op_type, [x, ints(tape, list(axes))], {"keepdims": keepdims})
    return tape.op(op_type, [x], {"axes": list(axes), "keepdims": keepdims})
