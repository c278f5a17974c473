"""fuse_activations: decomposed activation subgraphs recognized as the single op they spell.

* HardSigmoid(x; α, β) = max(0, min(1, α·x + β)). Exporters write it as ``Clip(x + b, 0, h) / d`` with
  ``h = d`` (α = 1/d, β = b/d; PyTorch: b = 3, h = d = 6), ``Clip(x + b, 0, h) · (1/d)``, or
  ``Clip(x·a + b, 0, 1)`` (α = a, β = b; Paddle/Keras).
* HardSwish(x) = x · HardSigmoid(x; 1/6, 1/2) = x · Clip(x + 3, 0, 6) / 6: matched as
  ``(x · Clip(x + 3, 0, 6)) / 6``, ``(x · Clip(x + 3, 0, 6)) · (1/6)`` and
  ``x · HardSigmoid(x; 1/6, 1/2)``.
* GELU, erf form: ``0.5 · x · (1 + erf(x / √2))``; tanh form:
  ``0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))``. The outer product is matched in the four
  groupings exporters write (``(x·(1+t))·½``, ``(x·½)·(1+t)``, ``x·((1+t)·½)``, ``(x·(1+t))/2``) and
  the argument of erf/tanh is checked structurally (Div by √2 or Mul by 1/√2; x³ as Pow(x, 3) or
  x·x·x; the inner product distributed or not).
  Emitted as ONNX ``Gelu`` (``approximate="tanh"`` for the tanh form) from opset 20; below opset 20 as
  ``com.microsoft::Gelu`` / ``com.microsoft::FastGelu``, which onnxruntime runs and TVM's Relax ONNX
  importer converts (to ``nn.gelu`` / the tanh formula); float32 only there (the contrib kernels of
  onnxruntime's CPU provider).
* Softplus(x) = log(1 + eˣ): ``Log(Exp(x) + 1)``.
* Mish(x) = x · tanh(softplus(x)): ``x · Tanh(Softplus(x))`` → ``Mish`` from opset 18 (ONNX has no
  Mish before; below 18 the Softplus form is what remains).
* Sigmoid(x) = 1 / (1 + e⁻ˣ): ``1 / (1 + Exp(−x))`` and ``Reciprocal(1 + Exp(−x))`` → ``Sigmoid``;
  SiLU/Swish x · σ(x) written ``x / (1 + Exp(−x))`` → ``x · Sigmoid(x)``. ONNX has a ``Swish`` op only
  from opset 24 and TVM 0.27's importer has no converter for it, so ``x · Sigmoid(x)`` (two nodes,
  fused by every backend) is the form SiLU is canonicalized to.

Constants are compared with a relative tolerance of 1e-3 (exporters round √2, √(2/π) and 1/6).
"""

from __future__ import annotations

import math
from typing import ClassVar

import onnx_ir as ir
from onnxscript.rewriter import MatchResult

from mmopt.passes._rules import Rule, RulePass, attr, fail, is_scalar, scalar

_TOL = 1e-3


def _producer(value, op_type: str):
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
        return None
    return node


def _binary_with_const(value, op_type: str, operand, expected: float) -> bool:
    """``value = op_type(operand, c)`` (either order for commutative ops) with ``c ≈ expected``."""
    node = _producer(value, op_type)
    if node is None or len(node.inputs) != 2:
        return False
    a, b = node.inputs
    if a is operand and is_scalar(b, expected, _TOL):
        return True
    return op_type in ("Mul", "Add") and b is operand and is_scalar(a, expected, _TOL)


def _other_operand(node, operand):
    a, b = node.inputs
    if a is operand:
        return b
    if b is operand:
        return a
    return None


def _emitted_gelu(op, x, opset: int, tanh: bool, name: str):
    if opset >= 20:
        return op.Gelu(x, approximate="tanh" if tanh else "none", _name=name)
    return op.op("FastGelu" if tanh else "Gelu", x, _domain="com.microsoft", _version=1, _name=name)


def _name(value, suffix: str) -> str:
    node = value.producer()
    base = node.name if node is not None and node.name else (value.name or "act")
    return base.rsplit(".", 1)[0] + "." + suffix if "." in base else base + "_" + suffix


