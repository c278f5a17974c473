"""fuse_gemm: MatMul + bias Add into Gemm where Gemm can express it, and a bias Add into an existing Gemm.

Gemm computes ``Y = α·op(A)·op(B) + β·C`` for 2-D ``A`` [M, K] and ``B`` [K, N], with ``C``
unidirectionally broadcastable to [M, N]. Hence

    MatMul(A, B) + c  =  Gemm(A, B, c)                       (α = β = 1)
    Gemm(A, B, C; β) + d  =  Gemm(A, B, β·C + d; β = 1)      (C and d constant)

Legal only when both MatMul operands are 2-D (MatMul on higher ranks batches; Gemm does not) and the
added constant ``c`` broadcasts to [M, N] without growing the result: rank ≤ 2, last dim 1 or N,
first dim (for rank 2) 1 or M. Float types only (Gemm has no int8/uint8 forms).
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import MatchResult

from mmopt.passes._rules import Rule, RulePass, attr, constant, fail, new_initializer, rank


def _bias_fits(array: np.ndarray, out) -> bool:
    """``array`` broadcasts to the 2-D ``out`` value's shape [M, N] without growing it."""
    if out.shape is None or len(out.shape) != 2 or array.ndim > 2:
        return False
    m, n = out.shape.dims
    shape = (1,) * (2 - array.ndim) + array.shape
    ok_m = shape[0] == 1 or (isinstance(m, int) and shape[0] == m)
    ok_n = shape[1] == 1 or (isinstance(n, int) and shape[1] == n)
    return ok_m and ok_n


class FuseMatMulAddIntoGemm(Rule):
    name = "fuse_matmul_add_into_gemm"
    commute = True

    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b, _outputs=["product"]), c)

    def check(self, context, a, b, c, product, **_) -> MatchResult:
        if rank(a) != 2 or rank(b) != 2:
            return fail("MatMul operands are not both 2-D")
        bias = constant(c)
        if bias is None:
            return fail("added operand is not a constant")
        if a.dtype is None or not a.dtype.is_floating_point() or bias.dtype.kind != "f":
            return fail("not a floating-point MatMul")
        if not _bias_fits(bias, product):
            return fail("added constant does not broadcast to [M, N] without growing it")
        return MatchResult()

    def rewrite(self, op, a, b, c, product, **_):
        return op.Gemm(a, b, c, _name=product.producer().name)


class FuseAddIntoGemm(Rule):
    name = "fuse_add_into_gemm"
    commute = True

    def pattern(self, op, a, b, d):
        return op.Add(op.Gemm(a, b, _allow_other_inputs=True, _outputs=["gemm"]), d)

    def check(self, context, a, b, d, gemm, **_) -> MatchResult:
        node = gemm.producer()
        addend = constant(d)
        if addend is None or addend.dtype.kind != "f":
            return fail("added operand is not a float constant")
        if len(node.inputs) > 2 and node.inputs[2] is not None and constant(node.inputs[2]) is None:
            return fail("Gemm's C is not a constant")
        if not _bias_fits(addend, gemm):
            return fail("added constant does not broadcast to [M, N] without growing it")
        return MatchResult()

    def rewrite(self, op, a, b, d, gemm, **_):
        node = gemm.producer()
        addend = constant(d)
        has_c = len(node.inputs) > 2 and node.inputs[2] is not None
        c = constant(node.inputs[2]).astype(np.float64) * attr(node, "beta", 1.0) if has_c else 0.0
        new_c = (c + addend.astype(np.float64)).astype(addend.dtype)
        attributes = {k: v for k, v in node.attributes.items() if k != "beta"}
        name = (node.inputs[1].name or node.name or "gemm") + ".bias"
        return op.Gemm(a, b, new_initializer(op, node.graph, name, new_c), _name=node.name, **attributes)


class FuseGemmPass(RulePass):
    """MatMul + Add into Gemm (2-D only), and bias Add into Gemm."""

    rules = (FuseMatMulAddIntoGemm, FuseAddIntoGemm)
    anchor_ops = frozenset({"MatMul", "Gemm"})
    needs_shapes = True
