"""The requantizing epilogue of an integer convolution, as one multiply-add per channel.

After :func:`mmopt.codegen.quantized.lower_qdq` a quantized convolution (or matmul) whose output
is quantized again ends in this chain of element-wise operators, all of it fused into the
convolution's write-back and run once per output element::

    y = float32(acc - c) * s          # dequantize the integer sums (c, s: per output channel)
    y = y + b                         # the bias (DequantizeLinear of the int32 bias, folded)
    y = clamp(y, lo, hi)              # optional: a ReLU/ReLU6 left in float (maximum/minimum)
    q = round(y * (1 / sy)) ...       # QuantizeLinear of the output: + zy, clip, cast

:func:`fold_requantization` rewrites the part before the rounding to::

    q = round(clamp(float32(acc - c) * (s / sy) + b / sy, lo / sy, hi / sy)) ...

Two per-channel constants instead of three, one vector multiply fewer, and the multiply and add
contract to one FMA. The clamps move across the multiplication exactly: for ``k > 0``
``fl(min(y, h) * k) = min(fl(y * k), fl(h * k))``, because rounding is monotone. The integer
correction ``acc - c`` stays an integer subtraction: folded into the bias it would subtract two
large float32 values (``acc`` can exceed 2**24 on deep reductions), which is not exact.

Numerics: ``fl(fl(fl(x * s) + b) * k)`` (the QDQ order) and ``fl(x * fl(s * k) + fl(b * k))`` differ
by a few float32 ulps of the pre-rounding value; a result at a rounding tie can move by one
quantization step, as it could already between onnxruntime's own kernels and its reference
execution. The integer accumulation itself is exact either way.
"""

from __future__ import annotations

import numpy as np

from mmopt.codegen.relax_util import bindings, const_array, op_name, tensor_dtype, users

#: clamps that may sit between the bias and the output quantization (constant scalar bounds)
_CLAMPS = ("relax.maximum", "relax.minimum")


def _scalar(expr) -> float | None:
    arr = const_array(expr)
    if arr is None or arr.size != 1 or arr.dtype != np.float32:
        return None
    return float(arr.reshape(()))


def _match(expr, table, uses):
    """``(x, s, b, clamps)`` when ``expr`` (the operand of the output quantization's multiply) is
    ``clamp(astype(x, float32) * s + b)`` on an integer ``x`` with constant per-channel ``s`` and
    ``b`` (``b`` may be absent: None), each intermediate read only here; else None."""

    def bound(var, wanted):
        value = table.get(var)
        if value is None or len(uses.get(var, ())) != 1 or op_name(value) not in wanted:
            return None
        return value

    clamps = []  # outermost first
    value = bound(expr, _CLAMPS)
    while value is not None:
        limit = _scalar(value.args[1])
        if limit is None:
            return None
        clamps.append((op_name(value), limit))
        expr = value.args[0]
        value = bound(expr, _CLAMPS)
    bias = None
    value = bound(expr, ("relax.add",))
    if value is not None:
        bias = const_array(value.args[1])
        if bias is None or bias.dtype != np.float32:
            return None
        expr = value.args[0]
    value = bound(expr, ("relax.multiply",))
    if value is None:
        return None
    scale = const_array(value.args[1])
    if scale is None or scale.dtype != np.float32:
        return None
    value = bound(value.args[0], ("relax.astype",))
    if value is None or tensor_dtype(value) != "float32" or tensor_dtype(value.args[0]) != "int32":
        return None
    return value.args[0], scale, bias, clamps


def fold_requantization():
    """The Relax module pass described in the module docstring. Runs after ``lower_qdq`` (the
    bias is folded to a constant first: it is imported as ``reshape(dequantize(constants))``)."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    pattern = is_op("relax.multiply")(wildcard(), is_const())

    def fold(func):
        table, uses = bindings(func), users(func)

        def rewrite(expr, _matches):
            inverse = _scalar(expr.args[1])
            if inverse is None or inverse <= 0 or tensor_dtype(expr) != "float32":
                return expr
            found = _match(expr.args[0], table, uses)
            if found is None:
                return expr
            x, scale, bias, clamps = found
            k = np.float32(inverse)
            y = relax.op.multiply(relax.op.astype(x, "float32"),
                                  relax.const((scale * k).astype(np.float32)))
            if bias is not None:
                y = relax.op.add(y, relax.const((bias * k).astype(np.float32)))
            for name, limit in reversed(clamps):
                op = relax.op.maximum if name == "relax.maximum" else relax.op.minimum
                y = op(y, relax.const(np.float32(limit) * k, "float32"))
            return y

        return rewrite_call(pattern, rewrite, func)

    @tvm.transform.module_pass(opt_level=0, name="mmopt_fold_requantization")
    def _pass(mod, _ctx):
        from mmopt.codegen.relax_util import module_uses

        if not module_uses(mod, ("relax.round",)):
            return mod
        mod = relax.transform.FoldConstant()(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gvar] = fold(func)
        return relax.transform.DeadCodeElimination()(mod)

    return _pass
