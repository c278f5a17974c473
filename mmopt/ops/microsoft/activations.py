"""Fused and GELU-family com.microsoft ops, decomposed exactly into standard ONNX ops.

onnxruntime's graph optimizer (``SessionOptions.optimized_model_filepath`` at the extended level)
writes the first four; its transformers optimizer the GELU forms.

* ``FusedConv(X, W, B?, Z?)`` = ``act(Conv(X, W, B) + Z)``: the Conv attributes as given,
  ``activation`` one of Relu, Tanh, Sigmoid, LeakyRelu (``activation_params = [alpha]``), Clip
  (``[min, max]``), HardSigmoid (``[alpha, beta]``).
* ``FusedGemm(A, B, C?)`` = ``act(Gemm(A, B, C))`` with Gemm's ``alpha``/``beta``/``transA``/
  ``transB``; ``activation`` as above plus Elu, Selu, Softplus, Softsign, ThresholdedRelu, their
  parameters in ``activation_alpha``/``activation_beta``/``activation_gamma``.
* ``FusedMatMul(A, B)`` = ``alpha · op(A) @ op(B)``, ``op`` swapping the last two axes when
  ``transA``/``transB``; ``transBatchA``/``transBatchB`` (batch axes moved) are not supported.
* ``QuickGelu(X)`` = ``X · σ(alpha · X)``, ``alpha`` = 1.702 by default (an onnxscript function).
* ``Gelu(X)`` = ``X · ½(1 + erf(X / √2))``; ``BiasGelu(A, B)`` = ``Gelu(A + B)``.
* ``FastGelu(X, bias?)`` = ``½x(1 + tanh(√(2/π) · (x + 0.044715 x³)))``, ``x = X + bias``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript import opset18 as _op
from onnxscript import script, values

from mmopt import extend
from mmopt.extend.rules import Decomposition, attr, constant_like, op, present

DOMAIN = "com.microsoft"

_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
#: activations and the parameters ONNX names them with, in FusedConv's ``activation_params`` order
_ACTIVATIONS = {
    "Relu": (), "Tanh": (), "Sigmoid": (), "Softsign": (), "Softplus": (),
    "LeakyRelu": ("alpha",), "Elu": ("alpha",), "ThresholdedRelu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"), "Selu": ("alpha", "gamma"), "Clip": ("min", "max"),
}
#: those onnxruntime's FusedConv (MLAS activations) accepts
_CONV_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid")


def _activation_kind(node: ir.Node) -> str:
    kind = attr(node, "activation", "")
    return kind.decode() if isinstance(kind, bytes) else kind


def _activate(tape, x: ir.Value, kind: str, params: dict[str, float]) -> ir.Value:
    """``kind(x)`` with ONNX's op of that name; ``params`` by ONNX attribute name."""
    if not kind or kind == "Identity":
        return x
    if kind == "Clip":
        bounds = [constant_like(tape, params[k], x) if k in params else None
                  for k in ("min", "max")]
        return tape.op("Clip", [x, *bounds])
    return tape.op(kind, [x], {k: float(v) for k, v in params.items()} or None)


class DecomposeFusedConv(Decomposition):
    name = "decompose_fused_conv"
    domain = DOMAIN
    op_types = ("FusedConv",)

    def check(self, node, ctx):
        kind = _activation_kind(node)
        if kind and kind not in _CONV_ACTIVATIONS:
            return f"activation {kind!r} is not one onnxruntime's FusedConv defines"
        params = list(attr(node, "activation_params", []) or [])
        if kind in ("Clip", "HardSigmoid") and len(params) < 2:
            return f"{kind} needs two activation_params"
        return None

    def rewrite(self, node, tape, ctx):
        x, w = node.inputs[0], node.inputs[1]
        bias, z = present(node, 2), present(node, 3)
        conv = tape.op("Conv", [x, w] + ([bias] if bias is not None else []))
        for name in _CONV_ATTRIBUTES:
            if name in node.attributes:
                conv.producer().attributes[name] = node.attributes[name]
        y = op(tape, "Add", conv, z) if z is not None else conv
        kind = _activation_kind(node)
        values_ = list(attr(node, "activation_params", []) or [])
        params = dict(zip(_ACTIVATIONS.get(kind, ()), values_))
        return [_activate(tape, y, kind, params)]