# ---------------------------------------------------------------------------------------- HardSigmoid


class FuseHardSigmoid(Rule):
    """Clip(x + b, 0, h) / d with h = d  →  HardSigmoid(α = 1/d, β = b/d)."""

    name = "fuse_hardsigmoid"
    commute = True
    min_opset = 11  # Clip with min/max inputs
    divide: ClassVar[bool] = True

    def pattern(self, op, x, b, lo, hi, d):
        clipped = op.Clip(op.Add(x, b), lo, hi)
        return op.Div(clipped, d) if self.divide else op.Mul(clipped, d)

    def _alpha_beta(self, b, hi, d):
        bias, high, div = scalar(b), scalar(hi), scalar(d)
        if bias is None or high is None or div is None or div == 0:
            return None
        scale = 1.0 / div if self.divide else div
        if not math.isclose(high * scale, 1.0, rel_tol=_TOL):
            return None
        return scale, bias * scale

    def check(self, context, x, b, lo, hi, d, **_) -> MatchResult:
        if not is_scalar(lo, 0.0):
            return fail("Clip min is not 0")
        if self._alpha_beta(b, hi, d) is None:
            return fail("Clip max times the scale is not 1")
        return MatchResult()

    def rewrite(self, op, x, b, lo, hi, d, **_):
        alpha, beta = self._alpha_beta(b, hi, d)
        return op.HardSigmoid(x, alpha=alpha, beta=beta)


class FuseHardSigmoidMul(FuseHardSigmoid):
    """Clip(x + b, 0, h) · (1/d)  →  HardSigmoid."""

    divide = False


class FuseHardSigmoidAffine(Rule):
    """Clip(x·a + b, 0, 1)  →  HardSigmoid(α = a, β = b)."""

    name = "fuse_hardsigmoid"
    commute = True
    min_opset = 11

    def pattern(self, op, x, a, b, lo, hi):
        return op.Clip(op.Add(op.Mul(x, a), b), lo, hi)

    def check(self, context, x, a, b, lo, hi, **_) -> MatchResult:
        if not (is_scalar(lo, 0.0) and is_scalar(hi, 1.0)):
            return fail("Clip bounds are not [0, 1]")
        if scalar(a) is None or scalar(b) is None:
            return fail("slope or offset is not a scalar constant")
        return MatchResult()

    def rewrite(self, op, x, a, b, lo, hi, **_):
        return op.HardSigmoid(x, alpha=scalar(a), beta=scalar(b))


# ------------------------------------------------------------------------------------------ HardSwish


class FuseHardSwish(Rule):
    """(x · Clip(x + 3, 0, 6)) / 6  →  HardSwish(x)."""

    name = "fuse_hardswish"
    commute = True
    min_opset = 14
    divide: ClassVar[bool] = True

    def pattern(self, op, x, three, lo, hi, d):
        gated = op.Mul(x, op.Clip(op.Add(x, three), lo, hi))
        return op.Div(gated, d) if self.divide else op.Mul(gated, d)

    def check(self, context, x, three, lo, hi, d, **_) -> MatchResult:
        if not (is_scalar(three, 3.0) and is_scalar(lo, 0.0) and is_scalar(hi, 6.0)):
            return fail("not Clip(x + 3, 0, 6)")
        if not is_scalar(d, 6.0 if self.divide else 1.0 / 6.0, _TOL):
            return fail("not divided by 6")
        return MatchResult()

    def rewrite(self, op, x, three, lo, hi, d, **_):
        return op.HardSwish(x)


class FuseHardSwishMul(FuseHardSwish):
    """(x · Clip(x + 3, 0, 6)) · (1/6)  →  HardSwish(x)."""

    divide = False


