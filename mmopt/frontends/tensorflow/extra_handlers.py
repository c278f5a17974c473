"""tf2onnx handlers for operators tf2onnx 1.17 does not convert but TF 2.21 emits for common
layers: ``Erfc`` (Keras' exact GELU), ``Log1p``, ``Expm1`` and TFLite's ``GELU``.
"""

from __future__ import annotations

import numpy as np

_EXTRA_REGISTERED = False


def register_extra_handlers() -> None:
    """Teach tf2onnx ``Erfc`` (Keras' exact GELU: ``0.5·x·erfc(-x/√2)``), ``Log1p``, ``Expm1``
    and TFLite's ``GELU``. A handler tf2onnx already has is left alone. Idempotent."""
    global _EXTRA_REGISTERED
    if _EXTRA_REGISTERED:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    known = {name for opsets in tf_op.get_opsets().values() for versions in opsets
             for name in versions}

    def const(ctx, like: str, value: float) -> str:
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(like))
        return ctx.make_const(utils.make_name("mmopt_const"), np.array(value, dtype)).output[0]

    def unary(ctx, node, op_type: str) -> str:
        return ctx.make_node(op_type, [node.input[0]], op_name_scope=node.name).output[0]

    class Erfc:  # erfc(x) = 1 - erf(x)
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            erf = unary(ctx, node, "Erf")
            node.type = "Sub"
            ctx.replace_inputs(node, [const(ctx, node.input[0], 1.0), erf])

    class Log1p:  # log1p(x) = log(1 + x)
        @classmethod
        def version_1(cls, ctx, node, **kwargs):
            x = node.input[0]
            plus = ctx.make_node("Add", [x, const(ctx, x, 1.0)], op_name_scope=node.name).output[0]
            node.type = "Log"
            ctx.replace_inputs(node, [plus])

    class Expm1:  # expm1(x) = exp(x) - 1
        @classmethod
        def version_1(cls, ctx, node, **kwargs):
            exp = unary(ctx, node, "Exp")
            node.type = "Sub"
            ctx.replace_inputs(node, [exp, const(ctx, node.input[0], 1.0)])

    class TflGelu:
        """0.5·x·(1 + erf(x/√2)); ``approximate``:
        0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""

        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            x = node.input[0]
            scope = node.name
            if node.get_attr_value("approximate", False):
                cube = ctx.make_node("Mul", [x, x], op_name_scope=scope).output[0]
                cube = ctx.make_node("Mul", [cube, x], op_name_scope=scope).output[0]
                cube = ctx.make_node("Mul", [cube, const(ctx, x, 0.044715)],
                                     op_name_scope=scope).output[0]
                inner = ctx.make_node("Add", [x, cube], op_name_scope=scope).output[0]
                inner = ctx.make_node("Mul", [inner, const(ctx, x, float(np.sqrt(2 / np.pi)))],
                                      op_name_scope=scope).output[0]
                shaped = ctx.make_node("Tanh", [inner], op_name_scope=scope).output[0]
            else:
                scaled = ctx.make_node("Mul", [x, const(ctx, x, float(1 / np.sqrt(2)))],
                                       op_name_scope=scope).output[0]
                shaped = ctx.make_node("Erf", [scaled], op_name_scope=scope).output[0]
            one_plus = ctx.make_node("Add", [shaped, const(ctx, x, 1.0)],
                                     op_name_scope=scope).output[0]
            half_x = ctx.make_node("Mul", [x, const(ctx, x, 0.5)], op_name_scope=scope).output[0]
            node.type = "Mul"
            node.attr.pop("approximate", None)
            ctx.replace_inputs(node, [half_x, one_plus])

    for name, handler in (("Erfc", Erfc), ("Log1p", Log1p), ("Expm1", Expm1),
                          ("TFL_GELU", TflGelu)):
        if name not in known:
            tf_op(name)(handler)
    _EXTRA_REGISTERED = True
