"""Caffe's normalization layers -> ONNX: BatchNorm, Scale and Bias (BatchNorm's affine part), LRN.

* **BatchNorm** stores ``mean * f`` and ``var * f`` plus the moving-average factor ``f`` as a third
  blob; the real statistics are ``blob / f`` (0 when ``f == 0``). It has no affine part: a following
  ``Scale`` layer (``y = x * gamma + beta``) carries it.
* **LRN WITHIN_CHANNEL** is ``x / (1 + alpha / n^2 * sum_{n x n} x^2) ^ beta`` (Caffe ignores ``k``
  there), built from Mul/AveragePool/Pow; ACROSS_CHANNELS maps onto ONNX ``LRN`` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from mmopt.errors import ModelLoadError
from mmopt.frontends.caffe.context import _Context, _axis, converts

logger = logging.getLogger(__name__)


@converts("BatchNorm")
def _batch_norm(ctx: _Context, layer) -> None:
    p = layer.batch_norm_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    if len(shape) < 2:
        raise ctx.fail("BatchNorm needs a blob with a channel axis")
    if p.HasField("use_global_stats") and not p.use_global_stats:
        logger.warning("%s: layer '%s': use_global_stats is false (batch statistics); converting "
                       "with the stored statistics, as inference does", ctx.where, layer.name)
    if not (np.isfinite(p.eps) and p.eps >= 0):  # as the ONNX front door (mmopt.ir.validate)
        raise ModelLoadError(f"{ctx.where}: layer '{layer.name}' (type BatchNorm): eps is "
                             f"{p.eps:g}; it must be a finite number >= 0")
    c = shape[1]
    mean = ctx.blob(0, (c,), "mean")
    var = ctx.blob(1, (c,), "var")
    factor = float(ctx.blob(2, (1,), "one")[0]) if ctx.has_blob(2) else 1.0
    scale = 0.0 if factor == 0 else 1.0 / factor
    ctx.node("BatchNormalization",
             [x, ctx.const("scale", np.ones(c)), ctx.const("B", np.zeros(c)),
              ctx.const("running_mean", mean * scale), ctx.const("running_var", var * scale)],
             [ctx.top(0, shape)], epsilon=float(p.eps))


def _broadcast_shape(ctx: _Context, x_shape: Sequence[int], axis: int,
                     p_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape that makes a Scale/Bias parameter of ``p_shape`` at ``axis`` broadcast to ``x``."""
    if tuple(x_shape[axis:axis + len(p_shape)]) != tuple(p_shape):
        raise ctx.fail(f"parameter shape {list(p_shape)} does not match the bottom's dims "
                       f"{list(x_shape[axis:axis + len(p_shape)])} at axis {axis}")
    return (*p_shape, *([1] * (len(x_shape) - axis - len(p_shape))))


def _param_shape(ctx: _Context, x_shape: Sequence[int], axis: int, num_axes: int) -> tuple[int, ...]:
    if num_axes < -1:
        raise ctx.fail(f"num_axes must be >= -1, got {num_axes}")
    end = len(x_shape) if num_axes == -1 else axis + num_axes
    if end > len(x_shape):
        raise ctx.fail(f"axis {axis} + num_axes {num_axes} exceed the bottom's {len(x_shape)} dims")
    return tuple(x_shape[axis:end])


@converts("Scale", "Bias")
def _scale(ctx: _Context, layer) -> None:
    """Scale: ``y = x * s (+ b)``, Bias: ``y = x + b``; ``s``/``b`` span dims ``axis..`` of ``x``.

    The operand is the second bottom when there is one, else the layer's first weight blob.
    """
    is_scale = layer.type == "Scale"
    p = layer.scale_param if is_scale else layer.bias_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    axis = _axis(ctx, p.axis, len(shape))
    op = "Mul" if is_scale else "Add"
    steps = []
    if len(layer.bottom) > 1:
        operand = ctx.bottom(1)
        p_shape = ctx.shape(operand)
        target = _broadcast_shape(ctx, shape, axis, p_shape)
        if target != p_shape:
            reshaped = ctx.temp("reshape", target)
            ctx.node("Reshape", [operand, ctx.const("shape", target, np.int64)], [reshaped],
                     role="reshape")
            operand = reshaped
        steps.append((op, operand))
        next_blob = 0
    else:
        p_shape = _param_shape(ctx, shape, axis, p.num_axes)
        target = _broadcast_shape(ctx, shape, axis, p_shape)
        value = ctx.blob(0, p_shape, "gamma" if is_scale else "bias")
        steps.append((op, ctx.const("weight" if is_scale else "bias", value.reshape(target))))
        next_blob = 1
    if is_scale and p.bias_term:
        bias = ctx.blob(next_blob, p_shape, "bias")
        steps.append(("Add", ctx.const("bias", bias.reshape(target))))
    y = ctx.top(0, shape)
    current = x
    for i, (step_op, operand) in enumerate(steps):
        last = i == len(steps) - 1
        out = y if last else ctx.temp(step_op.lower(), shape)
        ctx.node(step_op, [current, operand], [out], role=None if last else step_op.lower())
        current = out


@converts("LRN")
def _lrn(ctx: _Context, layer) -> None:
    p = layer.lrn_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    size = int(p.local_size)
    if size % 2 == 0:
        raise ctx.fail(f"local_size must be odd, got {size}")
    if p.norm_region == p.ACROSS_CHANNELS:
        ctx.node("LRN", [x], [ctx.top(0, shape)], size=size, alpha=float(p.alpha),
                 beta=float(p.beta), bias=float(p.k))
        return
    if len(shape) != 4:
        raise ctx.fail("WITHIN_CHANNEL LRN needs a 4-D blob")
    pad = (size - 1) // 2
    sq = ctx.temp("square", shape)
    ctx.node("Mul", [x, x], [sq], role="square")
    avg = ctx.temp("pool", shape)
    ctx.node("AveragePool", [sq], [avg], role="pool", kernel_shape=[size, size],
             pads=[pad] * 4, count_include_pad=1)
    scaled = ctx.temp("scale", shape)
    ctx.node("Mul", [avg, ctx.const("alpha", p.alpha)], [scaled], role="scale")
    shifted = ctx.temp("shift", shape)
    ctx.node("Add", [scaled, ctx.const("one", 1.0)], [shifted], role="shift")
    powed = ctx.temp("pow", shape)
    ctx.node("Pow", [shifted, ctx.const("neg_beta", -p.beta)], [powed], role="pow")
    ctx.node("Mul", [x, powed], [ctx.top(0, shape)])
