"""Vectorizable exponentials on CPUs: the code-generation option ``fast_math``.

LLVM compiles TIR's ``exp``, ``tanh`` and ``erf`` (and ``sigmoid``, which TVM writes with ``exp``) on
x86 and AArch64 to one call of the C library per element: the vector loops around them run
scalar. Where a model spends its time in such functions -- GELU's ``erf`` on a transformer's MLP
activations, softmax over attention scores, the sigmoid of SiLU/Swish on every activation of an
EfficientNet -- that call is the kernel's cost (ViT-Tiny's MLP kernel: 1.7 ms of which the
matrix product is 0.5 ms).

With ``fast_math`` (on by default for CPU targets) the Relax operators are computed with mmopt's
exponential (:func:`_exp`) and TVM's ``topi.fast_erf`` / ``fast_tanh`` (and
``topi.nn.fast_softmax`` on short rows) instead, plain arithmetic (range reduction, a polynomial,
exponent bits) that vectorizes:

* ``exp(x)``: ``2^n · p(r)`` with ``n = round(x / ln 2)`` and ``r = x - n ln 2`` in
  ``[-ln2/2, ln2/2]`` (:func:`_exp`, mmopt's own, cheaper than ``topi.fast_exp``: the rounding
  is one fused multiply-add whose integer bits are the exponent; see there); input clamped to
  [-87, 88], so ``exp`` of a larger number is about 1.7e38 instead of ``inf``;
* ``erf(x)``: a rational function of ``x``, clamped to +-4 (``erf(4)`` rounds to 1 in float32);
* ``tanh(x)``: a rational function of ``x``, clamped to +-9;
* ``sigmoid(x) = 1 / (1 + exp(-x))`` and SiLU ``x / (1 + exp(-x))`` on a cheaper form of the
  same exponential (:func:`_logistic_denominator`: a logistic value needs the exponential's
  accuracy relative to 1, not to itself), ``softmax`` with the exponential above and GELU
  ``x · ½(1 + erf(x / √2))``.

Measured over 2^20 points against float64 (``mmopt/codegen/fast_math_test.py``): relative
error at most 1e-7 for ``exp`` on [-80, 80], 3e-7 for ``tanh``, absolute at most 4e-7 for ``erf``,
i.e. a few float32 ulps (rounding alone is 6e-8), within every verification tolerance.
Float16 and float64 operators are left as they are. ``--no-fast-math`` keeps the C library's
functions (for bit-level comparisons with a reference that uses them, or overflow to ``inf``).
"""

from __future__ import annotations

import math

#: the float32 Relax operators this pass replaces
OPS = ("relax.exp", "relax.erf", "relax.tanh", "relax.sigmoid", "relax.nn.softmax",
       "relax.nn.gelu", "relax.nn.silu")


#: ``exp``'s input is clamped to this range: ``n`` stays within the normal exponents (-126..127)
_EXP_LO, _EXP_HI = -87.0, 88.0
#: ``1.5 * 2^23 + 127``: adding it to ``x log2(e)`` (|x log2(e)| < 128) rounds to an integer
#: ``n`` and leaves ``n + 127`` (the biased exponent of ``2^n``) in the low mantissa bits
_ROUNDER = 12582912.0 + 127.0
#: ... whose bit pattern, subtracted from the sum's, leaves ``n`` as an integer
_ROUNDER_BITS = 0x4B40007F
#: ``ln 2`` in two parts (Cody and Waite): ``n * _LN2_HI`` is exact in float32 for every
#: ``|n| <= 127`` (the constant has 9 significant bits), so ``x - n ln 2`` loses no bits
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4


