"""Small generic helpers over Relax modules, shared by the codegen stages.

Each stage that rewrites the imported Relax graph (QDQ lowering in :mod:`mmopt.codegen.quantized`,
weight packing in :mod:`mmopt.codegen.packed_conv`, Winograd in :mod:`mmopt.codegen.winograd`, the
layout clean-ups, the rewrites listed in :mod:`mmopt.codegen.pipeline`) asks the same questions of
the graph: what operator does this call run, what is this constant's value, does the module use an
operator at all (so a pass can return early). They live here, in one place, rather than in the
first feature that needed them.
"""

from __future__ import annotations

import numpy as np


def const_array(expr):
    """The numpy value of a constant (``None`` for anything else)."""
    value = getattr(expr, "value", None)
    if value is None or not hasattr(value, "numpy"):
        return None
    try:
        return np.asarray(value.numpy())
    except Exception:  # noqa: BLE001 - not a tensor constant
        return None


def op_name(expr) -> str | None:
    """The operator a Relax call runs, e.g. ``"relax.nn.conv2d"`` (``None``: not an operator call)."""
    op = getattr(expr, "op", None)
    return getattr(op, "name", None) if op is not None else None


def tensor_dtype(expr) -> str:
    """The element type of a tensor-valued Relax expression."""
    return str(expr.ty.dtype)


def static_shape(expr) -> list[int] | None:
    """The dimensions of a tensor-valued Relax expression when all are constants, else None."""
    from tvm import tirx

    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None:
        return None
    shape = getattr(shape, "values", shape)
    try:
        dims = list(shape)
    except TypeError:
        return None
    if not all(isinstance(d, tirx.IntImm) for d in dims):
        return None
    return [int(d) for d in dims]


def bindings(func) -> dict:
    """Every ``var -> value`` binding of a Relax function (all blocks)."""
    from tvm import relax

    table = {}
    body = func.body
    if isinstance(body, relax.SeqExpr):
        for block in body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    table[binding.var] = binding.value
    return table


def users(func) -> dict:
    """``{var: [vars whose binding reads it]}`` of a Relax function, one entry per read (``None``
    stands for the function's result)."""
    from tvm import relax

    def variables(expr) -> list:
        found = []
        relax.analysis.post_order_visit(
            expr, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
        return found

    table: dict = {}
    body = func.body
    for block in body.blocks:
        for binding in block.bindings:
            for var in variables(binding.value):
                table.setdefault(var, []).append(binding.var)
    for var in variables(body.body):
        table.setdefault(var, []).append(None)
    return table


def module_uses(mod, ops) -> bool:
    """Whether any Relax function of ``mod`` calls one of the operators named in ``ops``."""
    from tvm import relax

    wanted = set(ops)
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            for value in bindings(func).values():
                if op_name(value) in wanted:
                    return True
    return False


def pattern_pass(name: str, pattern, rewrite):
    """A module pass applying ``rewrite_call(pattern, rewrite, ...)`` to every Relax function."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gvar] = rewrite_call(pattern, rewrite, func)
        return mod

    return _pass


def hwio_weight(expr, lookup):
    """The HWIO weight of an NHWC conv as numpy (a constant, maybe behind permute_dims)."""
    from tvm import relax

    while isinstance(expr, relax.Var):
        value = lookup(expr)
        if value is None:
            return None
        expr = value
    arr = const_array(expr)
    if arr is not None:
        return arr
    if op_name(expr) == "relax.permute_dims":
        inner = hwio_weight(expr.args[0], lookup)
        if inner is not None:
            return np.transpose(inner, [int(a) for a in expr.attrs.axes])
    return None


def conv_output_size(extent, kernel: int, stride: int, dilation: int):
    """Output extent of a convolution over an (already padded) input ``extent``, which may be
    symbolic: ``(extent - (kernel - 1) * dilation - 1) // stride + 1``. For the TE convolutions
    the rewrites below emit."""
    return (extent - (kernel - 1) * dilation - 1) // stride + 1


def rewrite_dense_nhwc_convs(mod, rewrite):
    """Apply ``rewrite(call, hwio_weight_array, block_builder) -> expr | None`` to every NHWC/HWIO
    ``conv2d`` with ``groups == 1`` and constant weights in ``mod`` (None keeps the call)."""
    return rewrite_nhwc_convs(mod, rewrite, grouped=False)


def rewrite_nhwc_convs(mod, rewrite, *, grouped: bool, with_lookup: bool = False):
    """:func:`rewrite_dense_nhwc_convs` for the convolutions with ``groups == 1`` (``grouped``
    false) or with ``groups > 1`` (``grouped`` true: depthwise and grouped; their HWIO weights
    have ``IC / groups`` input channels). ``with_lookup``: ``rewrite`` also gets the binding
    lookup (``lookup(var)`` -> the expression bound to it, or None), to see the producer of the
    convolution's input."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Rewrite(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.mod_ = mod

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if op_name(call) != "relax.nn.conv2d":
                return call
            attrs = call.attrs
            if (str(attrs.data_layout) != "NHWC" or str(attrs.kernel_layout) != "HWIO"
                    or (int(attrs.groups) > 1) != grouped
                    or str(attrs.out_layout) not in ("", "NHWC")
                    or len(call.args[0].ty.shape) != 4):
                return call
            w = hwio_weight(call.args[1], self.lookup_binding)
            extra = (self.lookup_binding,) if with_lookup else ()
            new = (rewrite(call, w, self.builder_, *extra) if w is not None and w.ndim == 4
                   else None)
            return call if new is None else new

        def transform(self):
            for gvar, func in self.mod_.functions.items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gvar, self.visit_expr(func))
            return self.builder_.get()

    if not module_uses(mod, ("relax.nn.conv2d",)):
        return mod
    return relax.transform.DeadCodeElimination()(_Rewrite(mod).transform())
