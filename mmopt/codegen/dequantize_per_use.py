"""One dequantization per use: a shared 8-bit tensor is read as 8 bits by every consumer.

After QDQ lowering (:mod:`mmopt.codegen.quantized`) a DequantizeLinear is element-wise arithmetic
on an 8-bit tensor::

    x = (astype(q, float32) - z) * s

When ``x`` has several consumers (a squeeze-and-excitation block's input goes to the pooling and
to the rescale; a residual branch's to the add and to the next block), FuseOps can put the
arithmetic into one kernel only: the producer's. The producer then writes ``x`` in float32, four
bytes per element instead of one, and every consumer reads four (the PP-OCR detector's 160x160x96
SE input: 9.8 MB written and read twice per image, where ``q`` is 2.5 MB).

This pass gives every consumer its own copy of the arithmetic. FuseOps then fuses each copy into
its consumer, the producer's kernel ends at ``q`` (its quantizing epilogue), and the float values
exist only in registers. Nothing changes numerically: each copy computes the same float32 values.

Only consumers that FuseOps fuses element-wise producers into are given copies (element-wise
arithmetic, concatenation, resizing), and means: FuseOps does not fuse an element-wise producer
into a reduction, so a mean gets a kernel that reads ``q`` and sums ``(q - z) * s`` itself
(:func:`_dequantized_mean`). A copy feeding anything else (a float convolution) would become a
kernel of its own per consumer: a tensor with any other consumer is left as it is.
"""

from __future__ import annotations

from mmopt.codegen.relax_util import bindings, const_array, op_name, tensor_dtype, users

#: consumers into whose kernel FuseOps fuses an element-wise producer
_FUSING_CONSUMERS = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.concat", "relax.image.resize2d", "relax.mean",
})


def _dequantized(value, table) -> tuple | None:
    """``(q, float dtype, z | None, s)`` when ``value`` is ``(astype(q) - z) * s`` (or
    ``astype(q) * s``) of an 8-bit ``q`` with scalar constants ``z`` and ``s``, else None."""
    if op_name(value) != "relax.multiply":
        return None
    inner, scale = value.args
    if const_array(scale) is None or const_array(scale).size != 1:
        return None
    inner = table.get(inner, inner)
    zero = None
    if op_name(inner) == "relax.subtract":
        inner, zero = inner.args
        if const_array(zero) is None or const_array(zero).size != 1:
            return None
        inner = table.get(inner, inner)
    if op_name(inner) != "relax.astype" or tensor_dtype(inner.args[0]) not in ("uint8", "int8"):
        return None
    return inner.args[0], str(inner.attrs.dtype), zero, scale


def _dequantized_mean(q, axes, keepdims, zero, scale, dtype):
    """``mean((astype(q) - zero) * scale, axes)`` as one TE reduction that reads ``q``."""
    from tvm import te, tirx

    rank = len(q.shape)
    axes = sorted({a % rank for a in axes}) if axes else list(range(rank))
    reduce = {a: te.reduce_axis((0, q.shape[a]), f"k{a}") for a in axes}
    count = tirx.const(1, "int64")
    for a in axes:
        count = count * q.shape[a]
    kept = [d for a, d in enumerate(q.shape) if a not in reduce]
    shape = [1 if a in reduce else d for a, d in enumerate(q.shape)] if keepdims else kept

    def index(*out):
        free = iter(out if not keepdims else [o for a, o in enumerate(out) if a not in reduce])
        return [reduce[a] if a in reduce else next(free) for a in range(rank)]

    def value(*out):
        x = q(*index(*out)).astype(dtype)
        if zero is not None:
            x = x - tirx.const(zero, dtype)
        return te.sum(x * tirx.const(scale, dtype), axis=list(reduce.values()))

    total = te.compute(shape, value, name="dequantized_sum")
    return te.compute(shape, lambda *i: total(*i) / tirx.Cast(dtype, count),
                      name="dequantized_mean")


def dequantize_per_use():
    """The Relax module pass of the module docstring."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _PerUse(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.mod_ = mod
            self.shared = {}

        def _copy(self, var):
            q, dtype, zero, scale = self.shared[var]
            x = self.builder_.emit(relax.op.astype(self.visit_expr(q), dtype))
            if zero is not None:
                x = self.builder_.emit(relax.op.subtract(x, zero))
            return self.builder_.emit(relax.op.multiply(x, scale))

        def _arg(self, arg):
            if isinstance(arg, relax.Var) and arg in self.shared:
                return self._copy(arg)
            if isinstance(arg, relax.Tuple):
                return relax.Tuple([self._arg(field) for field in arg.fields])
            return self.visit_expr(arg)

        def _reads_shared(self, arg) -> bool:
            if isinstance(arg, relax.Tuple):
                return any(self._reads_shared(field) for field in arg.fields)
            return isinstance(arg, relax.Var) and arg in self.shared

        def _mean(self, call):
            q, dtype, zero, scale = self.shared[call.args[0]]
            attrs = call.attrs
            axes = [int(a) for a in attrs.axis] if attrs.axis is not None else []
            zero = None if zero is None else float(const_array(zero).reshape(()))
            return self.builder_.call_te(
                _dequantized_mean, self.visit_expr(q), axes, bool(attrs.keepdims), zero,
                float(const_array(scale).reshape(())), dtype, primfunc_name_hint="dequantized_mean")

        def visit_call_(self, call):
            # the call's arguments are still the original variables here
            if op_name(call) == "relax.mean" and self._reads_shared(call.args[0]):
                return self._mean(call)
            if op_name(call) in _FUSING_CONSUMERS and any(map(self._reads_shared, call.args)):
                return relax.Call(call.op, [self._arg(a) for a in call.args], call.attrs,
                                  call.ty_args)
            return self.visit_expr_post_order(call)

        def transform(self):
            for gvar, func in self.mod_.functions.items():
                if isinstance(func, relax.Function):
                    self.shared = _shared_dequantizations(func)
                    if self.shared:
                        self.builder_.update_func(gvar, self.visit_expr(func))
            return self.builder_.get()

    @tvm.transform.module_pass(opt_level=0, name="mmopt_dequantize_per_use")
    def _pass(mod, _ctx):
        if not any(isinstance(f, relax.Function) and _shared_dequantizations(f)
                   for f in mod.functions.values()):
            return mod
        return relax.transform.DeadCodeElimination()(_PerUse(mod).transform())

    return _pass


def _shared_dequantizations(func) -> dict:
    """``{var: _dequantized(...)}`` for each dequantized tensor read by two or more consumers,
    all of which FuseOps fuses element-wise producers into."""
    table, readers = bindings(func), users(func)
    shared = {}
    for var, value in table.items():
        found = _dequantized(value, table)
        uses = readers.get(var, [])
        if found is None or len(uses) < 2 or None in uses:
            continue
        if all(op_name(table.get(u)) in _FUSING_CONSUMERS for u in uses):
            shared[var] = found
    return shared