def _exp_value(v):
    """``exp(v)`` of a float32 TIR expression, in vectorizable arithmetic.

    ``t = x log2(e) + 1.5·2^23 + 127`` (``x``: ``v`` clamped to [-87, 88]) is one fused
    multiply-add that rounds ``x log2(e)`` to the nearest integer ``n``: at that magnitude a
    float32 has no fraction bits, and its low mantissa bits hold ``n + 127``, the biased exponent
    of ``2^n``; shifted left by 23 they are the bits of ``2^n`` itself. ``n`` as a float comes
    from the same bits (integer difference from the constant's bits: TVM's simplifier would fold
    the float ``t - 1.5·2^23 - 127`` away). Then ``r = x - n ln 2`` (two-part ``ln 2``, exact
    first product), ``|r| <= ln2/2``, and ``exp(r)`` is its Taylor polynomial to degree 7
    (truncation below 2e-9 relative on that interval): ``exp(x) = 2^n · p(r)``.

    18 vector operations, against ``topi.fast_exp``'s 23 (its rounding is a multiply, an add, a
    floor, a conversion, an add of the bias and the shift) -- measured on a Zen 5 core, SiLU
    over 128 Ki floats in L2: 14.7 -> 11.2 us (AVX-512). Relative error at most 1e-7 on [-80, 80]
    (``topi.fast_exp``: 3e-7, its ``ln 2`` is one float32 constant)."""
    from tvm import tirx

    def f32(c):
        return tirx.const(c, "float32")

    x = tirx.max(tirx.min(v, f32(_EXP_HI)), f32(_EXP_LO))
    t = x * f32(1.4426950408889634) + f32(_ROUNDER)
    bits = tirx.reinterpret("int32", t)
    n = (bits - tirx.const(_ROUNDER_BITS, "int32")).astype("float32")
    r = (x - n * f32(_LN2_HI)) - n * f32(_LN2_LO)
    p = f32(1.0 / 5040)
    for k in (720, 120, 24, 6, 2):
        p = p * r + f32(1.0 / k)
    p = (p * r) * r + r + f32(1.0)
    return p * tirx.reinterpret("float32", bits << 23)


def _exp(x):
    from tvm import te

    return te.compute(x.shape, lambda *i: _exp_value(x(*i)), name="fast_exp")


#: ``exp(-s)`` on ``|s| <= ln2/2``: the degree-6 polynomial of least maximum relative error
#: (1.9e-9 in exact arithmetic; fitted by iteratively reweighted least squares on Chebyshev
#: nodes), coefficients of ``s^0 .. s^6``
_EXP_NEG_POLY = (1.0000000005543264, -1.0000000363224153, 0.49999992077366573,
                 -0.16666420172473947, 0.041668226121644815, -0.008374815628887028,
                 0.0013836815073647035)
#: the logistic functions' input is clamped to this range (``-x`` within ``exp``'s, above)
_LOGISTIC_LO, _LOGISTIC_HI = -_EXP_HI, -_EXP_LO


def _logistic_denominator(v):
    """``1 + exp(-v)`` of a float32 TIR expression: the denominator of ``sigmoid(v)`` and
    ``silu(v)``, 14 vector operations where ``1 + _exp_value(-v)`` takes 20.

    The rounding of :func:`_exp_value` applied to ``-x`` (``x``: ``v`` clamped to [-88, 87]),
    with the sign folded into the constants: ``n = round(-x log2(e))``, then ``s = x + n ln 2 =
    -r`` in one fused multiply-add with ``ln 2`` as one float32 constant, and ``exp(r) =
    exp(-s)`` from a degree-6 minimax polynomial in ``s`` (:data:`_EXP_NEG_POLY`; the Taylor
    polynomial of the same accuracy has degree 7, one more multiply-add, and a negation), so that
    ``1 + 2^n exp(-s)`` is a last multiply-add. What this gives up against :func:`_exp_value`:
    the one-constant ``ln 2`` (off by 1.9e-9) makes ``s`` off by up to ``|n|`` times that, a
    relative error of ``exp(-v)`` growing to 2.4e-7 at ``|v| = 87``, where the logistic value is
    within 1e-37 of 0 or 1. Measured (``fast_math_test``): sigmoid within 8.6e-8 of float64 on
    [-40, 40] (the C library's ``expf`` in the same graph: 8.6e-8), relative error at most 3.2e-7
    on [-87, 87]; SiLU on a Zen 5 core, in EfficientNet's 112x112x96 expand convolution (16 input
    channels: as many multiply-adds per output as the sigmoid's operations), 176 -> 149 us of
    which the convolution with a ReLU takes 90."""
    from tvm import tirx

    def f32(c):
        return tirx.const(c, "float32")

    x = tirx.max(tirx.min(v, f32(_LOGISTIC_HI)), f32(_LOGISTIC_LO))
    t = x * f32(-1.4426950408889634) + f32(_ROUNDER)
    bits = tirx.reinterpret("int32", t)
    n = (bits - tirx.const(_ROUNDER_BITS, "int32")).astype("float32")
    s = x + n * f32(math.log(2.0))
    p = f32(_EXP_NEG_POLY[-1])
    for c in reversed(_EXP_NEG_POLY[:-1]):
        p = p * s + f32(c)
    return p * tirx.reinterpret("float32", bits << 23) + f32(1.0)


