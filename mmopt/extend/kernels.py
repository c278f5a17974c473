"""Kernel-level implementations: an op compiled by Relax/TE code the extension writes.

A :class:`KernelRule` rewrites its node (before import, like any decomposition) into a node of
domain :data:`KERNEL_DOMAIN` whose op type is the rule's unique :attr:`KernelRule.key`, with the
same inputs and attributes; the importer converts that node by calling the extension:

* ``relax=fn``: ``fn(bb, inputs, attrs) -> relax.Expr`` (a tuple for several outputs). ``bb`` is
  the importer's ``relax.BlockBuilder``, ``inputs`` the node's inputs as Relax expressions (None for
  absent optional ones), ``attrs`` its attributes as Python values (strings decoded; defaults are
  the extension's business);
* ``te=fn``: ``fn(*inputs, **attrs) -> te.Tensor`` (or a list of them), a TE compute emitted with
  ``bb.call_te``. Without a schedule the kernel joins mmopt's pipeline like any other (operator
  fusion, the target's default schedules, tuning). With ``schedule=fn``, ``fn(sch)`` is called
  with a ``tvm.s_tir.Schedule`` of the kernel's PrimFunc (its blocks are named by the TE
  computes); the scheduled function is marked scheduled and opaque to fusion, so it is compiled as
  written.

Constants a kernel reads (weights) stay what the ONNX graph holds: a kernel over packed 4-bit
weights keeps them packed in the artifact (see :mod:`mmopt.ops.microsoft.matmul_nbits`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import onnx_ir as ir

from mmopt.extend.rules import Context, Decomposition

#: domain of the nodes kernel rules write (converted by the importer through the extension)
KERNEL_DOMAIN = "mmopt.kernel"
#: Relax's op-pattern kind for opaque functions (FuseOps leaves them alone)
OPAQUE = 8

_taken: set[str] = set()
_serial = itertools.count(1)


def _key(domain: str, op_type: str, since_version: int) -> str:
    base = re.sub(r"[^A-Za-z0-9_.]", "_", f"{domain or 'ai.onnx'}.{op_type}.v{since_version}")
    key = base
    while key in _taken:
        key = f"{base}_{next(_serial)}"
    _taken.add(key)
    return key


def _python_attrs(attr: dict) -> dict:
    """TVM's parsed attributes as plain Python values (strings decoded, its own entry dropped)."""
    out = {}
    for name, value in attr.items():
        if name == "tvm_custom":
            continue
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[name] = value
    return out


class KernelRule(Decomposition):
    """An op implemented at kernel level (see the module docstring)."""

    kind = "kernel"

    def __init__(self, domain: str, op_type: str, *, relax: Callable | None = None,
                 te: Callable | None = None, schedule: Callable | None = None,
                 since_version: int = 1, name: str | None = None,
                 check: Callable[[ir.Node], str | None] | None = None, always: bool = False):
        if (relax is None) == (te is None):
            raise ValueError(f"kernel {domain}::{op_type}: give exactly one of relax= or te=")
        if schedule is not None and te is None:
            raise ValueError(f"kernel {domain}::{op_type}: schedule= needs a te= compute")
        self.domain = domain
        self.op_types = (op_type,)
        self.since_version = since_version
        self.always = always
        self.relax_fn, self.te_fn, self.schedule = relax, te, schedule
        impl = relax or te
        self.function_module = getattr(impl, "__module__", None)
        self.name = name or f"kernel_{getattr(impl, '__name__', op_type)}"
        self._check = check
        self.key = _key(domain, op_type, since_version)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        return self._check(node) if self._check is not None else None

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        ctx.model.opset_imports.setdefault(KERNEL_DOMAIN, 1)
        outputs = tape.op_multi_out(self.key, list(node.inputs), domain=KERNEL_DOMAIN,
                                    num_outputs=len(node.outputs))
        for attribute in node.attributes.values():
            tape.nodes[-1].attributes[attribute.name] = attribute
        return outputs

    # ---------------------------------------------------------------------------------------------
    # the importer side

    def emit(self, bb, inputs: list, attrs: dict):
        """The Relax expression of one node (called by the converter)."""
        if self.relax_fn is not None:
            return self.relax_fn(bb, inputs, attrs)
        hint = re.sub(r"\W", "_", f"{self.op_types[0].lower()}_kernel")

        def compute(*tensors):
            return self.te_fn(*tensors, **attrs)

        if self.schedule is None:
            return bb.emit_te(compute, *inputs, primfunc_name_hint=hint)
        return emit_scheduled_te(bb, compute, *inputs, schedule=self.schedule, name=hint)

    def converter(self):
        """A converter class for TVM's ONNX importer table."""
        from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

        rule = self

        class KernelConverter(OnnxOpConverter):
            @classmethod
            def _impl_v1(cls, bb, inputs, attr, params):
                return rule.emit(bb, list(inputs), _python_attrs(attr))

        KernelConverter.__name__ = self.key
        return KernelConverter


def emit_scheduled_te(bb, compute: Callable, *args, schedule: Callable, name: str):
    """Emit the TE ``compute(*args)`` as a PrimFunc scheduled by ``schedule(sch)`` (a
    ``tvm.s_tir.Schedule``), marked scheduled and opaque to fusion; returns the bound output.

    For Relax-level kernels (``relax=``) that wrap a scheduled TE kernel in other Relax ops."""
    from tvm import s_tir

    call = bb.call_te(compute, *args, primfunc_name_hint=name)
    gvar = call.args[0]
    sch = s_tir.Schedule(bb.get()[gvar])
    schedule(sch)
    bb.update_func(gvar, sch.mod["main"].with_attr("tirx.is_scheduled", True)
                   .with_attr("op_pattern", OPAQUE))
    return bb.emit(call)


def converters(registry) -> dict:
    """``{op type: converter}`` for every kernel rule of ``registry`` (for the importer's table)."""
    return {key: rule.converter() for key, rule in registry.kernels().items()}
