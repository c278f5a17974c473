"""Transposes that ConvertLayout leaves behind, removed (Relax passes run after it).

ConvertLayout turns convolutions to NHWC and carries that layout through the operators that have
layout inference. An operator without it (``reshape`` above all) gets its input transposed back to
NCHW, and the next convolution transposes again. Two patterns of this kind cost real time in
detection models (measured on the PP-OCR detector: about 6 ms of 35):

* :func:`nhwc_depth_to_space`: ``DepthToSpace`` (the ONNX importer's reshape -> permute ->
  reshape in NCHW; also what ``ConvTranspose`` becomes, see :mod:`mmopt.codegen.import_legalize`)
  is rewritten to the same three steps on the NHWC tensor, followed by one transpose to NCHW: the
  element loop then copies whole channel vectors (``DCR`` mode: contiguous reads and writes)
  instead of gathering single floats across planes.
* :func:`cancel_transposes`: ``permute_dims(f(permute_dims(x, P)), P^-1)`` where ``f`` is a chain
  of element-wise operators (unary, or binary with a small second operand, such as a per-channel
  scale) becomes ``f'(x)``: the operator runs in the layout of ``x``, small operands are permuted
  instead (constants fold at compile time).

Both are exact (data movement only).
"""

from __future__ import annotations

import numpy as np

from mmopt.codegen.relax_util import static_shape

#: element-wise operators with one tensor operand (attributes are kept as they are)
_UNARY = frozenset({
    "relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.sigmoid",
    "relax.tanh", "relax.exp", "relax.negative", "relax.sqrt", "relax.rsqrt", "relax.abs",
    "relax.clip", "relax.astype", "relax.round", "relax.floor", "relax.ceil", "relax.erf",
    "relax.log",
})
#: element-wise operators with two operands (broadcasting)
_BINARY = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.power",
})
#: a binary operator's other operand is permuted along when it has at most this many elements
_SMALL_OPERAND = 1 << 16


def _axes(call) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


def nhwc_depth_to_space():
    """``reshape(permute(reshape(permute(x, NHWC->NCHW))))`` of a depth-to-space (modes DCR and
    CRD) -> the same on ``x`` in NHWC, then ``permute(., NHWC->NCHW)``."""
    from tvm import relax
    from tvm.relax.dpl import is_op, wildcard

    from mmopt.codegen.relax_util import pattern_pass

    to_nchw = is_op("relax.permute_dims")(wildcard())
    split = is_op("relax.reshape")(to_nchw, wildcard())
    shuffle = is_op("relax.permute_dims")(split)
    pattern = is_op("relax.reshape")(shuffle, wildcard())

    def rewrite(expr, matches):
        src = matches[to_nchw]
        x = src.args[0]
        x_shape = static_shape(x)
        six = static_shape(matches[split])
        out = static_shape(expr)
        if (_axes(src) != [0, 3, 1, 2] or x_shape is None or six is None or out is None
                or len(six) != 6 or len(out) != 4):
            return expr
        n, h, w, depth = x_shape
        axes = _axes(matches[shuffle])
        if axes == [0, 3, 4, 1, 5, 2]:  # DCR: [N, b, b, C, H, W] -> [N, C, H, b, W, b]
            b, c = six[1], six[3]
            if six != [n, b, b, c, h, w]:
                return expr
            nhwc6, nhwc_axes = [n, h, w, b, b, c], [0, 1, 3, 2, 4, 5]
        elif axes == [0, 1, 4, 2, 5, 3]:  # CRD: [N, C, b, b, H, W] -> [N, C, H, b, W, b]
            c, b = six[1], six[2]
            if six != [n, c, b, b, h, w]:
                return expr
            nhwc6, nhwc_axes = [n, h, w, c, b, b], [0, 1, 4, 2, 5, 3]
        else:
            return expr
        if depth != c * b * b or out != [n, c, h * b, w * b]:
            return expr
        y = relax.op.reshape(x, nhwc6)
        y = relax.op.permute_dims(y, nhwc_axes)  # [N, H, b, W, b, C]
        y = relax.op.reshape(y, [n, h * b, w * b, c])
        return relax.op.permute_dims(y, [0, 3, 1, 2])

    return pattern_pass("mmopt_nhwc_depth_to_space", pattern, rewrite)


