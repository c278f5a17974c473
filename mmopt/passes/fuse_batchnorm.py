"""fuse_batchnorm: fold an inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

With ``s = γ / sqrt(σ² + ε)`` per output channel, BatchNormalization computes
``(y − μ)·s + β``. When ``y = W∗x + b`` is a Conv, ConvTranspose or Gemm with constant weights:

    W' = W · s        (each output channel's filter scaled by its s)
    b' = (b − μ) · s + β

so ``BatchNormalization(Conv(x, W, b)) = Conv(x, W', b')`` exactly (up to float rounding).

Where the output channel sits in the weight:

* Conv: ``W[o, i/g, k...]``, axis 0.
* ConvTranspose: ``W[i, o/g, k...]``; output channel ``o = gi·(O/g) + j`` for group ``gi`` and ``j`` on
  axis 1, so the weight is viewed as ``[g, I/g, O/g, k...]`` and scaled by ``s`` viewed as ``[g, 1, O/g]``.
* Gemm: ``Y = α·A·op(B) + β_g·C``; channel is Y's axis 1 = column of ``op(B)``: axis 1 of B, or axis 0
  with ``transB=1``. The new bias is ``C' = (β_g·C − μ)·s + β`` with ``β_g`` set to 1.

Rules are rejected when the BatchNormalization is in training mode or has more than one output, when a
weight or statistic is not a constant, or when the inbound node's output feeds anything else (the
matcher's removability check).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult

from mmopt.passes._rules import Rule, RulePass, attr, constant, fail, new_initializer


class _FuseBatchNorm(Rule):
    inbound_op: ClassVar[str]

    def pattern(self, op, x):
        inbound = getattr(op, self.inbound_op)(x, _allow_other_inputs=True, _outputs=["inbound"])
        return op.BatchNormalization(inbound, _allow_other_inputs=True, _outputs=["bn"])

    def check(self, context, x, inbound, bn, **_) -> MatchResult:
        node, bn_node = inbound.producer(), bn.producer()
        if len(bn_node.outputs) != 1 or attr(bn_node, "training_mode", 0):
            return fail("BatchNormalization in training mode")
        if len(bn_node.inputs) != 5 or any(constant(v) is None for v in bn_node.inputs[1:]):
            return fail("BatchNormalization statistics are not constants")
        if len(node.inputs) < 2 or constant(node.inputs[1]) is None:
            return fail(f"{self.inbound_op} weight is not a constant")
        if len(node.inputs) > 2 and node.inputs[2] is not None and constant(node.inputs[2]) is None:
            return fail(f"{self.inbound_op} bias is not a constant")
        weight = constant(node.inputs[1])
        if weight.dtype.kind != "f":
            return fail("weight is not floating point")
        channels = constant(bn_node.inputs[1]).size
        if self.out_channels(node, weight) != channels:
            return fail("BatchNormalization channels differ from the inbound node's outputs")
        # fuzzing: a negative epsilon made the fused weights NaN (and numpy warn on stderr)
        stats = [constant(v).astype(np.float64) for v in bn_node.inputs[1:]]
        denominator = stats[3] + attr(bn_node, "epsilon", 1e-5)
        if not (all(np.isfinite(v).all() for v in stats) and np.isfinite(denominator).all()
                and (denominator > 0).all()):
            return fail("BatchNormalization statistics are not finite or variance + epsilon is not "
                        "positive: no finite scale to fold")
        return MatchResult()

    def out_channels(self, node: ir.Node, weight: np.ndarray) -> int:
        raise NotImplementedError

    def scale_weight(self, node: ir.Node, weight: np.ndarray, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rewrite(self, op, x, inbound, bn, **_):
        node, bn_node = inbound.producer(), bn.producer()
        gamma, beta, mean, var = (constant(v).astype(np.float64) for v in bn_node.inputs[1:])
        eps = attr(bn_node, "epsilon", 1e-5)
        s = gamma / np.sqrt(var + eps)
        weight = constant(node.inputs[1])
        bias = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        new_weight = self.scale_weight(node, weight.astype(np.float64), s).astype(weight.dtype)
        new_bias = self.new_bias(node, bias, mean, s, beta).astype(weight.dtype)
        attributes = self.attributes(node)
        graph = node.graph
        w_name = node.inputs[1].name or f"{node.name}.weight"
        return op.op(node.op_type, x, new_initializer(op, graph, f"{w_name}.bn", new_weight),
                     new_initializer(op, graph, f"{w_name}.bn_bias", new_bias),
                     _name=node.name, **attributes)

    def new_bias(self, node, bias, mean, s, beta) -> np.ndarray:
        b = np.zeros_like(mean) if bias is None else bias.astype(np.float64).reshape(-1)
        return (b - mean) * s + beta

    def attributes(self, node: ir.Node) -> dict:
        return dict(node.attributes)


class FuseBatchNormIntoConv(_FuseBatchNorm):
    name = "fuse_batchnorm_into_conv"
    inbound_op = "Conv"

    def out_channels(self, node, weight):
        return weight.shape[0]

    def scale_weight(self, node, weight, s):
        return weight * s.reshape((-1,) + (1,) * (weight.ndim - 1))


class FuseBatchNormIntoConvTranspose(_FuseBatchNorm):
    name = "fuse_batchnorm_into_conv_transpose"
    inbound_op = "ConvTranspose"

    def out_channels(self, node, weight):
        return weight.shape[1] * attr(node, "group", 1)

    def scale_weight(self, node, weight, s):
        g = attr(node, "group", 1)
        cin, cout_g, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
        grouped = weight.reshape(g, cin // g, cout_g, *kernel)
        return (grouped * s.reshape(g, 1, cout_g, *(1,) * len(kernel))).reshape(weight.shape)


class FuseBatchNormIntoGemm(_FuseBatchNorm):
    name = "fuse_batchnorm_into_gemm"
    inbound_op = "Gemm"

    def out_channels(self, node, weight):
        return weight.shape[0] if attr(node, "transB", 0) else weight.shape[1]

    def scale_weight(self, node, weight, s):
        return weight * (s[:, None] if attr(node, "transB", 0) else s[None, :])

    def new_bias(self, node, bias, mean, s, beta):
        c = 0.0 if bias is None else attr(node, "beta", 1.0) * bias.astype(np.float64)
        return (c - mean) * s + beta

    def attributes(self, node):
        attributes = dict(node.attributes)
        attributes.pop("beta", None)  # folded into the new C
        return attributes


class FuseBatchNormPass(RulePass):
    """BatchNormalization folded into a preceding Conv, ConvTranspose or Gemm."""

    rules = (FuseBatchNormIntoConv, FuseBatchNormIntoConvTranspose, FuseBatchNormIntoGemm)
    anchor_ops = frozenset({"BatchNormalization"})