class FuseHardSwishFromHardSigmoid(Rule):
    """x · HardSigmoid(x; 1/6, 1/2)  →  HardSwish(x)."""

    name = "fuse_hardswish"
    commute = True
    min_opset = 14

    def pattern(self, op, x):
        return op.Mul(x, op.HardSigmoid(x, _outputs=["gate"]))

    def check(self, context, x, gate, **_) -> MatchResult:
        node = gate.producer()
        alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
        if not (math.isclose(alpha, 1 / 6, rel_tol=_TOL) and math.isclose(beta, 0.5, rel_tol=_TOL)):
            return fail("HardSigmoid is not (1/6, 1/2)")
        return MatchResult()

    def rewrite(self, op, x, gate, **_):
        return op.HardSwish(x)


# ----------------------------------------------------------------------------------------------- GELU


def _is_erf_argument(u, x) -> bool:
    """u = x / √2 or x · (1/√2)."""
    return (_binary_with_const(u, "Div", x, math.sqrt(2.0))
            or _binary_with_const(u, "Mul", x, 1.0 / math.sqrt(2.0)))


def _is_cube(v, x) -> bool:
    """v = Pow(x, 3), x·(x·x) or (x·x)·x."""
    if _binary_with_const(v, "Pow", x, 3.0):
        return True
    node = _producer(v, "Mul")
    if node is None:
        return False
    other = _other_operand(node, x)
    square = _producer(other, "Mul") if other is not None else None
    return square is not None and list(square.inputs) == [x, x]


def _is_tanh_argument(u, x) -> bool:
    """u = √(2/π)·(x + 0.044715·x³), or distributed: √(2/π)·x + 0.044715·√(2/π)·x³."""
    c1, c2 = math.sqrt(2.0 / math.pi), 0.044715
    node = _producer(u, "Mul")
    if node is not None:
        for inner, k in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            if is_scalar(k, c1, _TOL) and _is_cubic_sum(inner, x, 1.0, c2):
                return True
        return False
    return _is_cubic_sum(u, x, c1, c1 * c2)


def _is_cubic_sum(v, x, linear: float, cubic: float) -> bool:
    """v = linear·x + cubic·x³ (linear = 1 means plain x), terms in either order."""
    node = _producer(v, "Add")
    if node is None:
        return False
    for lin, cub in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        lin_ok = lin is x if linear == 1.0 else _binary_with_const(lin, "Mul", x, linear)
        term = _producer(cub, "Mul")
        if not lin_ok or term is None:
            continue
        for cube, k in ((term.inputs[0], term.inputs[1]), (term.inputs[1], term.inputs[0])):
            if is_scalar(k, cubic, _TOL) and _is_cube(cube, x):
                return True
    return False


class _FuseGelu(Rule):
    """0.5·x·(1 + f(u)) with f = Erf or Tanh; ``grouping`` picks how the product is written."""

    commute = True
    fn: ClassVar[str]
    grouping: ClassVar[int]  # 0: (x·core)·h  1: (x·h)·core  2: x·(core·h)  3: (x·core)/2

    def pattern(self, op, x, u, one, h):
        core = op.Add(getattr(op, self.fn)(u), one)
        if self.grouping == 0:
            return op.Mul(op.Mul(x, core), h)
        if self.grouping == 1:
            return op.Mul(op.Mul(x, h), core)
        if self.grouping == 2:
            return op.Mul(x, op.Mul(core, h))
        return op.Div(op.Mul(x, core), h)

    def check(self, context, x, u, one, h, **_) -> MatchResult:
        if not is_scalar(one, 1.0):
            return fail("not 1 + f(.)")
        if not is_scalar(h, 2.0 if self.grouping == 3 else 0.5):
            return fail("not halved")
        argument_ok = _is_erf_argument(u, x) if self.fn == "Erf" else _is_tanh_argument(u, x)
        if not argument_ok:
            return fail(f"{self.fn} argument is not the GELU one")
        if self.opset < 20 and x.dtype != ir.DataType.FLOAT:
            return fail("the com.microsoft GELU ops run on onnxruntime's CPU for float32 only")
        return MatchResult()

    def rewrite(self, op, x, u, one, h, **_):
        return _emitted_gelu(op, x, self.opset, self.fn == "Tanh", _name(u, "gelu"))