def _inverse(axes: list[int]) -> list[int]:
    inv = [0] * len(axes)
    for i, a in enumerate(axes):
        inv[a] = i
    return inv


def cancel_transposes():
    """``permute_dims(f(permute_dims(x, P)), Q)`` with ``Q = P^-1`` and ``f`` a chain of
    element-wise operators whose intermediate results have no other use -> ``f'(x)``."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from mmopt.codegen.relax_util import bindings, users

    @mutator
    class _Cancel(PyExprMutator):
        def __init__(self, mod, bound, uses):
            super().__init__(mod)
            self.bound = bound  # var -> the call it is bound to (dataflow vars of the function)
            self.uses = uses  # var -> number of uses
            self.changed = 0

        def _chain(self, value, q):
            """(source x, [element-wise calls, outermost first]) or None."""
            chain = []
            cur = value
            while isinstance(cur, relax.Var) and cur in self.bound:
                call = self.bound[cur]
                name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
                if name == "relax.permute_dims":
                    p = _axes(call)
                    if p is not None and chain and len(p) == len(q) and _inverse(p) == q:
                        return call.args[0], chain
                    return None
                if self.uses.get(cur, 0) != 1:
                    return None  # an intermediate result used elsewhere: keep the chain
                if name in _UNARY:
                    chain.append(call)
                    cur = call.args[0]
                elif name in _BINARY:
                    tensor, other = self._operands(call, len(q))
                    if tensor is None:
                        return None
                    chain.append(call)
                    cur = call.args[tensor]
                else:
                    return None
            return None

        @staticmethod
        def _operands(call, rank):
            """(index of the tensor operand, index of the small operand) of a binary call."""
            shapes = [static_shape(a) for a in call.args]
            out = static_shape(call)
            if out is None or len(out) != rank or any(s is None for s in shapes):
                return None, None
            for i in (0, 1):
                big, small = shapes[i], shapes[1 - i]
                if (big == out and int(np.prod(small, dtype=np.int64)) <= _SMALL_OPERAND
                        and len(small) in (0, rank)):
                    return i, 1 - i
            return None, None

        def visit_var_binding_(self, binding):
            value = binding.value
            if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                    and value.op.name == "relax.permute_dims" and _axes(value) is not None):
                found = self._chain(value.args[0], _axes(value))
                if found is not None:
                    x, chain = found
                    q = _axes(value)
                    cur = x
                    for call in reversed(chain):
                        if call.op.name in _UNARY:
                            args = [cur] + list(call.args[1:])
                        else:
                            tensor, small = self._operands(call, len(q))
                            other = call.args[small]
                            if len(static_shape(other)) == len(q):
                                other = self.builder_.emit(relax.op.permute_dims(other, q))
                            args = [None, None]
                            args[tensor], args[small] = cur, other
                        cur = self.builder_.emit(relax.Call(call.op, args, call.attrs,
                                                            call.ty_args))
                    self.changed += 1
                    self.set_var_remap(binding.var, cur)
                    return
            super().visit_var_binding_(binding)

    def _bindings(func):
        bound = {var: value for var, value in bindings(func).items()
                 if isinstance(value, relax.Call)}
        return bound, {var: len(readers) for var, readers in users(func).items()}

    @tvm.transform.module_pass(opt_level=0, name="mmopt_cancel_transposes")
    def _pass(mod, _ctx):
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
                bound, uses = _bindings(func)
                worker = _Cancel(mod, bound, uses)
                new = worker.visit_expr(func)
                if worker.changed:
                    mod[gvar] = relax.analysis.remove_all_unused(new)
        return mod

    return _pass
