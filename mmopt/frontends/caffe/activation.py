"""Caffe's one-bottom element-wise layers (neurons) and Softmax -> ONNX: ReLU (leaky), PReLU,
Sigmoid, TanH, AbsVal, BNLL, Dropout (an Identity at inference), ELU, Softmax, Power, Exp, Log and
Threshold.
"""

from __future__ import annotations

import math

from onnx import TensorProto

from mmopt.frontends.caffe.context import _Context, _axis, converts


@converts("ReLU")
def _relu(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    slope = layer.relu_param.negative_slope
    y = ctx.top(0, ctx.shape(x))
    if slope:
        ctx.node("LeakyRelu", [x], [y], alpha=float(slope))
    else:
        ctx.node("Relu", [x], [y])


@converts("PReLU")
def _prelu(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    shape = ctx.shape(x)
    if len(shape) < 2:
        raise ctx.fail("PReLU needs a blob with a channel axis")
    shared = layer.prelu_param.channel_shared
    slope = ctx.blob(0, (1,) if shared else (shape[1],), "slope")
    slope = slope.reshape((1,) if shared else (shape[1], *([1] * (len(shape) - 2))))
    ctx.node("PRelu", [x, ctx.const("slope", slope)], [ctx.top(0, shape)])


def _unary(op: str):
    def convert_unary(ctx: _Context, layer) -> None:
        x = ctx.bottom()
        ctx.node(op, [x], [ctx.top(0, ctx.shape(x))])

    return convert_unary


converts("Sigmoid")(_unary("Sigmoid"))
converts("TanH")(_unary("Tanh"))
converts("AbsVal")(_unary("Abs"))
converts("BNLL")(_unary("Softplus"))
converts("Dropout")(_unary("Identity"))


@converts("ELU")
def _elu(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    ctx.node("Elu", [x], [ctx.top(0, ctx.shape(x))], alpha=float(layer.elu_param.alpha))


@converts("Softmax")
def _softmax(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    shape = ctx.shape(x)
    axis = _axis(ctx, layer.softmax_param.axis, len(shape))
    ctx.node("Softmax", [x], [ctx.top(0, shape)], axis=axis)


@converts("Power")
def _power(ctx: _Context, layer) -> None:
    """``y = (shift + scale * x) ^ power``."""
    p = layer.power_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    steps = []
    if p.scale != 1:
        steps.append(("Mul", "scale", p.scale))
    if p.shift != 0:
        steps.append(("Add", "shift", p.shift))
    if p.power != 1:
        steps.append(("Pow", "power", p.power))
    y = ctx.top(0, shape)
    if not steps:
        ctx.node("Identity", [x], [y])
        return
    current = x
    for i, (op, role, value) in enumerate(steps):
        last = i == len(steps) - 1
        out = y if last else ctx.temp(role, shape)
        ctx.node(op, [current, ctx.const(role, value)], [out], role=None if last else role)
        current = out


@converts("Exp", "Log")
def _exp_log(ctx: _Context, layer) -> None:
    """Exp: ``y = base ^ (shift + scale * x)``; Log: ``y = log_base(shift + scale * x)``."""
    p = layer.exp_param if layer.type == "Exp" else layer.log_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    if p.base != -1 and p.base <= 0:
        raise ctx.fail(f"base must be positive (or -1 for e), got {p.base}")
    ln_base = 1.0 if p.base == -1 else math.log(p.base)
    y = ctx.top(0, shape)
    current = x
    if layer.type == "Exp":
        scale, shift = p.scale * ln_base, p.shift * ln_base
        steps = [("Mul", "scale", scale)] if scale != 1 else []
        steps += [("Add", "shift", shift)] if shift != 0 else []
        steps += [("Exp", None, None)]
    else:
        steps = [("Mul", "scale", p.scale)] if p.scale != 1 else []
        steps += [("Add", "shift", p.shift)] if p.shift != 0 else []
        steps += [("Log", None, None)]
        steps += [("Mul", "inv_ln_base", 1.0 / ln_base)] if ln_base != 1 else []
    for i, (op, role, value) in enumerate(steps):
        last = i == len(steps) - 1
        out = y if last else ctx.temp((role or op).lower(), shape)
        inputs = [current] if value is None else [current, ctx.const(role, value)]
        ctx.node(op, inputs, [out], role=None if last else (role or op.lower()))
        current = out


@converts("Threshold")
def _threshold(ctx: _Context, layer) -> None:
    """``y = 1 if x > threshold else 0``."""
    x = ctx.bottom()
    shape = ctx.shape(x)
    mask = ctx.temp("greater", shape)
    ctx.node("Greater", [x, ctx.const("threshold", layer.threshold_param.threshold)], [mask],
             role="greater")
    ctx.node("Cast", [mask], [ctx.top(0, shape)], to=TensorProto.FLOAT)