class DecomposeFusedGemm(Decomposition):
    name = "decompose_fused_gemm"
    domain = DOMAIN
    op_types = ("FusedGemm",)

    def check(self, node, ctx):
        kind = _activation_kind(node)
        if kind and kind not in _ACTIVATIONS:
            return f"activation {kind!r} is not supported"
        return None

    def rewrite(self, node, tape, ctx):
        inputs = [v for v in node.inputs[:2]] + ([node.inputs[2]] if present(node, 2) else [])
        gemm = tape.op("Gemm", inputs)
        for name in ("alpha", "beta", "transA", "transB"):
            if name in node.attributes:
                gemm.producer().attributes[name] = node.attributes[name]
        kind = _activation_kind(node)
        given = {k: attr(node, f"activation_{k}") for k in ("alpha", "beta", "gamma")}
        params = {}
        for name, source in zip(_ACTIVATIONS.get(kind, ()), ("alpha", "beta", "gamma")):
            # Selu's gamma travels as activation_gamma; everything else in order alpha, beta
            key = "gamma" if name == "gamma" else source
            if given.get(key) is not None:
                params[name] = given[key]
        return [_activate(tape, gemm, kind, params)]


class DecomposeFusedMatMul(Decomposition):
    name = "decompose_fused_matmul"
    domain = DOMAIN
    op_types = ("FusedMatMul",)

    def check(self, node, ctx):
        if attr(node, "transBatchA", 0) or attr(node, "transBatchB", 0):
            return "transBatchA/transBatchB are not supported"
        for i, name in ((0, "transA"), (1, "transB")):
            shape = node.inputs[i].shape
            if attr(node, name, 0) and (shape is None or len(shape) < 2):
                return f"{name} needs input {i} of known rank >= 2"
        return None

    def rewrite(self, node, tape, ctx):
        operands = []
        for i, name in ((0, "transA"), (1, "transB")):
            value = node.inputs[i]
            if attr(node, name, 0):
                rank = len(value.shape)
                perm = list(range(rank - 2)) + [rank - 1, rank - 2]
                value = op(tape, "Transpose", value, perm=perm)
            operands.append(value)
        y = op(tape, "MatMul", *operands)
        alpha = float(attr(node, "alpha", 1.0))
        if alpha != 1.0:
            y = op(tape, "Mul", y, constant_like(tape, alpha, y))
        return [y]


def _gelu(tape, x: ir.Value) -> ir.Value:
    """``x · ½(1 + erf(x/√2))``, constants in ``x``'s type."""
    c = lambda v: constant_like(tape, v, x)  # noqa: E731
    erf = op(tape, "Erf", op(tape, "Mul", x, c(1.0 / math.sqrt(2.0))))
    return op(tape, "Mul", op(tape, "Mul", x, c(0.5)), op(tape, "Add", erf, c(1.0)))


class DecomposeGelu(Decomposition):
    name = "decompose_gelu"
    domain = DOMAIN
    op_types = ("Gelu", "BiasGelu")

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        if node.op_type == "BiasGelu":
            x = op(tape, "Add", x, node.inputs[1])
        return [_gelu(tape, x)]


class DecomposeFastGelu(Decomposition):
    name = "decompose_fast_gelu"
    domain = DOMAIN
    op_types = ("FastGelu",)

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        bias = present(node, 1)
        if bias is not None:
            x = op(tape, "Add", x, bias)
        c = lambda v: constant_like(tape, v, x)  # noqa: E731
        cube = op(tape, "Mul", op(tape, "Mul", x, x), x)
        inner = op(tape, "Mul", op(tape, "Add", x, op(tape, "Mul", cube, c(0.044715))),
                   c(math.sqrt(2.0 / math.pi)))
        return [op(tape, "Mul", op(tape, "Mul", x, c(0.5)),
                   op(tape, "Add", op(tape, "Tanh", inner), c(1.0)))]


_ms = values.Opset(DOMAIN, 1)


@script(_ms)
def quick_gelu(X, alpha: float = 1.702):
    """QuickGelu as a function body: ``X · σ(alpha · X)``."""
    return X * _op.Sigmoid(X * alpha)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


extend.register(DecomposeFusedConv())
extend.register(DecomposeFusedGemm())
extend.register(DecomposeFusedMatMul())
extend.register(DecomposeGelu())
extend.register(DecomposeFastGelu())
extend.decomposition(DOMAIN, "QuickGelu", name="inline_quick_gelu",
                     reference=lambda x, alpha=1.702: (x * _sigmoid(alpha * x)).astype(x.dtype)
                     )(quick_gelu)