def _sigmoid(x):
    from tvm import te

    return te.compute(x.shape, lambda *i: 1.0 / _logistic_denominator(x(*i)), name="fast_sigmoid")


def _gelu(x):
    from tvm import te, topi

    scaled = te.compute(x.shape, lambda *i: x(*i) * (1.0 / math.sqrt(2.0)), name="gelu_scale")
    e = topi.fast_erf(scaled)
    return te.compute(x.shape, lambda *i: x(*i) * (0.5 + 0.5 * e(*i)), name="fast_gelu")


def _silu(x):
    from tvm import te

    return te.compute(x.shape, lambda *i: x(*i) / _logistic_denominator(x(*i)), name="fast_silu")


#: the output block of :func:`_softmax` (:mod:`mmopt.codegen.row_local` schedules the function
#: that ends with it row by row)
SOFTMAX_OUTPUT = "softmax_norm"

#: partial maxima/sums :func:`_softmax` keeps per row: a whole AVX-512 vector, two AVX2 or four
#: NEON vectors (more independent chains than one vector, no more than a row of 32 needs)
_SOFTMAX_PARTIALS = 16


def _row_reduce(x, combine, init, name: str, identity):
    """``combine`` over the last axis of ``x`` as ``_SOFTMAX_PARTIALS`` running partials (element
    ``k`` of a row goes to partial ``k % P``) folded at the end, the rest of the row (``R % P``
    elements) folded in after: a reduction the CPU schedule turns into vector operations with no
    predicate (where the generated code otherwise runs one dependent scalar chain per row).

    A row of symbolic length may be shorter than ``P`` (the partials then see nothing), or a
    multiple of it (nothing left after them); a reduction over an empty range writes nothing, not
    even its initial value. So for such a row the fold and the rest are one reduction, never
    empty, over the ``P`` partials (``identity`` in place of each when the row is shorter than
    ``P``) followed by the ``R % P`` remaining elements.
    """
    from tvm import te, tirx

    *rows, width = x.shape
    static = isinstance(width, tirx.IntImm)
    if static:
        width = int(width)
    lanes = _SOFTMAX_PARTIALS
    head = width // lanes * lanes
    ko = te.reduce_axis((0, width // lanes), name=f"{name}_ko")
    partial = te.compute((*rows, lanes), lambda *i: combine(x(*i[:-1], ko * lanes + i[-1]), ko),
                         name=f"{name}_partial")
    if not static:
        t = te.reduce_axis((0, lanes + width % lanes), name=f"{name}_t")

        def element(*i):
            kept = tirx.if_then_else(width >= lanes, partial(*i, tirx.min(t, lanes - 1)),
                                     tirx.const(identity, x.dtype))
            return tirx.if_then_else(t < lanes, kept, x(*i, head + t - lanes))

        return te.compute(rows, lambda *i: combine(element(*i), t), name=name)
    j = te.reduce_axis((0, lanes), name=f"{name}_j")
    total = te.compute(rows, lambda *i: combine(partial(*i, j), j), name=f"{name}_fold")
    if head == width:
        return total
    t = te.reduce_axis((0, width - head), name=f"{name}_t")
    tail = te.compute(rows, lambda *i: combine(x(*i, head + t), t), name=f"{name}_tail")
    return te.compute(rows, lambda *i: init(total(*i), tail(*i)), name=name)


def _softmax(x, axis: int):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``, with :func:`_exp`; along the last axis
    of a row of at least two vectors (or of symbolic length: a dynamic sequence) the max and the
    sum are :func:`_row_reduce` reductions (ViT-Tiny's attention, 3 x 197 rows of 197 scores:
    175 -> 70 us on one Zen 4 core), and the row is multiplied by the reciprocal of its sum (one
    division per row instead of one per element: a vector division takes several times a
    multiplication's throughput; 50 -> 38 us on that softmax at 2 threads; the product differs
    from the quotient by at most an ulp or so), else ``topi.nn.fast_softmax``. CPU schedules
    compute it row by row (:mod:`mmopt.codegen.row_local`)."""
    from tvm import te, tirx, topi

    ndim = len(x.shape)
    axis = axis % ndim
    width = x.shape[-1]
    if axis != ndim - 1 or isinstance(width, tirx.IntImm) and int(width) < 2 * _SOFTMAX_PARTIALS:
        return topi.nn.fast_softmax(x, axis)
    peak = _row_reduce(x, lambda v, ax: te.max(v, axis=ax), te.max, "softmax_max",
                       -3.4028234663852886e38)
    delta = te.compute(x.shape, lambda *i: x(*i) - peak(*i[:-1]), name="softmax_delta")
    e = _exp(delta)
    total = _row_reduce(e, lambda v, ax: te.sum(v, axis=ax), lambda a, b: a + b, "softmax_sum",
                        0.0)
    scale = te.compute(total.shape, lambda *i: tirx.const(1.0, x.dtype) / total(*i),
                       name="softmax_scale")
    return te.compute(x.shape, lambda *i: e(*i) * scale(*i[:-1]), name=SOFTMAX_OUTPUT)


def _replacement(call):
    """``(te function, extra args)`` computing ``call`` with vectorizable arithmetic, or None."""
    from tvm import topi

    name = call.op.name
    if name == "relax.exp":
        return _exp, ()
    if name == "relax.erf":
        return topi.fast_erf, ()
    if name == "relax.tanh":
        return topi.fast_tanh, ()
    if name == "relax.sigmoid":
        return _sigmoid, ()
    if name == "relax.nn.gelu":
        return _gelu, ()
    if name == "relax.nn.silu":
        return _silu, ()
    if name == "relax.nn.softmax":
        return _softmax, (int(call.attrs.axis),)
    return None


def _dtype(expr) -> str | None:
    """The element type of a tensor-valued Relax expression (None: not a tensor)."""
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if ty is not None and hasattr(ty, "dtype") else None


def fast_math_pass():
    """A Relax module pass computing the float32 operators of :data:`OPS` with vectorizable
    arithmetic (see the module docstring). Runs before operator legalization."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _FastMath(PyExprMutator):
        def visit_call_(self, call):
            op = getattr(call, "op", None)
            found = (_replacement(call) if isinstance(op, tvm.ir.Op) and op.name in OPS
                     and _dtype(call) == "float32" else None)
            call = super().visit_call_(call)
            if found is None:
                return call
            func, extra = found
            return self.builder_.call_te(func, call.args[0], *extra)

    @tvm.transform.module_pass(opt_level=0, name="mmopt_fast_math")
    def _pass(mod, _ctx):
        mutator_ = _FastMath(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator_.builder_.update_func(gv, mutator_.visit_expr(func))
        return mutator_.builder_.get()

    return _pass