def _gelu_rules(fn: str, name: str) -> tuple[type[Rule], ...]:
    return tuple(type(f"Fuse{fn}Gelu{g}", (_FuseGelu,), {"name": name, "fn": fn, "grouping": g,
                                                          "__doc__": _FuseGelu.__doc__})
                 for g in range(4))


FUSE_GELU_ERF = _gelu_rules("Erf", "fuse_gelu_erf")
FUSE_GELU_TANH = _gelu_rules("Tanh", "fuse_gelu_tanh")


# ------------------------------------------------------------------------- Softplus, Mish, Sigmoid, SiLU


class FuseSoftplus(Rule):
    """Log(Exp(x) + 1)  →  Softplus(x)."""

    name = "fuse_softplus"
    commute = True

    def pattern(self, op, x, one):
        return op.Log(op.Add(op.Exp(x), one))

    def check(self, context, x, one, **_) -> MatchResult:
        return MatchResult() if is_scalar(one, 1.0) else fail("not 1 + exp(x)")

    def rewrite(self, op, x, one, **_):
        return op.Softplus(x)


class FuseMish(Rule):
    """x · Tanh(Softplus(x))  →  Mish(x) (opset 18+)."""

    name = "fuse_mish"
    commute = True
    min_opset = 18

    def pattern(self, op, x):
        return op.Mul(x, op.Tanh(op.Softplus(x)))

    def rewrite(self, op, x, **_):
        return op.Mish(x)


class _FuseSigmoid(Rule):
    """1 / (1 + Exp(−x)) or Reciprocal(1 + Exp(−x))  →  Sigmoid(x)."""

    name = "fuse_sigmoid"
    commute = True
    reciprocal: ClassVar[bool]

    def pattern(self, op, x, one, numerator):
        denominator = op.Add(one, op.Exp(op.Neg(x)))
        return op.Reciprocal(denominator) if self.reciprocal else op.Div(numerator, denominator)

    def check(self, context, x, one, numerator=None, **_) -> MatchResult:
        if not is_scalar(one, 1.0) or (not self.reciprocal and not is_scalar(numerator, 1.0)):
            return fail("not 1 / (1 + exp(-x))")
        return MatchResult()

    def rewrite(self, op, x, one, numerator=None, **_):
        return op.Sigmoid(x)


class FuseSigmoidDiv(_FuseSigmoid):
    reciprocal = False


class FuseSigmoidReciprocal(_FuseSigmoid):
    reciprocal = True

    def pattern(self, op, x, one):
        return op.Reciprocal(op.Add(one, op.Exp(op.Neg(x))))


class FuseSilu(Rule):
    """x / (1 + Exp(−x))  →  x · Sigmoid(x)."""

    name = "fuse_silu"
    commute = True

    def pattern(self, op, x, one):
        return op.Div(x, op.Add(one, op.Exp(op.Neg(x))))

    def check(self, context, x, one, **_) -> MatchResult:
        return MatchResult() if is_scalar(one, 1.0) else fail("not x / (1 + exp(-x))")

    def rewrite(self, op, x, one, **_):
        return op.Mul(x, op.Sigmoid(x))


class FuseActivationsPass(RulePass):
    """Decomposed HardSigmoid, HardSwish, GELU (erf, tanh), Softplus, Mish, Sigmoid, SiLU -> ops."""

    # Order: HardSwish before HardSigmoid (x·Clip(x+3)/6 contains no Clip(..)/6 but x·(Clip(x+3)/6)
    # becomes x·HardSigmoid, which the last HardSwish rule takes); SiLU before Sigmoid (the SiLU
    # pattern contains the sigmoid's denominator); Softplus before Mish.
    rules = (FuseHardSwish, FuseHardSwishMul, FuseHardSigmoid, FuseHardSigmoidMul,
             FuseHardSigmoidAffine, FuseHardSwishFromHardSigmoid, *FUSE_GELU_ERF, *FUSE_GELU_TANH,
             FuseSilu, FuseSigmoidDiv, FuseSigmoidReciprocal, FuseSoftplus, FuseMish)
    needs_shapes = True  # element types (the GELU rules emit float32-only contrib ops below opset 20)
