"""mmopt.extend: teach mmopt operators it does not know.

An op is registered by ``(domain, op_type, since_version)`` with one implementation:

* an **ONNX-level decomposition** into ops mmopt compiles -- an onnxscript function (its body is
  inlined with the node's attributes), a function ``fn(node, op)`` that builds the replacement, or
  a :class:`Decomposition` class with ``check``/``rewrite`` (how mmopt's own decompositions are
  written: :mod:`mmopt.codegen.decompose` registers them through this API too);
* a **kernel-level implementation**: Relax code, or a TE compute with an optional default
  schedule (:mod:`mmopt.extend.kernels`);

and optionally a **numpy reference** (``reference=``), which verification and tests use when
onnxruntime cannot run the op.

::

    from mmopt import extend
    from onnxscript import script, opset18 as op, values

    acme = values.Opset("acme.ops", 1)

    def swish_reference(x, beta=1.0):
        return x / (1 + np.exp(-beta * x))

    @extend.decomposition("acme.ops", "Swish", reference=swish_reference)
    @script(acme)
    def swish(X, beta: float = 1.0):
        return X * op.Sigmoid(X * beta)

Plugins are found through the Python entry-point group ``mmopt.extensions``
(:mod:`mmopt.extend.plugins`) or given as ``--plugin FILE.py`` to any command that loads a model;
``mmopt inspect --support MODEL`` shows which extension handles which node. See
``docs/extending.md`` for worked examples.
"""

from __future__ import annotations

from collections.abc import Callable

from mmopt.extend._registry import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    Extension,
    Registry,
    default_registry,
    registry,
)
from mmopt.extend.functions import BuilderDecomposition, FunctionDecomposition, OpBuilder
from mmopt.extend.kernels import KERNEL_DOMAIN, KernelRule
from mmopt.extend.plugins import PluginError, load_entry_points, load_plugin
from mmopt.extend.rules import DEFAULT_DOMAINS, Context, Decomposition, Tape


def register(rule: Decomposition, *, reference: Callable | None = None,
             source: str | None = None) -> Decomposition:
    """Register a rule instance (a :class:`Decomposition` subclass, :class:`KernelRule`, ...).

    ``reference``: ``fn(*inputs, **attributes) -> array | tuple`` computing the op in numpy.
    ``source`` defaults to the plugin being loaded, else the rule's module."""
    return default_registry().register(rule, source=source, reference=reference)


def decomposition(domain: str, op_type: str, *, since_version: int = 1, name: str | None = None,
                  check: Callable | None = None, reference: Callable | None = None,
                  always: bool = False):
    """Decorator: register an ONNX-level decomposition of ``domain::op_type``.

    Decorates an onnxscript ``@script()`` function (or takes an ``onnx.FunctionProto``): the node
    becomes the function's body; or a plain function ``fn(node, op)`` returning the replacement's
    output value(s), built with ``op`` (:class:`OpBuilder`). ``check(node) -> str | None`` may
    decline a node with a reason (shown by ``inspect --support``). ``always``: also for a
    default-domain op TVM converts itself."""
    def wrap(fn):
        if hasattr(fn, "to_function_proto") or type(fn).__name__ == "FunctionProto":
            rule = FunctionDecomposition(domain, op_type, fn, since_version=since_version,
                                         name=name, check=check, always=always)
        else:
            rule = BuilderDecomposition(domain, op_type, fn, since_version=since_version,
                                        name=name, check=check, always=always)
        register(rule, reference=reference)
        return fn

    return wrap


def kernel(domain: str, op_type: str, *, since_version: int = 1, te: bool = False,
           schedule: Callable | None = None, name: str | None = None,
           check: Callable | None = None, reference: Callable | None = None,
           always: bool = False):
    """Decorator: register a kernel-level implementation of ``domain::op_type``.

    Decorates ``fn(bb, inputs, attrs) -> relax.Expr`` (Relax), or with ``te=True``
    ``fn(*inputs, **attrs) -> te.Tensor`` (a TE compute; ``schedule(sch)`` schedules its PrimFunc).
    See :mod:`mmopt.extend.kernels`."""
    def wrap(fn):
        rule = KernelRule(domain, op_type, relax=None if te else fn, te=fn if te else None,
                          schedule=schedule, since_version=since_version, name=name, check=check,
                          always=always)
        register(rule, reference=reference)
        return fn

    return wrap


def register_reference(domain: str, op_type: str, fn: Callable, *, since_version: int = 1
                       ) -> Callable:
    """A numpy reference for an op however it is compiled (also usable as ``reference=``)."""
    return default_registry().register_reference(domain, op_type, fn,
                                                 since_version=since_version)


def reference(domain: str, op_type: str, *, since_version: int = 1):
    """Decorator form of :func:`register_reference`."""
    def wrap(fn):
        register_reference(domain, op_type, fn, since_version=since_version)
        return fn

    return wrap


__all__ = [
    "BUILTIN", "DEFAULT_DOMAINS", "ENTRY_POINT_GROUP", "KERNEL_DOMAIN",
    "BuilderDecomposition", "Context", "Decomposition", "Extension", "FunctionDecomposition",
    "KernelRule", "OpBuilder", "PluginError", "Registry", "Tape",
    "decomposition", "default_registry", "kernel", "load_entry_points", "load_plugin", "reference",
    "register", "register_reference", "registry",
]
